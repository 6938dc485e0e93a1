//! Watch: keeps a service on its release between deployments.
//!
//! A [`Watch`] audits the service at an interval ([`crate::audit`], the same verdicts) and
//! repairs what it finds **by replacement**, never by patching. Each repair is a deployment
//! of the serving release through the deployer's own engine and strategy, journaled and
//! recorded in the ledger like every deployment, under the same invariants: healthy instances
//! of the release are kept, the offenders are replaced within the strategy's limits (a
//! blue/green service one instance at a time, never its whole fleet for one bad instance),
//! and nothing ever goes below the healthy floor by the repair's doing.
//!
//! What it finds (see [`WatchFinding::kind`]): missing capacity (fewer instances of the
//! release than desired), instances that fail their health check past a grace period, drift
//! (a wrong image or machine type as the provider reports it, or labels of another release),
//! provenance that no longer verifies (`tampered`) or that the journal never recorded for this
//! instance (`unrecorded`: copied labels), orphans, traffic targets that no instance answers
//! for (`vanished`) and unmanaged instances. Unmanaged instances are only reported unless
//! [`WatchBuilder::unmanaged`] opts in, and then only within [`UnmanagedScope`].
//!
//! It yields to deployments: while any deployment other than its own repair holds the
//! service's lease it neither audits nor repairs. It takes the lease only for a repair (the
//! repair is a deployment, which takes it) and releases it at the end; a deployment that
//! finds a repair holding the lease waits for it instead of being refused
//! ([`crate::Event::WaitingForLease`]).
//!
//! At most [`WatchBuilder::max_repairs`] instances are replaced per interval (missing
//! capacity is restored in full and counts first), and when
//! repairs keep failing (a release that crashes at start) the breaker opens
//! ([`crate::Event::BreakerOpened`]): the watch stops repairing and says why, instead of
//! relaunching forever. With a ledger, each finding is noted when it opens and when it closes
//! (not at every interval), and a restarted watch reads its open findings and its breaker back
//! from there; an interrupted repair is resumed from the journal.
//!
//! ```
//! use std::time::Duration;
//! use immut_core::journal::MemoryJournal;
//! use immut_core::prelude::*;
//! use immut_core::sim::{Faults, OutOfBand, SimProvider};
//! use immut_core::watch::Watch;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> immut_core::Result<()> {
//! // Someone terminates one of the three instances a minute in.
//! let faults = Faults { out_of_band: vec![OutOfBand { at: Duration::from_secs(60), count: 1 }], ..Faults::default() };
//! let sim = SimProvider::builder().boot_to_healthy(Duration::from_secs(5)).faults(faults).build()?;
//! let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
//! let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img-1"), &base)?;
//! let deployer = sim.deployer().strategy(BlueGreen::new()).desired(3).journal(MemoryJournal::new()).build()?;
//! assert!(deployer.deploy(v1.clone()).run().await.succeeded());
//!
//! let mut watch = Watch::builder(deployer, v1.clone()).interval(Duration::from_secs(30)).build()?;
//! assert!(watch.run_once().await?.findings.is_empty());
//! tokio::time::sleep(Duration::from_secs(60)).await;
//! let cycle = watch.run_once().await?;
//! assert_eq!(cycle.findings[0].kind, "missing_capacity");
//! assert!(cycle.repair.as_ref().is_some_and(|r| r.outcome.succeeded()));
//! assert!(watch.run_once().await?.findings.is_empty(), "repaired: three instances of v1 serve");
//! # Ok(())
//! # }
//! ```

mod breaker;
mod findings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use findings::{FindingAction, UnmanagedAction, UnmanagedScope, WatchFinding};

use crate::audit::{Audit, AuditReport, Verdict};
use crate::engine::{CancelHandle, Deployer, Event, Outcome, Phase, blocking};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{Ledger, LedgerEntry, WatchNote};
use crate::model::{DeploymentId, InstanceId, Release, ReleaseId};
use crate::provider::{ProviderExt, Query};
use breaker::Breaker;
use findings::Rules;

/// The prefix of every id a watch uses: its own and its repairs'.
pub const WATCH_PREFIX: &str = "watch-";

/// Whether a deployment id is a watch's (its own, or one of its repairs).
pub fn is_watch(id: &DeploymentId) -> bool {
    id.as_str().starts_with(WATCH_PREFIX)
}

fn new_watch_id() -> DeploymentId {
    use sha2::Digest;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("watch:{nanos}:{}", std::process::id());
    DeploymentId::new(format!("{WATCH_PREFIX}{}", crate::model::hex_prefix(&sha2::Sha256::digest(seed), 12)))
}

/// A watch's settings, as built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSettings {
    /// Time between the starts of two cycles.
    pub interval: Duration,
    /// How long an instance may fail its health check before it is replaced.
    pub grace: Duration,
    /// The most instances one cycle replaces (missing capacity counts first).
    pub max_repairs: usize,
    /// Repairs that fail in a row before the breaker opens.
    pub breaker_threshold: u32,
    /// What to do with unmanaged instances.
    pub unmanaged: UnmanagedAction,
    /// Which unmanaged instances that applies to.
    pub unmanaged_scope: UnmanagedScope,
}

/// Builds a [`Watch`]. Setters never fail; [`WatchBuilder::build`] checks everything.
#[derive(Debug)]
pub struct WatchBuilder {
    deployer: Deployer,
    release: Release,
    interval: Duration,
    grace: Option<Duration>,
    max_repairs: usize,
    breaker_threshold: u32,
    unmanaged: UnmanagedAction,
    unmanaged_scope: UnmanagedScope,
}

impl WatchBuilder {
    /// Time between the starts of two cycles (default 60 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long an instance may fail its health check before it is replaced (default: one
    /// interval), so that a blip is never replaced.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The most instances one cycle replaces (default 1). Missing capacity counts against it
    /// first and is always restored in full, since it is what the healthy floor needs; the
    /// offenders fill what is left.
    pub fn max_repairs(mut self, n: usize) -> Self {
        self.max_repairs = n;
        self
    }

    /// Repairs that may fail in a row before the watch stops repairing (default 3).
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.breaker_threshold = n;
        self
    }

    /// What to do with instances launched outside immut (default: report them).
    pub fn unmanaged(mut self, action: UnmanagedAction) -> Self {
        self.unmanaged = action;
        self
    }

    /// Which unmanaged instances [`WatchBuilder::unmanaged`] applies to (default: those that
    /// receive the service's traffic).
    pub fn unmanaged_scope(mut self, scope: UnmanagedScope) -> Self {
        self.unmanaged_scope = scope;
        self
    }

    /// Checks the settings and builds the watch. Errors name the field.
    pub fn build(self) -> Result<Watch> {
        if self.interval.is_zero() {
            return Err(Error::invalid("watch.interval", "must be above zero; for example 30s"));
        }
        if self.max_repairs == 0 {
            return Err(Error::invalid(
                "watch.max_repairs",
                "must be at least 1; to only report, leave the watch out and run the audit",
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(Error::invalid("watch.breaker_threshold", "must be at least 1 failed repair"));
        }
        if self.deployer.journal().is_none() {
            return Err(Error::invalid(
                "journal",
                "a watch needs the deployer's journal to yield to deployments and to journal its repairs; build the deployer with .journal(..)",
            ));
        }
        let grace = self.grace.unwrap_or(self.interval);
        let settings = WatchSettings {
            interval: self.interval,
            grace,
            max_repairs: self.max_repairs,
            breaker_threshold: self.breaker_threshold,
            unmanaged: self.unmanaged,
            unmanaged_scope: self.unmanaged_scope,
        };
        Ok(Watch {
            id: new_watch_id(),
            deployer: self.deployer,
            release: self.release,
            settings,
            open: BTreeMap::new(),
            first_seen: HashMap::new(),
            breaker: Breaker::new(self.breaker_threshold),
            restored: false,
            held: None,
            cycle: 0,
            cancel: CancelHandle::default(),
        })
    }
}

/// One repair a cycle made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repair {
    /// Its deployment id.
    pub deployment: DeploymentId,
    /// The instances it replaced.
    pub replacing: Vec<InstanceId>,
    /// How many instances the fleet lacked.
    pub missing: usize,
    /// How it ended.
    pub outcome: Outcome,
}

/// What one cycle found and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cycle {
    /// Cycle number, from 1.
    pub cycle: u64,
    /// The release the service was held to.
    pub release: ReleaseId,
    /// Set when a deployment held the lease: the cycle did nothing else.
    pub yielded: Option<DeploymentId>,
    /// Every finding open after the audit.
    pub findings: Vec<WatchFinding>,
    /// Those seen for the first time.
    pub opened: Vec<WatchFinding>,
    /// Those no longer seen.
    pub closed: Vec<WatchFinding>,
    /// Traffic targets and unmanaged instances taken out without a replacement.
    pub removed: Vec<InstanceId>,
    /// The repair, if one ran.
    pub repair: Option<Repair>,
    /// Whether the breaker is open (no repairs).
    pub breaker_open: bool,
    /// Every event of the cycle, the repair's included.
    pub events: Vec<Event>,
}

/// Audits a service at an interval and repairs by replacement. Built with [`Watch::builder`].
#[derive(Debug)]
pub struct Watch {
    id: DeploymentId,
    deployer: Deployer,
    release: Release,
    settings: WatchSettings,
    /// Open findings by key.
    open: BTreeMap<String, WatchFinding>,
    /// When this process first saw each open finding, on the tokio clock (the grace period
    /// is measured on it; `since_ms` is the wall clock, for the ledger and restarts).
    first_seen: HashMap<String, Instant>,
    breaker: Breaker,
    /// Whether the open findings and the breaker were read back from the ledger.
    restored: bool,
    /// The release held at the last cycle: a new one resets the breaker.
    held: Option<ReleaseId>,
    cycle: u64,
    cancel: CancelHandle,
}

impl Watch {
    /// A watch that repairs with `deployer` (its provider, traffic, health check, strategy,
    /// desired count, journal and ledger) and holds the service to `release`, or, with a
    /// ledger, to the ledger's current release once there is one.
    pub fn builder(deployer: Deployer, release: Release) -> WatchBuilder {
        WatchBuilder {
            deployer,
            release,
            interval: Duration::from_secs(60),
            grace: None,
            max_repairs: 1,
            breaker_threshold: 3,
            unmanaged: UnmanagedAction::Report,
            unmanaged_scope: UnmanagedScope::Serving,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &WatchSettings {
        &self.settings
    }

    /// The watch's own id (its ledger notes carry it).
    pub fn id(&self) -> &DeploymentId {
        &self.id
    }

    /// The findings open now.
    pub fn open_findings(&self) -> Vec<WatchFinding> {
        self.open.values().cloned().collect()
    }

    /// Whether the breaker is open: repairs kept failing, and the watch only reports.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// A handle that stops [`Watch::run`]: a repair in flight is cancelled (it terminates
    /// what it launched that does not serve yet, and releases the lease), then the loop ends.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// One cycle: audit, note what opened and closed, and repair within the rate.
    pub async fn run_once(&mut self) -> Result<Cycle> {
        let mut events = Vec::new();
        let mut cycle = self.cycle_with(&mut |e: &Event| events.push(e.clone())).await?;
        cycle.events = events;
        Ok(cycle)
    }

    /// Runs cycles at the interval until the cancel handle ([`Watch::cancel_handle`]) is
    /// cancelled, handing every event to `on_event`. A cycle that fails (a provider, the
    /// balancer or the state store answered with an error) is reported as
    /// [`Event::WatchCycleFailed`] and tried again at the next interval.
    pub async fn run(&mut self, mut on_event: impl FnMut(&Event) + Send) {
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let started = Instant::now();
            if let Err(e) = self.cycle_with(&mut on_event).await {
                tracing::warn!(error = %e, "watch cycle failed");
                on_event(&Event::WatchCycleFailed { error: e.to_string() });
            }
            let cancel = self.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.settings.interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn service(&self) -> &str {
        self.release.service()
    }

    async fn cycle_with(&mut self, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<Cycle> {
        self.cycle += 1;
        let expected = self.expected().await?;
        if self.held.as_ref().is_some_and(|held| held != expected.id()) {
            // A deployment moved the service to another release: the failures were the old one's.
            self.breaker.succeeded();
        }
        self.held = Some(expected.id().clone());
        let mut cycle = Cycle {
            cycle: self.cycle,
            release: expected.id().clone(),
            yielded: None,
            findings: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            removed: Vec::new(),
            repair: None,
            breaker_open: false,
            events: Vec::new(),
        };
        if let Some(holder) = self.holder().await? {
            on_event(&Event::WatchYielded { holder: holder.clone() });
            cycle.yielded = Some(holder);
            return Ok(cycle);
        }
        match self.resume_repair(on_event).await? {
            Resumed::Nothing => {}
            Resumed::Repair(repair) => {
                cycle.repair = Some(*repair);
                return Ok(cycle);
            }
            Resumed::Awaiting(deployment) => {
                // A deployment whose process died is `immut resume`'s to finish or roll back:
                // its instances are neither drift nor orphans yet.
                on_event(&Event::WatchYielded { holder: deployment.clone() });
                cycle.yielded = Some(deployment);
                return Ok(cycle);
            }
        }
        let report = self.audit(&expected).await?;
        if let Some(holder) = self.holder().await? {
            // A deployment began while the fleet was read: what it launched is not drift.
            on_event(&Event::WatchYielded { holder: holder.clone() });
            cycle.yielded = Some(holder);
            return Ok(cycle);
        }
        let vanished = self.vanished(&report).await?;
        let rules = Rules {
            desired: self.deployer.desired(),
            unmanaged: self.settings.unmanaged,
            scope: self.settings.unmanaged_scope,
        };
        let now = crate::journal::now_ms();
        let seen = findings::classify(&report, &expected, &vanished, &rules, now);
        self.note(&expected, seen, &mut cycle, on_event).await?;
        on_event(&Event::WatchCycle { cycle: self.cycle, audited: report.findings.len(), open: self.open.len() });
        if self.breaker.is_open() {
            cycle.breaker_open = true;
            if !self.breaker.announced {
                self.breaker.announced = true;
                on_event(&Event::BreakerOpened { failures: self.breaker.failures(), reason: self.breaker.reason() });
            }
            return Ok(cycle);
        }
        self.repair(&expected, &report, &mut cycle, on_event).await?;
        cycle.breaker_open = self.breaker.is_open();
        Ok(cycle)
    }

    /// The ledger's current release of the service, or the one the watch was given. The
    /// first call also reads the open findings and the breaker back from the ledger.
    async fn expected(&mut self) -> Result<Release> {
        let Some(ledger) = self.deployer.ledger().cloned() else { return Ok(self.release.clone()) };
        let entries = blocking(move || ledger.entries()).await?;
        let service = self.service().to_owned();
        if !self.restored {
            self.restored = true;
            self.open = open_from_ledger(&service, &entries);
            self.breaker = Breaker::from_ledger(self.settings.breaker_threshold, &service, &entries);
        }
        let current = entries.into_iter().rev().find(|e| e.service == service && e.succeeded());
        Ok(current.map_or_else(|| self.release.clone(), |e| e.release))
    }

    /// The holder of the service's lease: between two cycles, never one of this watch's repairs.
    async fn holder(&self) -> Result<Option<DeploymentId>> {
        let journal = self.deployer.journal().cloned().expect("checked in build");
        let service = self.service().to_owned();
        blocking(move || journal.holder(&service)).await
    }

    /// Resumes a repair whose process died mid-way (the journal shows it began and never
    /// ended), before auditing anything; names another deployment that did.
    async fn resume_repair(&mut self, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<Resumed> {
        let journal = self.deployer.journal().cloned().expect("checked in build");
        let service = self.service().to_owned();
        let read = blocking(move || journal.read_last(&service)).await?;
        let Some(found) = crate::journal::interrupted(&read) else { return Ok(Resumed::Nothing) };
        if !is_watch(&found.deployment) {
            return Ok(Resumed::Awaiting(found.deployment));
        }
        let deployer = self.deployer.clone();
        let service = self.service().to_owned();
        let deployment = match blocking(move || deployer.resume(&service).map(Some)).await {
            Ok(Some(Some(d))) => d,
            Ok(_) => return Ok(Resumed::Nothing),
            Err(e) if e.kind() == ErrorKind::Conflict => return Ok(Resumed::Awaiting(found.deployment)),
            Err(e) => return Err(e),
        };
        let replacing = match &found.begin {
            crate::journal::JournalEntry::Begin { replacing, .. } => replacing.clone(),
            _ => Vec::new(),
        };
        let id = deployment.id().clone();
        on_event(&Event::RepairStarted { deployment: id.clone(), replacing: replacing.clone(), missing: 0 });
        let outcome = self.drive(deployment, on_event).await;
        self.settle(&outcome, on_event);
        Ok(Resumed::Repair(Box::new(Repair { deployment: id, replacing, missing: 0, outcome })))
    }

    async fn audit(&self, expected: &Release) -> Result<AuditReport> {
        let d = &self.deployer;
        let (provider, traffic, health) = (d.provider().clone(), d.traffic().clone(), d.health().clone());
        let journal = d.journal().cloned().expect("checked in build");
        let mut audit = Audit::new(&*provider, &*traffic).health(&*health).journal(&*journal);
        if let Some(key) = d.signing_key() {
            audit = audit.signing_key(key);
        }
        audit.run(expected).await
    }

    /// Serving targets the audit found unmanaged that the provider cannot describe at all:
    /// the instance is gone and its target stayed behind in the balancer.
    async fn vanished(&self, report: &AuditReport) -> Result<HashSet<InstanceId>> {
        let candidates: Vec<InstanceId> = report
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Unmanaged && f.serving && f.address.is_none())
            .map(|f| f.id.clone())
            .collect();
        if candidates.is_empty() {
            return Ok(HashSet::new());
        }
        let found = self.deployer.provider().describe(&Query::ids(candidates.clone()).with_unmanaged()).await?;
        let found: HashSet<InstanceId> = found.into_iter().map(|i| i.id).collect();
        Ok(candidates.into_iter().filter(|id| !found.contains(id)).collect())
    }

    /// Opens what is new and closes what is gone, in the events and the ledger; a finding
    /// that stays keeps the time it was first seen.
    async fn note(
        &mut self,
        expected: &Release,
        seen: Vec<WatchFinding>,
        cycle: &mut Cycle,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<()> {
        let mut now_open = BTreeMap::new();
        for mut f in seen {
            match self.open.get(&f.key) {
                Some(was) => f.since_ms = was.since_ms,
                None => cycle.opened.push(f.clone()),
            }
            now_open.insert(f.key.clone(), f);
        }
        cycle.closed = self.open.values().filter(|f| !now_open.contains_key(&f.key)).cloned().collect();
        let notes: Vec<WatchNote> = cycle
            .opened
            .iter()
            .map(|f| WatchNote::FindingOpened { finding: f.clone() })
            .chain(cycle.closed.iter().map(|f| WatchNote::FindingClosed { finding: f.clone() }))
            .collect();
        if let Some(ledger) = self.deployer.ledger().cloned()
            && !notes.is_empty()
        {
            let (id, release) = (self.id.clone(), expected.clone());
            record_notes(ledger, id, release, notes).await?;
        }
        for f in &cycle.opened {
            on_event(&Event::FindingOpened { finding: f.clone() });
        }
        for f in &cycle.closed {
            on_event(&Event::FindingClosed { finding: f.clone() });
        }
        self.open = now_open;
        let (now, wall) = (Instant::now(), crate::journal::now_ms());
        self.first_seen.retain(|k, _| self.open.contains_key(k));
        for f in self.open.values() {
            // A finding read back from the ledger was seen before this process started.
            let before = Duration::from_millis(wall.saturating_sub(f.since_ms));
            self.first_seen.entry(f.key.clone()).or_insert_with(|| now.checked_sub(before).unwrap_or(now));
        }
        cycle.findings = self.open.values().cloned().collect();
        Ok(())
    }

    async fn repair(
        &mut self,
        expected: &Release,
        report: &AuditReport,
        cycle: &mut Cycle,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<()> {
        let desired = self.deployer.desired();
        let missing = desired.saturating_sub(findings::present(report, expected));
        let grace = self.settings.grace;
        let past_grace = |f: &WatchFinding| self.first_seen.get(&f.key).is_none_or(|at| at.elapsed() >= grace);
        let mut replace: Vec<&WatchFinding> = self
            .open
            .values()
            .filter(|f| f.action == FindingAction::Replace && f.instance.is_some())
            .filter(|f| f.kind != "unhealthy" || past_grace(f))
            .collect();
        replace.sort_by_key(|f| (findings::priority(&f.kind), f.since_ms, f.key.clone()));
        let room = self.settings.max_repairs.saturating_sub(missing);
        let replacing: Vec<InstanceId> = replace.iter().take(room).filter_map(|f| f.instance.clone()).collect();
        let vanished: Vec<InstanceId> =
            self.open.values().filter(|f| f.kind == "vanished").filter_map(|f| f.instance.clone()).collect();
        let terminate = self.unmanaged_to_terminate(expected, report);
        if replacing.is_empty() && missing == 0 && vanished.is_empty() && terminate.is_empty() {
            return Ok(());
        }
        let id = new_watch_id();
        if !vanished.is_empty() || !terminate.is_empty() {
            match self.remove(&id, &vanished, &terminate, on_event).await? {
                Some(holder) => {
                    on_event(&Event::WatchYielded { holder: holder.clone() });
                    cycle.yielded = Some(holder);
                    return Ok(());
                }
                None => cycle.removed = vanished.into_iter().chain(terminate).collect(),
            }
        }
        if replacing.is_empty() && missing == 0 {
            return Ok(());
        }
        // An instance of the release that is unhealthy within its grace period would be kept,
        // and the repair would wait on it: it is either healthy again or replaced next cycle.
        let in_grace = self.open.values().filter(|f| f.kind == "unhealthy" && !past_grace(f)).count();
        if in_grace > 0 {
            tracing::info!(in_grace, "repair deferred: instances are unhealthy within their grace period");
            return Ok(());
        }
        on_event(&Event::RepairStarted { deployment: id.clone(), replacing: replacing.clone(), missing });
        let deployment = self.deployer.deploy(expected.clone()).with_id(id.clone()).replacing(replacing.clone());
        let outcome = self.drive(deployment, on_event).await;
        if matches!(outcome.phase, Phase::Refused { .. })
            && outcome.steps == 0
            && let Some(holder) = self.holder().await?
        {
            // Another deployment took the lease between the check and the repair: it goes first.
            on_event(&Event::WatchYielded { holder: holder.clone() });
            cycle.yielded = Some(holder);
            return Ok(());
        }
        self.settle(&outcome, on_event);
        cycle.repair = Some(Repair { deployment: id, replacing, missing, outcome });
        Ok(())
    }

    /// Unmanaged instances to terminate outright: only while the serving release's own
    /// healthy serving instances hold the floor without them.
    fn unmanaged_to_terminate(&self, expected: &Release, report: &AuditReport) -> Vec<InstanceId> {
        let ids: Vec<InstanceId> = self
            .open
            .values()
            .filter(|f| f.kind == "unmanaged" && f.action == FindingAction::Remove)
            .filter_map(|f| f.instance.clone())
            .take(self.settings.max_repairs)
            .collect();
        if ids.is_empty() {
            return ids;
        }
        let floor = self.deployer.strategy().limits(self.deployer.desired()).floor;
        let holding = report
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Ok && f.serving && f.release.as_ref() == Some(expected.id()))
            .count();
        if holding < floor {
            tracing::info!(holding, floor, "unmanaged instances kept: the release alone does not hold the floor");
            return Vec::new();
        }
        ids
    }

    /// Takes the lease under the repair's id, detaches vanished targets (they serve nobody)
    /// and detaches, then terminates, the unmanaged instances to terminate. Returns the holder
    /// when another deployment holds the lease.
    async fn remove(
        &self,
        id: &DeploymentId,
        vanished: &[InstanceId],
        terminate: &[InstanceId],
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Option<DeploymentId>> {
        let journal = self.deployer.journal().cloned().expect("checked in build");
        let (service, lock_id) = (self.service().to_owned(), id.clone());
        let guard = match blocking(move || journal.lock(&service, &lock_id)).await {
            Ok(guard) => guard,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return Ok(Some(self.holder().await?.unwrap_or_else(|| DeploymentId::new("unknown"))));
            }
            Err(e) => return Err(e),
        };
        let (traffic, provider) = (self.deployer.traffic().clone(), self.deployer.provider().clone());
        let done = async {
            if !vanished.is_empty() {
                traffic.detach(vanished).await?;
                on_event(&Event::Removed {
                    ids: vanished.to_vec(),
                    reason: "traffic targets that no instance answers for".to_owned(),
                });
            }
            if !terminate.is_empty() {
                traffic.detach(terminate).await?;
                provider.terminate_all(terminate).await?;
                on_event(&Event::Removed {
                    ids: terminate.to_vec(),
                    reason: "unmanaged instances, terminated as the watch's settings ask".to_owned(),
                });
            }
            Ok::<_, Error>(())
        }
        .await;
        // Releasing the lease writes to the store: off the async threads.
        blocking(move || {
            drop(guard);
            Ok(())
        })
        .await?;
        done.map(|()| None)
    }

    /// Runs a repair to its end, handing its events on; the watch's cancel handle cancels it.
    async fn drive(&self, deployment: crate::Deployment, on_event: &mut (dyn FnMut(&Event) + Send)) -> Outcome {
        let (stop, cancel) = (self.cancel.clone(), deployment.cancel_handle());
        let link = tokio::spawn(async move {
            stop.cancelled().await;
            cancel.cancel();
        });
        let outcome = deployment.run_with(|e| on_event(e)).await;
        link.abort();
        outcome
    }

    /// Counts a repair's end on the breaker and reports it.
    fn settle(&mut self, outcome: &Outcome, on_event: &mut (dyn FnMut(&Event) + Send)) {
        let succeeded = outcome.succeeded();
        on_event(&Event::RepairFinished {
            deployment: outcome.deployment.clone(),
            succeeded,
            summary: outcome.summary(),
        });
        if succeeded {
            self.breaker.succeeded();
        } else if breaker::counts_as_failure(&outcome.phase) {
            self.breaker.failed(breaker::phase_reason(&outcome.phase));
            if self.breaker.is_open() && !self.breaker.announced {
                self.breaker.announced = true;
                on_event(&Event::BreakerOpened { failures: self.breaker.failures(), reason: self.breaker.reason() });
            }
        }
    }
}

/// What an interrupted deployment in the journal means for a cycle.
enum Resumed {
    /// None is interrupted.
    Nothing,
    /// A repair was, and was resumed to its end.
    Repair(Box<Repair>),
    /// Another deployment was (or its resume holds the lease): the cycle yields to it.
    Awaiting(DeploymentId),
}

async fn record_notes(ledger: Arc<Ledger>, id: DeploymentId, release: Release, notes: Vec<WatchNote>) -> Result<()> {
    blocking(move || {
        for note in notes {
            ledger.record_watch(&id, &release, note)?;
        }
        Ok(())
    })
    .await
}

/// The findings of `service` the ledger shows opened and not closed, by key.
fn open_from_ledger(service: &str, entries: &[LedgerEntry]) -> BTreeMap<String, WatchFinding> {
    let mut open = BTreeMap::new();
    for e in entries.iter().filter(|e| e.service == service) {
        match &e.watch {
            Some(WatchNote::FindingOpened { finding }) => {
                open.insert(finding.key.clone(), finding.clone());
            }
            Some(WatchNote::FindingClosed { finding }) => {
                open.remove(&finding.key);
            }
            None => {}
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_ids_are_recognised() {
        assert!(is_watch(&new_watch_id()));
        assert!(!is_watch(&DeploymentId::new("d0123")));
    }
}
