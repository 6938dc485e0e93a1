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

/// How many failed new instances a deployment may replace before it gives up and rolls back.
/// A new instance fails when it is not healthy within the instance deadline, or when it stops
/// or disappears without the engine terminating it. Each count resolves against the wave's size
/// (`per_wave`) or the desired count (`per_deployment`), and is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacementBudget {
    /// Replacements allowed within one launch wave.
    pub per_wave: Count,
    /// Replacements allowed over the whole deployment.
    pub per_deployment: Count,
}

impl Default for ReplacementBudget {
    /// 10 % of each wave and 10 % of the desired count, at least one each: a wave of 1000 with
    /// a per-instance failure rate of 0.1 % succeeds; a release whose instances all fail rolls
    /// back after a few replacements.
    fn default() -> Self {
        ReplacementBudget { per_wave: Count::Percent(10), per_deployment: Count::Percent(10) }
    }
}

/// How many health verdicts in a row change an instance's standing, so that one blip does not
/// fail a bake and one lucky answer does not prove an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthThresholds {
    /// Consecutive healthy verdicts before an instance counts as healthy (default 1).
    pub healthy: u32,
    /// Consecutive unhealthy verdicts before a healthy instance counts as unhealthy (default 2).
    pub unhealthy: u32,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds { healthy: 1, unhealthy: 2 }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) desired: usize,
    pub(super) min_ready: Duration,
    pub(super) progress_deadline: Duration,
    pub(super) poll_interval: Duration,
    pub(super) retry: RetryPolicy,
    pub(super) instance_deadline: Duration,
    pub(super) budget: ReplacementBudget,
    pub(super) thresholds: HealthThresholds,
    /// Polls consult it before reading the fleet (see [`crate::feed`]).
    pub(super) feed: Option<Arc<dyn ChangeFeed>>,
    /// With a feed, the longest the engine goes without a full read.
    pub(super) full_read_every: Duration,
    pub(super) accept_no_way_back: bool,
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
    accept_no_way_back: bool,
    signing_key: Option<crate::model::SigningKey>,
    instance_deadline: Option<Duration>,
    budget: Option<ReplacementBudget>,
    thresholds: Option<HealthThresholds>,
    feed: Option<Arc<dyn ChangeFeed>>,
    full_read_every: Option<Duration>,
}

impl DeployerBuilder {
    /// How long a new instance may take from its launch to healthy before it is terminated and
    /// replaced (default: 5 minutes, or half the progress deadline if that is shorter).
    pub fn instance_deadline(mut self, deadline: Duration) -> Self {
        self.instance_deadline = Some(deadline);
        self
    }
    /// How many failed new instances may be replaced before the deployment rolls back.
    pub fn replacement_budget(mut self, budget: ReplacementBudget) -> Self {
        self.budget = Some(budget);
        self
    }
    /// How many verdicts in a row make an instance healthy or unhealthy.
    pub fn health_thresholds(mut self, thresholds: HealthThresholds) -> Self {
        self.thresholds = Some(thresholds);
        self
    }
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
    /// Lets deployments terminate instances of a release that can no longer be launched
    /// (rollback readiness; default: refused). Without it, a deployment whose previous
    /// release is gone is refused at the start, and one whose previous release goes away
    /// midway stops before terminating it ([`Phase::NoWayBack`]). The ledger records the
    /// setting. [`Deployment::accepting_no_way_back`] sets it for one deployment.
    pub fn accept_no_way_back(mut self, accept: bool) -> Self {
        self.accept_no_way_back = accept;
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
    /// A change feed over the provider, the traffic and the health check: a poll on an
    /// unchanged fleet then costs one feed call instead of a full read, and, with a feed that
    /// lists what changed, an observation costs what changed (see [`crate::feed`]).
    pub fn change_feed(mut self, feed: impl ChangeFeed + 'static) -> Self {
        self.feed = Some(Arc::new(feed));
        self
    }
    /// With a change feed, the longest the engine trusts it without a full read (default 60 s).
    pub fn full_read_every(mut self, every: Duration) -> Self {
        self.full_read_every = Some(every);
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
        if let Some(drain) = traffic.drain_timeout()
            && drain >= progress_deadline
        {
            return Err(Error::invalid(
                "progress_deadline",
                format!(
                    "{progress_deadline:?} cannot hold the traffic's drain timeout ({drain:?}): a switch or detach may wait that long, so the deployment would miss its deadline while draining; raise progress_deadline above it or lower the balancer's drain timeout"
                ),
            ));
        }
        let retry = self.retry.unwrap_or_default();
        if retry.min_delay > retry.max_delay {
            return Err(Error::invalid("retry.min_delay", "is above retry.max_delay"));
        }
        let instance_deadline = self.instance_deadline.unwrap_or((progress_deadline / 2).min(Duration::from_secs(300)));
        if instance_deadline.is_zero() || instance_deadline > progress_deadline {
            return Err(Error::invalid(
                "instance_deadline",
                format!(
                    "{instance_deadline:?} must be above zero and within the progress deadline ({progress_deadline:?}), or a stuck instance would roll the deployment back before it is replaced"
                ),
            ));
        }
        let full_read_every = self.full_read_every.unwrap_or(Duration::from_secs(60));
        if full_read_every.is_zero() {
            return Err(Error::invalid(
                "full_read_every",
                "must be above zero; leave the change feed out to read in full at every poll",
            ));
        }
        let gate = self.gate.unwrap_or_else(|| Arc::new(AutoApprove));
        gate.validate(progress_deadline).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        let thresholds = self.thresholds.unwrap_or_default();
        if thresholds.healthy == 0 || thresholds.unhealthy == 0 {
            return Err(Error::invalid("health_thresholds", "both counts must be at least 1"));
        }
        Ok(Deployer {
            inner: Arc::new(Inner {
                provider,
                traffic,
                health: self.health.unwrap_or_else(|| Arc::new(ProviderStatus)),
                strategy,
                gate,
                journal: self.journal,
                ledger: self.ledger,
                change_policy: self.change_policy,
                allow_downgrade: self.allow_downgrade,
                signing_key: self.signing_key,
                settings: Settings {
                    desired,
                    min_ready: self.min_ready,
                    progress_deadline,
                    poll_interval,
                    retry,
                    instance_deadline,
                    budget: self.budget.unwrap_or_default(),
                    thresholds,
                    feed: self.feed,
                    full_read_every,
                    accept_no_way_back: self.accept_no_way_back,
                },
            }),
        })
    }
}
