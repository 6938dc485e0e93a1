//! Health checks: each judges one instance healthy, unhealthy or unknown. They compose.

use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Instance, InstanceState};

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
    /// Judges one instance.
    async fn check(&self, instance: &Instance) -> Health;

    /// Judges many; the default checks them concurrently. Backends with a batch API override it.
    async fn check_many(&self, instances: &[Instance]) -> Vec<Health> {
        futures_util::future::join_all(instances.iter().map(|i| self.check(i))).await
    }
}

/// Healthy when the provider reports the instance running.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderStatus;

#[async_trait]
impl HealthCheck for ProviderStatus {
    async fn check(&self, instance: &Instance) -> Health {
        match instance.state {
            InstanceState::Running => Health::Healthy,
            InstanceState::Pending => Health::Unknown,
            other => Health::Unhealthy(format!("instance is {other:?}")),
        }
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
    async fn check(&self, instance: &Instance) -> Health {
        combine(futures_util::future::join_all(self.0.iter().map(|c| c.check(instance))).await)
    }

    async fn check_many(&self, instances: &[Instance]) -> Vec<Health> {
        let per_check = futures_util::future::join_all(self.0.iter().map(|c| c.check_many(instances))).await;
        (0..instances.len()).map(|i| combine(per_check.iter().map(|v| v[i].clone()))).collect()
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
    async fn check(&self, instance: &Instance) -> Health {
        (self.0)(instance)
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
    async fn check(&self, instance: &Instance) -> Health {
        let Some(address) = &instance.address else { return Health::Unknown };
        match self.client.get(format!("http://{address}{}", self.path)).send().await {
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(r) => Health::Unhealthy(format!("GET {} answered {}", self.path, r.status())),
            Err(e) => Health::Unhealthy(format!("GET {} failed: {e}", self.path)),
        }
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
        assert_eq!(yes.check(&running).await, Health::Healthy);
        let unknown = AllOf::default().and(ProviderStatus).and(FnCheck(|_: &Instance| Health::Unknown));
        assert_eq!(unknown.check(&running).await, Health::Unknown);
        let no = AllOf::default().and(FnCheck(|_: &Instance| Health::Unknown)).and(ProviderStatus);
        assert!(matches!(no.check(&instance(InstanceState::Terminated)).await, Health::Unhealthy(_)));
        assert_eq!(yes.check_many(&[running.clone(), running]).await, vec![Health::Healthy, Health::Healthy]);
    }
}
