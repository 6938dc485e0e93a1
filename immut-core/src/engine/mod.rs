//! The replacement engine: an explicit state machine advanced by [`Deployment::step`].
//!
//! Each step observes the fleet (describe, serving set, health), checks the invariants, asks the
//! strategy for a [`Decision`], checks the decision against the invariants, acts, and records
//! [`Event`]s. The states and their transitions are documented on [`Phase`].

mod act;
mod analysis;
mod builder;
mod chores;
mod end;
mod events;
mod fleet;
mod gate;
pub mod invariants;
mod memory;
mod observe;
mod readiness;
mod records;
mod repair;
mod resume;
mod retry;
mod start;
mod wait;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use foldhash::{HashMap, HashSet, HashSetExt};
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
use builder::Settings;
pub use builder::{DeployerBuilder, HealthThresholds, ReplacementBudget, RetryPolicy};
pub use events::{Capacity, Event, ReadinessCheck};
pub use gate::{AutoApprove, Gate, GateContext, GateVerdict, ManualGate};
use observe::{Observation, Signature};
pub(crate) use records::blocking;
use retry::retry_call;

use crate::error::{Error, ErrorKind, Result};
use crate::feed::ChangeFeed;
use crate::health::{Health, HealthCheck, ProviderStatus};
use crate::journal::{self, Journal, JournalEntry, JournalRecord, LaunchIntent, LockGuard};
use crate::ledger::Ledger;
use crate::model::{DeploymentId, Instance, InstanceId, InstanceState, LaunchToken, Release, ReleaseId};
use crate::policy::{Change, ChangePolicy};
use crate::provider::{LaunchRequest, Provider, ProviderExt, Query};
use crate::strategy::{Count, Decision, FleetView, Limits, ReplacementStrategy, Rollback};
use crate::traffic::Traffic;

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
                // The feed speaks for the backends it was given with, not for these.
                settings: Settings { feed: None, ..self.inner.settings.clone() },
            }),
        }
    }

    pub(crate) fn gate(&self) -> &Arc<dyn Gate> {
        &self.inner.gate
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
    switched_at: Option<Duration>,
    last_change_at: Option<Duration>,
    last_progress: Instant,
    signature: Signature,
    passed_gates: BTreeSet<String>,
    pending: VecDeque<Event>,
    calls: CallCounts,
    cancel: CancelHandle,
    outcome: Option<Outcome>,
    /// The fleet as last observed.
    fleet: fleet::Fleet,
    begun: bool,
    resumed: bool,
    /// The caller chose the id ([`Deployment::with_id`]): its launch tokens may have been used
    /// by an earlier run that no journal recorded.
    chosen_id: bool,
    lock: Option<LockGuard>,
    replacing: HashSet<InstanceId>,
    pending_launch: Option<LaunchIntent>,
    strategy: Arc<dyn ReplacementStrategy>,
    explicit_rollback: bool,
    accept_no_way_back: bool,
    /// When each older release last answered that it can be launched again.
    ready_at: HashMap<ReleaseId, Instant>,
    started_wall_ms: u64,
    pacing: crate::provider::PacingStats,
    memory: memory::Memory,
    observed: Option<journal::Observed>,
    /// When it began waiting for a watch's repair to release the lease.
    lock_wait: Option<Instant>,
    /// When it last said that it waits for that lease.
    lock_notice: Option<Instant>,
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
            switched_at: None,
            last_change_at: None,
            last_progress: Instant::now(),
            signature: Signature::default(),
            passed_gates: BTreeSet::new(),
            pending: VecDeque::new(),
            calls: CallCounts::default(),
            cancel: CancelHandle::default(),
            outcome: None,
            fleet: fleet::Fleet::default(),
            begun: false,
            resumed: false,
            chosen_id: false,
            lock: None,
            replacing: HashSet::new(),
            pending_launch: None,
            strategy: inner.strategy.clone(),
            explicit_rollback: false,
            accept_no_way_back: inner.settings.accept_no_way_back,
            ready_at: HashMap::default(),
            started_wall_ms: 0,
            pacing: crate::provider::PacingStats::default(),
            memory: memory::Memory::default(),
            observed: None,
            lock_wait: None,
            lock_notice: None,
            inner,
        }
    }

    /// Sets the deployment id (default: derived from the release and the clock).
    pub fn with_id(mut self, id: DeploymentId) -> Self {
        self.id = id;
        self.chosen_id = true;
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

    /// Lets this deployment terminate instances of a release that can no longer be launched
    /// (see [`DeployerBuilder::accept_no_way_back`]): how a deployment that ended in
    /// [`Phase::NoWayBack`] is finished, by deploying the same release again with it.
    pub fn accepting_no_way_back(mut self) -> Self {
        self.accept_no_way_back = true;
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
            // A repair keeps what it repaired around: its own release (see `repair`).
            Phase::RollingBack { .. } if self.is_repair() => Some(self.release.id()),
            Phase::RollingBack { .. } => self.previous.as_ref(),
            _ => Some(self.release.id()),
        }
    }

    async fn advance(&mut self) -> Result<()> {
        if self.started.is_none() {
            if self.wait_for_watch().await? {
                return Ok(());
            }
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
        self.prepare_new(&obs).await?;
        let view = self.build_view(&obs);
        self.note_progress(&view);
        if matches!(self.phase, Phase::Deploying) {
            let failures = std::mem::take(&mut obs.failures);
            let spent = self.memory.spend(&failures, self.inner.settings.budget, self.inner.settings.desired);
            self.explain(spent).await?;
        }
        let limits = self.limits();
        self.journal_observed(&view, limits).await?;
        invariants::check_observed(&view, limits, self.initial_total).map_err(|v| self.violated(v))?;
        let decision = match self.chores(&view).await? {
            Some(chore) => chore,
            None => match &self.phase {
                Phase::RollingBack { .. } if self.is_repair() => Deployment::repair_rollback(&view),
                Phase::RollingBack { .. } => {
                    Rollback { limits, can_launch: self.rollback_release().is_some() }.decide(&view)
                }
                _ => self.strategy.decide(&view),
            },
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
        self.check_decision(&view, &decision, limits)?;
        self.act(decision, &view, &obs).await
    }
}

fn default_deployment_id(release: &Release) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("{}:{}:{nanos}:{}", release.service(), release.id(), std::process::id());
    use sha2::Digest;
    format!("d{}", crate::model::hex_prefix(&sha2::Sha256::digest(seed.as_bytes()), 12))
}
