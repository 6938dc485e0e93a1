//! The replacement engine: an explicit state machine advanced by [`Deployment::step`].
//!
//! Each step observes the fleet (describe, serving set, health), checks the invariants, asks the
//! strategy for a [`Decision`], checks the decision against the invariants, acts, and records
//! [`Event`]s. The states and their transitions are documented on [`Phase`].

mod events;
mod gate;
pub mod invariants;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::Stream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

pub use crate::outcome::{CallCounts, Outcome, Phase};
pub use events::{Capacity, Event};
pub use gate::{AutoApprove, Gate, GateVerdict, ManualGate};

use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, HealthCheck, ProviderStatus};
use crate::journal::{self, Journal, JournalEntry, JournalRecord, LaunchIntent, LockGuard};
use crate::ledger::Ledger;
use crate::model::{DeploymentId, Instance, InstanceId, LaunchToken, Release, ReleaseId};
use crate::policy::{Change, ChangePolicy};
use crate::provider::{LaunchRequest, Provider, ProviderExt, Query};
use crate::strategy::{Decision, FleetView, Limits, ReplacementStrategy, Rollback};
use crate::traffic::Traffic;

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
struct Settings {
    desired: usize,
    min_ready: Duration,
    progress_deadline: Duration,
    poll_interval: Duration,
    retry: RetryPolicy,
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

#[derive(Debug)]
struct Inner {
    provider: Arc<dyn Provider>,
    traffic: Arc<dyn Traffic>,
    health: Arc<dyn HealthCheck>,
    strategy: Arc<dyn ReplacementStrategy>,
    gate: Arc<dyn Gate>,
    journal: Option<Arc<dyn Journal>>,
    ledger: Option<Arc<Ledger>>,
    change_policy: Option<ChangePolicy>,
    allow_downgrade: bool,
    signing_key: Option<crate::model::SigningKey>,
    settings: Settings,
}

/// Deploys releases of a service with one strategy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

impl Deployer {
    /// A builder.
    pub fn builder() -> DeployerBuilder {
        DeployerBuilder::default()
    }

    /// A deployment of `release`, not started yet: drive it with [`Deployment::run`],
    /// [`Deployment::events`] or [`Deployment::step`].
    pub fn deploy(&self, release: Release) -> Deployment {
        Deployment::new(self.inner.clone(), release)
    }

    /// Picks up the deployment of `service` that the journal shows began and never ended (its
    /// process died), or `None` when there is none. The deployment keeps its id, release and
    /// phase: it continues, or goes on rolling back; cancel it before running to roll it back
    /// instead. A launch that was in flight is completed under its token, adopting whatever the
    /// dead process already launched, so nothing is launched twice.
    pub fn resume(&self, service: &str) -> Result<Option<Deployment>> {
        let journal = self
            .inner
            .journal
            .as_ref()
            .ok_or_else(|| Error::invalid("journal", "resume needs a journal; call .journal(..) on the builder"))?;
        let read = journal.read(service)?;
        let Some(found) = journal::interrupted(&read) else { return Ok(None) };
        let JournalEntry::Begin {
            release,
            previous_release,
            previous,
            previous_count,
            initial_total,
            replacing,
            strategy,
            desired,
        } = found.begin
        else {
            unreachable!("interrupted() starts at a Begin record")
        };
        if desired != self.inner.settings.desired {
            return Err(Error::invalid(
                "desired",
                format!(
                    "the journal shows deployment {} began with desired {desired}, but this deployer has desired {}; build the deployer with .desired({desired}) to resume it",
                    found.deployment, self.inner.settings.desired
                ),
            ));
        }
        let picked = match &self.inner.change_policy {
            Some(policy) => {
                [&policy.patch, &policy.minor, &policy.major].into_iter().find(|s| s.name() == strategy).cloned()
            }
            None => Some(self.inner.strategy.clone()).filter(|s| s.name() == strategy),
        };
        let Some(picked) = picked else {
            return Err(Error::invalid(
                "strategy",
                format!(
                    "the journal shows deployment {} began with strategy {strategy}, but this deployer has {}; build the deployer with the same strategy to resume it",
                    found.deployment,
                    self.inner.strategy.name()
                ),
            ));
        };
        let mut d = Deployment::new(self.inner.clone(), *release).with_id(found.deployment.clone());
        d.previous_release = previous_release.map(|r| Arc::new(*r));
        d.previous = previous;
        d.previous_count = previous_count;
        d.initial_total = initial_total;
        d.wave = found.waves;
        d.passed_gates = found.passed_gates;
        d.replacing = replacing.into_iter().collect();
        d.resumed = true;
        d.strategy = picked;
        d.pending_launch = found.pending_launch;
        if let Some(reason) = &found.rolling_back {
            d.phase = Phase::RollingBack { reason: reason.clone() };
        }
        d.pending.push_back(Event::Resumed {
            deployment: found.deployment,
            rolling_back: found.rolling_back.is_some(),
            pending_launch: d.pending_launch.is_some(),
            torn_lines: read.torn.len(),
        });
        Ok(Some(d))
    }

    /// Redeploys the previous successful release of `service`, as the ledger records it, as an
    /// explicit rollback (so the downgrade is allowed).
    pub fn rollback_to_previous(&self, service: &str) -> Result<Deployment> {
        let ledger = self.inner.ledger.as_ref().ok_or_else(|| {
            Error::invalid("ledger", "rolling back to the previous release needs a ledger; call .ledger(..)")
        })?;
        let current = ledger.current(service)?;
        let previous = ledger.previous(service)?.ok_or_else(|| {
            Error::invalid(
                "ledger",
                format!("the ledger holds no earlier successful release of {service} to roll back to"),
            )
        })?;
        let mut d = self.deploy(previous.release).as_rollback();
        if let Some(current) = current {
            d = d.with_previous(current.release);
        }
        Ok(d)
    }

    /// The desired count.
    pub fn desired(&self) -> usize {
        self.inner.settings.desired
    }

    /// The strategy.
    pub fn strategy(&self) -> &Arc<dyn ReplacementStrategy> {
        &self.inner.strategy
    }

    pub(crate) fn with_backends(
        &self,
        provider: Arc<dyn Provider>,
        traffic: Arc<dyn Traffic>,
        health: Arc<dyn HealthCheck>,
    ) -> Deployer {
        Deployer {
            inner: Arc::new(Inner {
                provider,
                traffic,
                health,
                strategy: self.inner.strategy.clone(),
                gate: Arc::new(AutoApprove),
                journal: None,
                ledger: None,
                change_policy: self.inner.change_policy.clone(),
                allow_downgrade: self.inner.allow_downgrade,
                signing_key: self.inner.signing_key.clone(),
                settings: self.inner.settings.clone(),
            }),
        }
    }

    pub(crate) fn provider(&self) -> &Arc<dyn Provider> {
        &self.inner.provider
    }

    pub(crate) fn traffic(&self) -> &Arc<dyn Traffic> {
        &self.inner.traffic
    }
}

/// Cancels a running deployment, which then rolls back.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl CancelHandle {
    /// Asks the deployment to stop and roll back at its next step.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

struct Observation {
    instances: Vec<Instance>,
    serving: HashSet<InstanceId>,
    health: Vec<Health>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Signature([usize; 9]);

/// One deployment of a release: a state machine advanced by [`Deployment::step`].
#[derive(Debug)]
pub struct Deployment {
    inner: Arc<Inner>,
    id: DeploymentId,
    release: Arc<Release>,
    previous_release: Option<Arc<Release>>,
    previous: Option<ReleaseId>,
    previous_count: usize,
    initial_total: usize,
    phase: Phase,
    started: Option<Instant>,
    step: u64,
    wave: u32,
    healthy_since: HashMap<InstanceId, (Instant, u64)>,
    switched_at: Option<Duration>,
    last_change_at: Option<Duration>,
    last_progress: Instant,
    signature: Signature,
    passed_gates: BTreeSet<String>,
    pending: VecDeque<Event>,
    calls: CallCounts,
    cancel: CancelHandle,
    outcome: Option<Outcome>,
    last_serving: HashSet<InstanceId>,
    begun: bool,
    resumed: bool,
    lock: Option<LockGuard>,
    replacing: HashSet<InstanceId>,
    pending_launch: Option<LaunchIntent>,
    strategy: Arc<dyn ReplacementStrategy>,
    explicit_rollback: bool,
    started_wall_ms: u64,
    pacing: crate::provider::PacingStats,
}

impl Deployment {
    fn new(inner: Arc<Inner>, release: Release) -> Self {
        let id = DeploymentId::new(default_deployment_id(&release));
        Deployment {
            id,
            release: Arc::new(release),
            previous_release: None,
            previous: None,
            previous_count: 0,
            initial_total: 0,
            phase: Phase::Deploying,
            started: None,
            step: 0,
            wave: 0,
            healthy_since: HashMap::new(),
            switched_at: None,
            last_change_at: None,
            last_progress: Instant::now(),
            signature: Signature::default(),
            passed_gates: BTreeSet::new(),
            pending: VecDeque::new(),
            calls: CallCounts::default(),
            cancel: CancelHandle::default(),
            outcome: None,
            last_serving: HashSet::new(),
            begun: false,
            resumed: false,
            lock: None,
            replacing: HashSet::new(),
            pending_launch: None,
            strategy: inner.strategy.clone(),
            explicit_rollback: false,
            started_wall_ms: 0,
            pacing: crate::provider::PacingStats::default(),
            inner,
        }
    }

    /// Sets the deployment id (default: derived from the release and the clock).
    pub fn with_id(mut self, id: DeploymentId) -> Self {
        self.id = id;
        self
    }

    /// The release to restore on rollback. Without it, a rollback can still switch traffic back
    /// to surviving instances, but cannot relaunch ones a rolling deployment already replaced.
    pub fn with_previous(mut self, previous: Release) -> Self {
        self.previous_release = Some(Arc::new(previous));
        self
    }

    /// Replaces these instances whatever release they claim (the reconcile path of the audit):
    /// the engine treats them as old, so the strategy launches their replacements and removes
    /// them within the usual limits. They are described by id, so instances without provenance
    /// can be replaced too.
    pub fn replacing(mut self, ids: impl IntoIterator<Item = InstanceId>) -> Self {
        self.replacing = ids.into_iter().collect();
        self
    }

    /// Marks this deployment an explicit rollback: it may go to an older artifact version.
    pub fn as_rollback(mut self) -> Self {
        self.explicit_rollback = true;
        self
    }

    /// The deployment id.
    pub fn id(&self) -> &DeploymentId {
        &self.id
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// A handle that cancels this deployment (which then rolls back).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.pending.drain(..).collect()
    }

    /// Runs to the end, discarding events, and returns the outcome.
    pub async fn run(mut self) -> Outcome {
        loop {
            if let Some(outcome) = self.step().await {
                return outcome;
            }
            self.pending.clear();
        }
    }

    /// Runs to the end, handing every event to `on_event`.
    pub async fn run_with(mut self, mut on_event: impl FnMut(&Event)) -> Outcome {
        loop {
            let done = self.step().await;
            for event in self.pending.drain(..) {
                on_event(&event);
            }
            if let Some(outcome) = done {
                return outcome;
            }
        }
    }

    /// Runs the deployment as a stream of events; the last one is [`Event::Finished`].
    pub fn events(self) -> impl Stream<Item = Event> + Send {
        futures_util::stream::unfold(self, |mut d| async move {
            loop {
                if let Some(event) = d.pending.pop_front() {
                    return Some((event, d));
                }
                if d.outcome.is_some() {
                    return None;
                }
                d.step().await;
            }
        })
    }

    /// Advances by one step: observe, check, decide, act. Returns the outcome once terminal.
    pub async fn step(&mut self) -> Option<Outcome> {
        if let Some(outcome) = &self.outcome {
            return Some(outcome.clone());
        }
        let span =
            tracing::info_span!("deployment", id = %self.id, service = %self.release.service(), step = self.step + 1);
        let result = self.advance().instrument(span).await;
        self.report_pacing();
        match result {
            Err(error) if !self.begun => self.refuse(error).await,
            Err(error) => self.failed(error).await,
            Ok(()) => {}
        }
        self.outcome.clone()
    }

    /// Turns growth in the provider's pacing counters into an event.
    fn report_pacing(&mut self) {
        let now = self.inner.provider.pacing();
        if now.waits > self.pacing.waits {
            self.pending.push_back(Event::Paced {
                waits: now.waits - self.pacing.waits,
                waited_ms: now.waited_ms.saturating_sub(self.pacing.waited_ms),
            });
        }
        self.pacing = now;
    }

    fn elapsed(&self) -> Duration {
        self.started.map(|s| s.elapsed()).unwrap_or_default()
    }

    fn limits(&self) -> Limits {
        match &self.phase {
            Phase::RollingBack { .. } => {
                let l = self.strategy.limits(self.inner.settings.desired);
                let surge = l.ceiling - self.inner.settings.desired;
                Limits {
                    floor: l.floor.min(self.previous_count),
                    ceiling: self.previous_count.max(self.inner.settings.desired) + surge,
                }
            }
            _ => self.strategy.limits(self.inner.settings.desired),
        }
    }

    fn target(&self) -> Option<&ReleaseId> {
        match self.phase {
            Phase::RollingBack { .. } => self.previous.as_ref(),
            _ => Some(self.release.id()),
        }
    }

    async fn advance(&mut self) -> Result<()> {
        if self.started.is_none() {
            self.start().await?;
        }
        if matches!(self.phase, Phase::Deploying) && self.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Cancelled, "the deployment was cancelled"));
        }
        self.step += 1;
        if let Some(intent) = self.pending_launch.take() {
            self.finish_launch(intent).await?;
        }
        let mut obs = self.observe().await?;
        let view = self.build_view(&obs);
        self.note_progress(&view);
        let limits = self.limits();
        invariants::check_observed(&view, limits, self.initial_total).map_err(|v| self.violated(v))?;
        let decision = match &self.phase {
            Phase::RollingBack { .. } => {
                Rollback { limits, can_launch: self.rollback_release().is_some() }.decide(&view)
            }
            _ => self.strategy.decide(&view),
        };
        self.pending.push_back(Event::Step {
            step: self.step,
            at_ms: view.now.as_millis() as u64,
            rolling_back: matches!(self.phase, Phase::RollingBack { .. }),
            capacity: Capacity {
                serving_healthy: view.serving_healthy(),
                serving: view.serving(),
                total: view.total_live(),
                new_live: view.new_live(),
                old_live: view.old_live(),
            },
            decision: decision.clone(),
        });
        invariants::check_decision(&view, &decision, limits).map_err(|v| self.violated(v))?;
        // The outcome reports the serving set of the observation that decided `Done`.
        self.last_serving = std::mem::take(&mut obs.serving);
        self.act(decision, &view, &obs).await
    }

    async fn start(&mut self) -> Result<()> {
        let started = Instant::now();
        self.started = Some(started);
        self.started_wall_ms = journal::now_ms();
        self.last_progress = started;
        self.validate_launches()?;
        if let Some(journal) = self.inner.journal.clone() {
            let (service, id) = (self.release.service().to_owned(), self.id.clone());
            self.lock = Some(blocking(move || journal.lock(&service, &id)).await?);
        }
        if self.resumed {
            self.begun = true;
            return Ok(());
        }
        let Observation { instances, serving, .. } = self.observe().await?;
        let mut by_release: BTreeMap<&ReleaseId, usize> = BTreeMap::new();
        for i in instances.iter().filter(|i| serving.contains(&i.id)) {
            if let Some(r) = i.release().filter(|r| *r != self.release.id()) {
                *by_release.entry(r).or_default() += 1;
            }
        }
        let previous = by_release.iter().max_by_key(|(_, n)| **n).map(|(r, n)| ((*r).clone(), *n));
        if let (Some(given), Some((observed, _))) = (&self.previous_release, &previous)
            && given.id() != observed
        {
            return Err(Error::invalid(
                "previous",
                format!(
                    "the deployer was given release {} as the previous one, but {observed} is what serves",
                    given.id()
                ),
            ));
        }
        let previous_version = previous.as_ref().and_then(|(id, _)| {
            instances
                .iter()
                .find(|i| i.release() == Some(id))
                .and_then(|i| i.provenance.as_ref())
                .map(|p| p.artifact_version.clone())
        });
        self.apply_version_policy(previous_version.as_ref())?;
        self.previous_count = previous.as_ref().map_or(0, |(_, n)| *n);
        self.previous = previous.map(|(r, _)| r);
        self.initial_total = instances.len();
        self.write_ahead(JournalEntry::Begin {
            release: Box::new((*self.release).clone()),
            previous_release: self.previous_release.as_ref().map(|r| Box::new((**r).clone())),
            previous: self.previous.clone(),
            previous_count: self.previous_count,
            initial_total: self.initial_total,
            desired: self.inner.settings.desired,
            strategy: self.strategy.name().to_owned(),
            replacing: self.replacing.iter().cloned().collect(),
        })
        .await?;
        self.begun = true;
        let limits = self.limits();
        self.pending.push_back(Event::Started {
            deployment: self.id.clone(),
            service: self.release.service().to_owned(),
            release: self.release.id().clone(),
            previous: self.previous.clone(),
            previous_count: self.previous_count,
            desired: self.inner.settings.desired,
            strategy: self.strategy.name().to_owned(),
            floor: limits.floor,
            ceiling: limits.ceiling,
        });
        tracing::info!(deployment = %self.id, release = %self.release, previous = ?self.previous, "deployment started");
        Ok(())
    }

    /// Checks, before any backend call, that every launch this deployment may make (of the
    /// release, and of the previous one for a rollback) is valid for the provider: labels,
    /// signature and counts. The longest token the deployment can use stands in for all.
    fn validate_launches(&self) -> Result<()> {
        let caps = self.inner.provider.capabilities();
        let token = LaunchToken::new(format!("{}-rb{}-{}", self.id, u32::MAX, u32::MAX));
        for release in std::iter::once(&self.release).chain(&self.previous_release) {
            let mut probe = LaunchRequest::new(release.clone(), 1, &self.id, token.clone());
            if let Some(key) = &self.inner.signing_key {
                probe = probe.signed(key);
            }
            probe.validate(&caps).map_err(|e| {
                let which = if Arc::ptr_eq(release, &self.release) { "release" } else { "previous release" };
                Error::new(e.kind(), format!("{which} {}: {}", release.id(), e.message()))
            })?;
        }
        Ok(())
    }

    /// Refuses an unintended downgrade and picks the strategy by version change when asked to.
    fn apply_version_policy(&mut self, previous: Option<&semver::Version>) -> Result<()> {
        let target = &self.release.artifact().version;
        if let Some(previous) = previous {
            let downgrade = Change::between(previous, target) == Change::Downgrade;
            if downgrade && !self.explicit_rollback && !self.inner.allow_downgrade {
                return Err(Error::invalid(
                    "artifact.version",
                    format!(
                        "{target} is older than {previous}, which serves now; a downgrade must be an explicit rollback (Deployment::as_rollback or Deployer::rollback_to_previous)"
                    ),
                ));
            }
        }
        if let Some(policy) = &self.inner.change_policy {
            self.strategy = policy.pick(previous, target);
        }
        Ok(())
    }

    fn rollback_release(&self) -> Option<&Arc<Release>> {
        self.previous_release.as_ref().filter(|r| Some(r.id()) == self.previous.as_ref())
    }

    async fn observe(&mut self) -> Result<Observation> {
        let (provider, traffic) = (&self.inner.provider, &self.inner.traffic);
        let query = Query::service(self.release.service());
        let settings = &self.inner.settings;
        let (described, serving) = tokio::join!(
            retry_call(settings, "describe", || provider.describe(&query)),
            retry_call(settings, "serving", || traffic.serving()),
        );
        let mut instances = self.absorb(described)?;
        if !self.replacing.is_empty() {
            let query = Query::ids(self.replacing.iter().cloned()).with_unmanaged();
            let provider = self.inner.provider.clone();
            let extra = self.retrying("describe", || provider.describe(&query)).await?;
            let known: HashSet<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
            instances.extend(extra.into_iter().filter(|i| !known.contains(&i.id)));
        }
        let serving: HashSet<InstanceId> = self.absorb(serving)?.into_iter().collect();
        self.calls.describe += 1;
        self.calls.serving += 1;
        let health = self.judge(&instances, &serving).await;
        Ok(Observation { instances, serving, health })
    }

    /// Health of the instances whose classification depends on it: those of the target
    /// release and those serving. An old instance that does not serve is old and idle
    /// whatever its health, so it is not checked. A check that fails after its retries
    /// leaves the instances `Unknown` for this step (see [`crate::health`]).
    async fn judge(&mut self, instances: &[Instance], serving: &HashSet<InstanceId>) -> Vec<Health> {
        let target = self.target().cloned();
        let decides = |i: &Instance| {
            serving.contains(&i.id)
                || (target.is_some() && i.release() == target.as_ref() && !self.replacing.contains(&i.id))
        };
        let checked: Vec<usize> = (0..instances.len()).filter(|&n| decides(&instances[n])).collect();
        let mut health = vec![Health::Unknown; instances.len()];
        if checked.is_empty() {
            return health;
        }
        let subject: Vec<Instance> = checked.iter().map(|&n| instances[n].clone()).collect();
        let check = self.inner.health.clone();
        let result = self.retrying("health", || check.check_many(&subject)).await;
        self.calls.health += 1;
        match result {
            Ok(verdicts) if verdicts.len() == subject.len() => {
                for (n, v) in checked.into_iter().zip(verdicts) {
                    health[n] = v;
                }
            }
            Ok(verdicts) => {
                let error = format!("the check returned {} verdicts for {} instances", verdicts.len(), subject.len());
                self.pending.push_back(Event::HealthUnknown { error, instances: subject.len() });
            }
            Err(e) => {
                tracing::warn!(error = %e, "health check unavailable; instances count as unknown this step");
                self.pending.push_back(Event::HealthUnknown { error: e.to_string(), instances: subject.len() });
            }
        }
        health
    }

    fn build_view(&mut self, obs: &Observation) -> FleetView {
        let now = Instant::now();
        let min_ready = self.inner.settings.min_ready;
        let mut view = FleetView {
            now: self.elapsed(),
            desired: match self.phase {
                Phase::RollingBack { .. } => self.previous_count,
                _ => self.inner.settings.desired,
            },
            last_change_at: self.last_change_at,
            switched_at: self.switched_at,
            passed_gates: self.passed_gates.clone(),
            ..FleetView::default()
        };
        let started = self.started.unwrap_or(now);
        let target = self.target().cloned();
        let generation = self.step;
        for (instance, health) in obs.instances.iter().zip(&obs.health) {
            let id = &instance.id;
            let healthy = health.is_healthy();
            let since = if healthy {
                let entry = self.healthy_since.entry(id.clone()).or_insert((now, generation));
                entry.1 = generation;
                Some(entry.0)
            } else {
                None
            };
            let serving = obs.serving.contains(id);
            let replaced = !self.replacing.is_empty() && self.replacing.contains(id);
            let is_target = target.is_some() && instance.release() == target.as_ref() && !replaced;
            let bucket = match (is_target, serving, healthy) {
                (true, true, true) => &mut view.new_serving_healthy,
                (true, true, false) => &mut view.new_serving_unhealthy,
                (true, false, false) => &mut view.launching,
                (true, false, true) => {
                    let ready_at = since.expect("healthy has a since") + min_ready;
                    if ready_at <= now {
                        &mut view.ready
                    } else {
                        let at = ready_at - started;
                        view.next_ready_at = Some(view.next_ready_at.map_or(at, |t| t.min(at)));
                        &mut view.warming
                    }
                }
                (false, true, true) => &mut view.old_serving_healthy,
                (false, true, false) => &mut view.old_serving_unhealthy,
                (false, false, _) => &mut view.old_idle,
            };
            bucket.push(id.clone());
        }
        // Only instances healthy in this observation keep their healthy-since time.
        self.healthy_since.retain(|_, (_, seen)| *seen == generation);
        view
    }

    fn note_progress(&mut self, view: &FleetView) {
        let signature = Signature([
            view.launching.len(),
            view.warming.len(),
            view.ready.len(),
            view.new_serving_healthy.len(),
            view.new_serving_unhealthy.len(),
            view.old_serving_healthy.len(),
            view.old_serving_unhealthy.len(),
            view.old_idle.len(),
            view.passed_gates.len(),
        ]);
        if signature != self.signature {
            self.signature = signature;
            self.last_progress = Instant::now();
        }
    }

    fn violated(&mut self, violation: invariants::Violation) -> Error {
        tracing::error!(invariant = %violation.invariant, detail = %violation.detail, "invariant violation refused");
        self.pending
            .push_back(Event::InvariantViolated { invariant: violation.invariant, detail: violation.detail.clone() });
        violation.into()
    }

    fn changed(&mut self) {
        self.last_change_at = Some(self.elapsed());
        self.last_progress = Instant::now();
    }

    async fn act(&mut self, decision: Decision, view: &FleetView, obs: &Observation) -> Result<()> {
        match decision {
            Decision::Launch { count } => self.launch(count).await?,
            Decision::Attach { .. }
            | Decision::Detach { .. }
            | Decision::Switch { .. }
            | Decision::Terminate { .. } => {
                let step = self.step;
                self.write_ahead(JournalEntry::Intent { step, decision: decision.clone(), launch: None }).await?;
                let result = self.mutate(decision, obs).await;
                self.write_ahead(match &result {
                    Ok(()) => JournalEntry::Applied { step, token: None, ids: Vec::new() },
                    Err(e) => JournalEntry::Failed { step, token: None, error: e.to_string() },
                })
                .await?;
                result?;
            }
            Decision::Gate { name } => match self.inner.gate.evaluate(&name, view).await {
                GateVerdict::Pass => {
                    self.write_ahead(JournalEntry::GatePassed { gate: name.clone() }).await?;
                    self.passed_gates.insert(name.clone());
                    self.pending.push_back(Event::GatePassed { gate: name });
                }
                GateVerdict::Hold(reason) => self.wait(&reason, None, true).await?,
                GateVerdict::Fail(reason) => {
                    return Err(Error::new(ErrorKind::GateRejected, format!("gate {name:?} failed: {reason}")));
                }
            },
            Decision::Wait { reason, until } => self.wait(&reason, until, false).await?,
            Decision::Done => self.finish().await,
            Decision::Fail { reason } => return Err(Error::new(ErrorKind::Unhealthy, reason)),
        }
        Ok(())
    }

    /// Carries out a traffic change or a termination.
    async fn mutate(&mut self, decision: Decision, obs: &Observation) -> Result<()> {
        match decision {
            Decision::Attach { ids } => {
                let instances = pick(obs, &ids);
                let traffic = self.inner.traffic.clone();
                self.retrying("attach", || traffic.attach(&instances)).await?;
                self.calls.attach += 1;
                self.changed();
                self.pending.push_back(Event::Attached { ids });
            }
            Decision::Detach { ids } => {
                let traffic = self.inner.traffic.clone();
                self.retrying("detach", || traffic.detach(&ids)).await?;
                self.calls.detach += 1;
                self.changed();
                self.pending.push_back(Event::Detached { ids });
            }
            Decision::Switch { attach, detach } => {
                let instances = pick(obs, &attach);
                let traffic = self.inner.traffic.clone();
                self.retrying("switch", || traffic.switch(&instances, &detach)).await?;
                self.calls.switch += 1;
                self.changed();
                if matches!(self.phase, Phase::Deploying) {
                    self.switched_at = self.last_change_at;
                }
                self.pending.push_back(Event::Switched { attached: attach, detached: detach });
            }
            Decision::Terminate { ids } => {
                let provider = self.inner.provider.clone();
                self.retrying("terminate", || provider.terminate_all(&ids)).await?;
                self.calls.terminate += ids.len().div_ceil(provider.capabilities().max_terminate_batch.max(1)) as u64;
                self.changed();
                self.pending.push_back(Event::Terminated { ids });
            }
            other => unreachable!("mutate() is called with traffic changes and terminations only, not {other:?}"),
        }
        Ok(())
    }

    /// Appends to the journal, if there is one. A record that cannot be written stops the
    /// action it announces: nothing is changed without its intent on disk.
    async fn write_ahead(&self, entry: JournalEntry) -> Result<()> {
        let Some(journal) = self.inner.journal.clone() else { return Ok(()) };
        let record = JournalRecord { deployment: self.id.clone(), at_ms: journal::now_ms(), entry };
        let service = self.release.service().to_owned();
        blocking(move || journal.append(&service, &record)).await
    }

    /// Completes a launch a dead process journaled but did not finish, adopting by token.
    async fn finish_launch(&mut self, intent: LaunchIntent) -> Result<()> {
        let release = if intent.rollback { self.rollback_release_or_err()? } else { self.release.clone() };
        self.launch_chunk(release, intent, true).await
    }

    fn rollback_release_or_err(&self) -> Result<Arc<Release>> {
        self.rollback_release().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "the previous release is unknown; pass it with Deployment::with_previous",
            )
        })
    }

    async fn launch(&mut self, count: usize) -> Result<()> {
        let rollback = matches!(self.phase, Phase::RollingBack { .. });
        let release = if rollback { self.rollback_release_or_err()? } else { self.release.clone() };
        self.wave += 1;
        let wave = self.wave;
        let prefix = if rollback { "rb" } else { "w" };
        let batch = self.inner.provider.capabilities().max_launch_batch.max(1);
        let mut remaining = count;
        let mut index = 0;
        while remaining > 0 {
            let n = remaining.min(batch);
            let token = LaunchToken::new(format!("{}-{prefix}{wave}-{index}", self.id));
            self.launch_chunk(release.clone(), LaunchIntent { wave, token, count: n, rollback }, false).await?;
            remaining -= n;
            index += 1;
        }
        Ok(())
    }

    /// One launch call's worth, written ahead, adopting what already exists under its token.
    async fn launch_chunk(&mut self, release: Arc<Release>, intent: LaunchIntent, resumed_launch: bool) -> Result<()> {
        let step = self.step;
        let span = tracing::info_span!("wave", wave = intent.wave, count = intent.count);
        self.write_ahead(JournalEntry::Intent {
            step,
            decision: Decision::Launch { count: intent.count },
            launch: Some(intent.clone()),
        })
        .await?;
        let mut request = LaunchRequest::new(release, intent.count, &self.id, intent.token.clone());
        if let Some(key) = &self.inner.signing_key {
            request = request.signed(key);
        }
        let provider = self.inner.provider.clone();
        // A backend that honours the token as an idempotency key needs no look-up before a
        // fresh token's first attempt. After any doubt (a retry, or a launch a dead process
        // journaled) the engine looks up by token first and adopts what exists.
        let fresh = provider.capabilities().honours_token && !resumed_launch;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let result = self
            .retrying("launch", || {
                let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
                let (provider, request) = (&provider, &request);
                async move {
                    if first && fresh {
                        request.validate(&provider.capabilities())?;
                        provider.launch(request).await.map(|launched| (launched, 0))
                    } else {
                        provider.ensure_launched(request).await
                    }
                }
            })
            .instrument(span)
            .await;
        self.calls.launch += 1;
        if !fresh || attempts.load(Ordering::SeqCst) > 1 {
            self.calls.describe += 1;
        }
        let token = Some(intent.token.clone());
        let (instances, adopted) = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.write_ahead(JournalEntry::Failed { step, token, error: e.to_string() }).await?;
                return Err(e);
            }
        };
        let ids: Vec<InstanceId> = instances.into_iter().map(|i| i.id).collect();
        self.write_ahead(JournalEntry::Applied { step, token, ids: ids.clone() }).await?;
        self.changed();
        self.pending.push_back(Event::Launched { wave: intent.wave, token: intent.token, ids, adopted });
        Ok(())
    }

    async fn wait(&mut self, reason: &str, until: Option<Duration>, polling_gate: bool) -> Result<()> {
        let now = Instant::now();
        let deadline = self.last_progress + self.inner.settings.progress_deadline;
        if now >= deadline {
            return Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "no progress for {}s (the progress deadline) while waiting: {reason}",
                    self.inner.settings.progress_deadline.as_secs()
                ),
            ));
        }
        // A gate can change its mind at any time, so gates are polled; otherwise a provider
        // that promises its next change lets the engine sleep until then.
        let promised = if polling_gate { None } else { self.inner.provider.next_change() };
        let mut wake = promised.unwrap_or(now + self.inner.settings.poll_interval).min(deadline);
        if let (Some(until), Some(started)) = (until, self.started) {
            wake = wake.min(started + until);
        }
        let wake = wake.max(now + Duration::from_millis(1));
        tracing::debug!(reason, "waiting");
        let cancel = self.cancel.clone();
        let cancellable = matches!(self.phase, Phase::Deploying);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = cancel.notify.notified(), if cancellable => {}
        }
        Ok(())
    }

    async fn finish(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Succeeded) {
            Phase::Deploying => Phase::Succeeded,
            Phase::RollingBack { reason } => Phase::RolledBack { reason },
            terminal => terminal,
        };
        self.conclude().await;
    }

    async fn failed(&mut self, error: Error) {
        let message = error.to_string();
        match std::mem::replace(&mut self.phase, Phase::Succeeded) {
            Phase::Deploying => {
                tracing::warn!(deployment = %self.id, error = %message, "rolling back");
                self.phase = Phase::RollingBack { reason: message.clone() };
                if let Err(e) = self.write_ahead(JournalEntry::RollingBack { reason: message.clone() }).await {
                    tracing::error!(error = %e, "cannot journal the rollback; continuing it");
                }
                let limits = self.limits();
                self.pending.push_back(Event::RollbackStarted {
                    reason: message,
                    floor: limits.floor,
                    ceiling: limits.ceiling,
                });
                self.last_progress = Instant::now();
                self.signature = Signature::default();
            }
            Phase::RollingBack { reason } => {
                tracing::error!(deployment = %self.id, error = %message, "rollback failed");
                self.phase = Phase::RollbackFailed { reason, rollback_error: message };
                self.conclude().await;
            }
            terminal => self.phase = terminal,
        }
    }

    async fn refuse(&mut self, error: Error) {
        tracing::warn!(deployment = %self.id, error = %error, "deployment refused");
        self.phase = Phase::Refused { reason: error.to_string() };
        self.conclude().await;
    }

    async fn conclude(&mut self) {
        let outcome = Outcome {
            deployment: self.id.clone(),
            service: self.release.service().to_owned(),
            release: self.release.id().clone(),
            previous: self.previous.clone(),
            phase: self.phase.clone(),
            elapsed: self.elapsed(),
            steps: self.step,
            waves: self.wave,
            serving: {
                let mut serving: Vec<InstanceId> = self.last_serving.iter().cloned().collect();
                serving.sort();
                serving
            },
            calls: self.calls,
        };
        tracing::info!(summary = %outcome.summary(), "deployment finished");
        if self.begun {
            if let Some(ledger) = self.inner.ledger.clone() {
                let (o, release, strategy) = (outcome.clone(), self.release.clone(), self.strategy.name().to_owned());
                let started = self.started_wall_ms;
                if let Err(e) = blocking(move || ledger.record(&o, &release, &strategy, started)).await {
                    tracing::error!(error = %e, "cannot record the deployment in the ledger");
                }
            }
            if let Err(e) = self.write_ahead(JournalEntry::End { outcome: Box::new(outcome.clone()) }).await {
                tracing::error!(error = %e, "cannot journal the end of the deployment");
            }
        }
        self.lock = None;
        self.pending.push_back(Event::Finished { outcome: outcome.clone() });
        self.outcome = Some(outcome);
    }

    /// Runs `f` under the retry policy and records its retries as events.
    async fn retrying<T, F, Fut>(&mut self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempt = retry_call(&self.inner.settings, operation, f).await;
        self.absorb(attempt)
    }

    fn absorb<T>(&mut self, (result, retries): (Result<T>, Vec<Event>)) -> Result<T> {
        self.calls.retries += retries.len() as u64;
        self.pending.extend(retries);
        result
    }
}

/// Runs `f`, retrying retryable errors with backoff and jitter; returns the result and one
/// event per retry. Each attempt is bounded by the progress deadline.
async fn retry_call<T, F, Fut>(settings: &Settings, operation: &'static str, mut f: F) -> (Result<T>, Vec<Event>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let policy = settings.retry;
    let deadline = settings.progress_deadline;
    let retries = Mutex::new(Vec::new());
    let attempt = || {
        let fut = f();
        async move {
            tokio::time::timeout(deadline, fut).await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("{operation} took longer than the progress deadline"),
                ))
            })
        }
    };
    let result = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(policy.min_delay)
                .with_max_delay(policy.max_delay)
                .with_max_times(policy.max_retries)
                .with_jitter(),
        )
        .when(|e: &Error| e.is_retryable())
        .notify(|e: &Error, delay: Duration| {
            let mut r = retries.lock().expect("retry log lock poisoned");
            let attempt = r.len() as u32 + 1;
            tracing::warn!(operation, attempt, error = %e, "retrying");
            r.push(Event::Retrying {
                operation: operation.to_owned(),
                attempt,
                error: e.to_string(),
                delay_ms: delay.as_millis() as u64,
            });
        })
        .await;
    let result = result.map_err(|e| if e.operation().is_none() { e.with_operation(operation) } else { e });
    (result, retries.into_inner().expect("retry log lock poisoned"))
}

/// Runs blocking work (the journal's and the ledger's file I/O and fsync) on tokio's blocking
/// pool, so an async worker thread never waits on a disk. A panic there is the deployment's own.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::new(ErrorKind::Cancelled, "the runtime shut down during a journal write").with_source(e)),
    }
}

fn pick(obs: &Observation, ids: &[InstanceId]) -> Vec<Instance> {
    let wanted: HashSet<&InstanceId> = ids.iter().collect();
    obs.instances.iter().filter(|i| wanted.contains(&i.id)).cloned().collect()
}

fn default_deployment_id(release: &Release) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("{}:{}:{nanos}:{}", release.service(), release.id(), std::process::id());
    use sha2::Digest;
    format!("d{}", crate::model::hex_prefix(&sha2::Sha256::digest(seed.as_bytes()), 12))
}
