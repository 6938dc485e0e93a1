//! Health checks: each judges one instance healthy, unhealthy or unknown. They compose with
//! [`AllOf`]: [`ProviderStatus`], `HttpProbe` (is it alive?) and `VersionCheck` (does it run
//! the build its labels say?), the last two with the `http` feature.
//!
//! Two kinds of "no" are kept apart. An instance that answers badly (a 500, a refused
//! connection, an impaired status) is [`Health::Unhealthy`]: that is a verdict on the instance.
//! A check that cannot be made at all (the balancer's health API is throttled or down) is an
//! `Err` from the check: that says nothing about the instances. The engine retries such an
//! error like any other call, and when the retries run out it counts the instances as
//! [`Health::Unknown`] for that step, never as unhealthy, so a failing health API cannot roll a
//! healthy release back.

use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Instance, InstanceState};

#[cfg(feature = "http")]
mod image;
#[cfg(feature = "http")]
mod version;
#[cfg(feature = "http")]
pub use version::{Expected, VersionCheck, VersionSource};

/// How many instances [`HealthCheck::check_many`]'s default judges at once.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// A verdict on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Ready for traffic.
    Healthy,
    /// Not ready, with the reason.
    Unhealthy(String),
    /// Not known yet (for example still booting).
    Unknown,
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Judges instances.
#[async_trait]
pub trait HealthCheck: Send + Sync + Debug {
    /// Judges one instance. `Err` means the check could not be made (see the module docs).
    async fn check(&self, instance: &Instance) -> Result<Health>;

    /// Judges many, one verdict per instance in order. The default runs at most
    /// [`DEFAULT_CONCURRENCY`] checks at once; backends with a batch API override it.
    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        use futures_util::{StreamExt, TryStreamExt};
        // Futures do nothing until polled, so building them all first runs at most
        // DEFAULT_CONCURRENCY at once.
        let checks: Vec<_> = instances.iter().map(|i| self.check(i)).collect();
        futures_util::stream::iter(checks).buffered(DEFAULT_CONCURRENCY).try_collect().await
    }
}

/// Healthy when the provider reports the instance running.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderStatus;

#[async_trait]
impl HealthCheck for ProviderStatus {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(match instance.state {
            InstanceState::Running => Health::Healthy,
            InstanceState::Pending => Health::Unknown,
            other => Health::Unhealthy(format!("instance is {other:?}")),
        })
    }
}

/// Healthy when every inner check is; unhealthy when any is; unknown otherwise.
#[derive(Debug, Clone, Default)]
pub struct AllOf(pub Vec<Arc<dyn HealthCheck>>);

impl AllOf {
    /// Adds a check.
    pub fn and(mut self, check: impl HealthCheck + 'static) -> Self {
        self.0.push(Arc::new(check));
        self
    }
}

#[async_trait]
impl HealthCheck for AllOf {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        let verdicts = futures_util::future::try_join_all(self.0.iter().map(|c| c.check(instance))).await?;
        Ok(combine(verdicts))
    }

    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        let per_check = futures_util::future::try_join_all(self.0.iter().map(|c| c.check_many(instances))).await?;
        Ok((0..instances.len()).map(|i| combine(per_check.iter().map(|v| v[i].clone()))).collect())
    }
}

fn combine(verdicts: impl IntoIterator<Item = Health>) -> Health {
    let mut all_healthy = true;
    for v in verdicts {
        match v {
            Health::Unhealthy(reason) => return Health::Unhealthy(reason),
            Health::Unknown => all_healthy = false,
            Health::Healthy => {}
        }
    }
    if all_healthy { Health::Healthy } else { Health::Unknown }
}

/// A custom check from a closure.
pub struct FnCheck<F>(pub F);

impl<F> Debug for FnCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCheck")
    }
}

#[async_trait]
impl<F> HealthCheck for FnCheck<F>
where
    F: Fn(&Instance) -> Health + Send + Sync,
{
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok((self.0)(instance))
    }
}

/// Healthy when `GET http://<instance address><path>` answers 2xx within the timeout.
/// Instances without an address are unknown.
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    path: String,
}

#[cfg(feature = "http")]
impl HttpProbe {
    /// Probes `path` (for example `/healthz`) with a 2 s timeout.
    pub fn new(path: impl Into<String>) -> Self {
        Self::with_timeout(path, std::time::Duration::from_secs(2))
    }

    /// Probes `path` with a timeout.
    pub fn with_timeout(path: impl Into<String>, timeout: std::time::Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            // A probe must see the instance as a new client would: no pooled connection.
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client always builds");
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        HttpProbe { client, path }
    }
}

#[cfg(feature = "http")]
#[async_trait]
impl HealthCheck for HttpProbe {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        let Some(address) = &instance.address else { return Ok(Health::Unknown) };
        // Every answer, a refused connection included, is the instance's own: a verdict.
        Ok(match self.client.get(format!("http://{address}{}", self.path)).send().await {
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(r) => Health::Unhealthy(format!("GET {} answered {}", self.path, r.status())),
            Err(e) => Health::Unhealthy(format!("GET {} failed: {e}", self.path)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceId, Observed};
    use std::collections::BTreeMap;

    fn instance(state: InstanceState) -> Instance {
        Instance {
            id: InstanceId::new("i-1"),
            state,
            provenance: None,
            labels: Arc::new(BTreeMap::new()),
            observed: Arc::new(Observed::default()),
            address: None,
        }
    }

    #[tokio::test]
    async fn all_of_combines_verdicts() {
        let running = instance(InstanceState::Running);
        let yes = AllOf::default().and(ProviderStatus).and(FnCheck(|_: &Instance| Health::Healthy));
        assert_eq!(yes.check(&running).await.unwrap(), Health::Healthy);
        let unknown = AllOf::default().and(ProviderStatus).and(FnCheck(|_: &Instance| Health::Unknown));
        assert_eq!(unknown.check(&running).await.unwrap(), Health::Unknown);
        let no = AllOf::default().and(FnCheck(|_: &Instance| Health::Unknown)).and(ProviderStatus);
        assert!(matches!(no.check(&instance(InstanceState::Terminated)).await.unwrap(), Health::Unhealthy(_)));
        assert_eq!(yes.check_many(&[running.clone(), running]).await.unwrap(), vec![Health::Healthy, Health::Healthy]);
    }

    #[derive(Debug)]
    struct Broken;

    #[async_trait]
    impl HealthCheck for Broken {
        async fn check(&self, _: &Instance) -> Result<Health> {
            Err(crate::Error::new(crate::ErrorKind::RateLimited, "throttled"))
        }
    }

    #[tokio::test]
    async fn a_check_that_cannot_be_made_is_an_error_not_a_verdict() {
        let all = AllOf::default().and(ProviderStatus).and(Broken);
        let e = all.check_many(&[instance(InstanceState::Running)]).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }

    #[derive(Debug, Default)]
    struct Counting {
        now: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl HealthCheck for Counting {
        async fn check(&self, _: &Instance) -> Result<Health> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(n, SeqCst);
            tokio::task::yield_now().await;
            self.now.fetch_sub(1, SeqCst);
            Ok(Health::Healthy)
        }
    }

    #[tokio::test]
    async fn the_default_check_many_bounds_its_concurrency() {
        let c = Counting::default();
        let many = vec![instance(InstanceState::Running); 500];
        assert_eq!(c.check_many(&many).await.unwrap().len(), 500);
        let peak = c.peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(peak <= DEFAULT_CONCURRENCY && peak > 1, "peak concurrency {peak}");
    }
}
