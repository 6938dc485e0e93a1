//! The deployer's settings and its builder, which checks them all in `build()`.

use super::*;

/// How retryable errors are retried: exponential backoff with jitter. The engine is the one
/// layer that retries; providers should turn their SDK's own retries down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: usize,
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 8, min_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) desired: usize,
    pub(super) min_ready: Duration,
    pub(super) progress_deadline: Duration,
    pub(super) poll_interval: Duration,
    pub(super) retry: RetryPolicy,
}

/// Builds a [`Deployer`]. Setters never fail; [`DeployerBuilder::build`] checks everything.
#[derive(Debug, Default)]
pub struct DeployerBuilder {
    provider: Option<Arc<dyn Provider>>,
    traffic: Option<Arc<dyn Traffic>>,
    health: Option<Arc<dyn HealthCheck>>,
    strategy: Option<Arc<dyn ReplacementStrategy>>,
    gate: Option<Arc<dyn Gate>>,
    desired: Option<usize>,
    min_ready: Duration,
    progress_deadline: Option<Duration>,
    poll_interval: Option<Duration>,
    retry: Option<RetryPolicy>,
    journal: Option<Arc<dyn Journal>>,
    ledger: Option<Arc<Ledger>>,
    change_policy: Option<ChangePolicy>,
    allow_downgrade: bool,
    signing_key: Option<crate::model::SigningKey>,
}

impl DeployerBuilder {
    /// Signs every instance's provenance labels with this key, so the audit can tell
    /// hand-edited labels from real ones.
    pub fn signing_key(mut self, key: crate::model::SigningKey) -> Self {
        self.signing_key = Some(key);
        self
    }
    /// Records every finished deployment in this ledger; enables
    /// [`Deployer::rollback_to_previous`].
    pub fn ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }
    /// Picks the strategy from the artifact version change, instead of one fixed strategy.
    pub fn strategy_by_change(mut self, policy: ChangePolicy) -> Self {
        self.change_policy = Some(policy);
        self
    }
    /// Lets deployments go to an older artifact version without being explicit rollbacks
    /// (default: refused).
    pub fn allow_downgrade(mut self, allow: bool) -> Self {
        self.allow_downgrade = allow;
        self
    }
    /// Writes ahead to this journal and takes its per-service lock; enables
    /// [`Deployer::resume`].
    pub fn journal(mut self, journal: impl Journal + 'static) -> Self {
        self.journal = Some(Arc::new(journal));
        self
    }
    /// The journal, shared.
    pub fn journal_arc(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }
    /// The compute backend (required).
    pub fn provider(mut self, provider: impl Provider + 'static) -> Self {
        self.provider = Some(Arc::new(provider));
        self
    }
    /// The compute backend, shared.
    pub fn provider_arc(mut self, provider: Arc<dyn Provider>) -> Self {
        self.provider = Some(provider);
        self
    }
    /// The load balancer (required).
    pub fn traffic(mut self, traffic: impl Traffic + 'static) -> Self {
        self.traffic = Some(Arc::new(traffic));
        self
    }
    /// The load balancer, shared.
    pub fn traffic_arc(mut self, traffic: Arc<dyn Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }
    /// The health check, shared.
    pub fn health_arc(mut self, health: Arc<dyn HealthCheck>) -> Self {
        self.health = Some(health);
        self
    }
    /// The health check (default: [`ProviderStatus`]).
    pub fn health(mut self, health: impl HealthCheck + 'static) -> Self {
        self.health = Some(Arc::new(health));
        self
    }
    /// The replacement strategy (required).
    pub fn strategy(mut self, strategy: impl ReplacementStrategy + 'static) -> Self {
        self.strategy = Some(Arc::new(strategy));
        self
    }
    /// The replacement strategy, shared.
    pub fn strategy_arc(mut self, strategy: Arc<dyn ReplacementStrategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }
    /// Decides gates (default: [`AutoApprove`]).
    pub fn gate(mut self, gate: impl Gate + 'static) -> Self {
        self.gate = Some(Arc::new(gate));
        self
    }
    /// How many instances the service runs (required, at least 1).
    pub fn desired(mut self, desired: usize) -> Self {
        self.desired = Some(desired);
        self
    }
    /// How long a new instance must stay healthy before it counts (default 0).
    pub fn min_ready(mut self, min_ready: Duration) -> Self {
        self.min_ready = min_ready;
        self
    }
    /// The longest the engine waits without progress before it rolls back (default 10 min).
    pub fn progress_deadline(mut self, deadline: Duration) -> Self {
        self.progress_deadline = Some(deadline);
        self
    }
    /// How often the engine observes while waiting (default 2 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }
    /// The retry policy for retryable errors.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Checks the settings and builds the deployer. Errors name the missing or bad field.
    pub fn build(self) -> Result<Deployer> {
        let provider = self.provider.ok_or_else(|| Error::invalid("provider", "is required; call .provider(..)"))?;
        let traffic = self.traffic.ok_or_else(|| Error::invalid("traffic", "is required; call .traffic(..)"))?;
        let strategy = match (self.strategy, &self.change_policy) {
            (Some(s), _) => s,
            (None, Some(policy)) => policy.major.clone(),
            (None, None) => {
                return Err(Error::invalid("strategy", "is required; call .strategy(..) or .strategy_by_change(..)"));
            }
        };
        let desired =
            self.desired.ok_or_else(|| Error::invalid("desired", "is required; call .desired(n) with n >= 1"))?;
        if desired == 0 {
            return Err(Error::invalid("desired", "must be at least 1"));
        }
        strategy.validate(desired)?;
        if let Some(policy) = &self.change_policy {
            for (field, s) in [("patch", &policy.patch), ("minor", &policy.minor), ("major", &policy.major)] {
                s.validate(desired).map_err(|e| Error::invalid(&format!("strategy_by_change.{field}"), e.message()))?;
            }
        }
        let poll_interval = self.poll_interval.unwrap_or(Duration::from_secs(2));
        if poll_interval.is_zero() {
            return Err(Error::invalid("poll_interval", "must be above zero"));
        }
        let progress_deadline = self.progress_deadline.unwrap_or(Duration::from_secs(600));
        if progress_deadline.is_zero() {
            return Err(Error::invalid("progress_deadline", "must be above zero"));
        }
        let retry = self.retry.unwrap_or_default();
        if retry.min_delay > retry.max_delay {
            return Err(Error::invalid("retry.min_delay", "is above retry.max_delay"));
        }
        Ok(Deployer {
            inner: Arc::new(Inner {
                provider,
                traffic,
                health: self.health.unwrap_or_else(|| Arc::new(ProviderStatus)),
                strategy,
                gate: self.gate.unwrap_or_else(|| Arc::new(AutoApprove)),
                journal: self.journal,
                ledger: self.ledger,
                change_policy: self.change_policy,
                allow_downgrade: self.allow_downgrade,
                signing_key: self.signing_key,
                settings: Settings { desired, min_ready: self.min_ready, progress_deadline, poll_interval, retry },
            }),
        })
    }
}
