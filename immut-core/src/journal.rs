//! The write-ahead journal and the per-service lease.
//!
//! The engine appends a record before every mutation (the intent, with its launch token) and
//! after it (the result), plus the start, the rollback and the end of each deployment.
//! [`Deployer::resume`](crate::Deployer::resume) reads it back to continue, or roll back, a
//! deployment whose process died, from any machine that reaches the same state.
//!
//! [`StoreJournal`] keeps it on a [`StateStore`]: the local
//! filesystem by default ([`FileJournal`] is the same journal on a directory), S3, GCS or
//! Azure Blob by URL. Each record is its own object, `journal/<service>/<n>.json`, written
//! create-only, so two writers can never both append record `n`; each carries its writer id,
//! a nonce and the lease epoch it was written under. A record that cannot be read, or a gap in
//! the numbers, is an error naming the object and its position, never "nothing": a store write
//! is atomic, so no torn write can explain it.
//!
//! The lock is a lease per service ([`crate::state::lease`]): a second concurrent deployment
//! of the service fails at once, naming the deployment that holds it; a holder that lost its
//! lease (paused past its expiry) stops before its next mutation. [`MemoryJournal`] keeps the
//! same contract in memory, with an in-process lock, for tests and the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeploymentId, InstanceId, LaunchToken, Release, ReleaseId};
use crate::outcome::Outcome;
use crate::state::lease::{self, Lease, LeaseSettings, ReleaseOnDrop};
use crate::state::{Created, StateStore, check_service, corrupt, nonce, seq_key};
use crate::strategy::Decision;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The deployment it belongs to.
    pub deployment: DeploymentId,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub entry: JournalEntry,
}

/// What a journal record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalEntry {
    /// A deployment began, after its first observation.
    Begin {
        /// The release being deployed.
        release: Box<Release>,
        /// The previous release, when the deployer was given it.
        previous_release: Option<Box<Release>>,
        /// The release that served at the start.
        previous: Option<ReleaseId>,
        /// How many of its instances served.
        previous_count: usize,
        /// Live instances at the start.
        initial_total: usize,
        /// Desired count.
        desired: usize,
        /// Strategy name.
        strategy: String,
        /// Instances the deployment replaces whatever their release (reconcile).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replacing: Vec<InstanceId>,
        /// Whether the deployment may terminate a release that can no longer be launched.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accept_no_way_back: bool,
    },
    /// About to act.
    Intent {
        /// Engine step.
        step: u64,
        /// The decision being carried out.
        decision: Decision,
        /// For a launch: what is launched under which token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        launch: Option<LaunchIntent>,
    },
    /// The action of `step` completed.
    Applied {
        /// Engine step.
        step: u64,
        /// For a launch: its token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<LaunchToken>,
        /// Instances it produced (launches).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<InstanceId>,
    },
    /// The action of `step` failed.
    Failed {
        /// Engine step.
        step: u64,
        /// For a launch: its token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<LaunchToken>,
        /// The error.
        error: String,
    },
    /// A gate passed.
    GatePassed {
        /// Gate name.
        gate: String,
    },
    /// An analysis measurement was taken: a resumed deployment continues the same run.
    Measured(crate::analysis::Measurement),
    /// The engine started rolling back.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// What the engine observed, journaled at the first step and then only when a count or a
    /// limit changed: the record a picture of the run is drawn from (it plots these, never a
    /// curve inferred from the actions). Resume ignores it.
    Observed(Observed),
    /// The deployment ended.
    End {
        /// How.
        outcome: Box<Outcome>,
    },
}

/// The fleet as one engine step observed it, and the limits it was held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    /// Engine step.
    pub step: u64,
    /// Serving and healthy instances, any release.
    pub serving_healthy: usize,
    /// Serving instances, any release.
    pub serving: usize,
    /// Live instances, any release.
    pub total: usize,
    /// The healthy floor in force (it changes when a rollback begins).
    pub floor: usize,
    /// The surge ceiling in force.
    pub ceiling: usize,
    /// Whether the deployment was rolling back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling_back: bool,
}

/// A launch about to happen: enough to finish it after a crash, adopting what already exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchIntent {
    /// Wave number.
    pub wave: u32,
    /// Launch token.
    pub token: LaunchToken,
    /// How many instances.
    pub count: usize,
    /// Whether it relaunches the previous release during a rollback.
    pub rollback: bool,
}

/// A journal read back: the records in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalRead {
    /// Records in order.
    pub records: Vec<JournalRecord>,
    /// Records that were skipped as a torn last write (position, from 1, and the reason). A
    /// journal whose writes are atomic, as [`StoreJournal`]'s are, never reports any: for it an
    /// unreadable record is an error.
    pub torn: Vec<(usize, String)>,
}

/// Holds a service's deployment lock until dropped. A lock on a state store is a lease: the
/// guard then confirms it ([`LockGuard::lease`]) and releases it when dropped.
#[derive(Debug)]
pub struct LockGuard {
    _hold: Box<dyn Debug + Send + Sync>,
    lease: Option<Lease>,
}

impl LockGuard {
    /// A guard around anything that releases the lock on drop: a lock that cannot be lost
    /// while its process lives (an in-process lock).
    pub fn new(inner: impl Debug + Send + Sync + 'static) -> Self {
        LockGuard { _hold: Box::new(inner), lease: None }
    }

    /// A guard that holds `lease` and releases it when dropped.
    pub fn leased(lease: Lease) -> Self {
        LockGuard { _hold: Box::new(ReleaseOnDrop(lease.clone())), lease: Some(lease) }
    }

    /// The lease this guard holds, when the lock is one.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }
}

/// What a journal recorded of some deployments' launches, for the audit's cross-check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Of the deployments asked about, those whose `Begin` record the journal holds.
    pub deployments: BTreeSet<DeploymentId>,
    /// Every instance id recorded under each launch token (launched or adopted), of those
    /// deployments.
    pub launched: BTreeMap<LaunchToken, BTreeSet<InstanceId>>,
}

impl Recorded {
    /// What `records` say of `deployments`.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a JournalRecord>,
        deployments: &BTreeSet<DeploymentId>,
    ) -> Recorded {
        let mut found = Recorded::default();
        for r in records.into_iter().filter(|r| deployments.contains(&r.deployment)) {
            match &r.entry {
                JournalEntry::Begin { .. } => {
                    found.deployments.insert(r.deployment.clone());
                }
                JournalEntry::Applied { token: Some(token), ids, .. } => {
                    found.launched.entry(token.clone()).or_default().extend(ids.iter().cloned());
                }
                _ => {}
            }
        }
        found
    }
}

/// Where the engine writes ahead.
///
/// The methods may block (a file journal fsyncs every record): the engine calls them on
/// tokio's blocking pool, never on an async worker thread.
pub trait Journal: Send + Sync + Debug {
    /// Appends a record durably.
    fn append(&self, service: &str, record: &JournalRecord) -> Result<()>;
    /// Reads a service's records back.
    fn read(&self, service: &str) -> Result<JournalRead>;
    /// Takes the service's deployment lock, or fails with [`ErrorKind::Conflict`] naming the
    /// deployment that holds it.
    fn lock(&self, service: &str, deployment: &DeploymentId) -> Result<LockGuard>;
    /// The deployment that holds the service's lock and is still running, if any. The audit
    /// decides "orphaned" from this answer, so a journal must never say `None` while a
    /// deployment it locked may still be running.
    fn holder(&self, service: &str) -> Result<Option<DeploymentId>>;

    /// The records from the service's last `Begin` on: all that [`interrupted`] and
    /// [`Deployer::resume`](crate::Deployer::resume) need. The default reads everything.
    fn read_last(&self, service: &str) -> Result<JournalRead> {
        let mut read = self.read(service)?;
        if let Some(at) = read.records.iter().rposition(|r| matches!(r.entry, JournalEntry::Begin { .. })) {
            read.records.drain(..at);
        }
        Ok(read)
    }

    /// What the journal recorded of `deployments`' launches: the audit's cross-check of
    /// provenance against the record. The default reads everything.
    fn recorded(&self, service: &str, deployments: &BTreeSet<DeploymentId>) -> Result<Recorded> {
        Ok(Recorded::from_records(&self.read(service)?.records, deployments))
    }
}

/// What [`interrupted`] finds of a deployment that began and never ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// Deployment id.
    pub deployment: DeploymentId,
    /// The `Begin` record's contents.
    pub begin: JournalEntry,
    /// Set when the deployment was rolling back.
    pub rolling_back: Option<String>,
    /// The highest launch wave journaled.
    pub waves: u32,
    /// Gates passed.
    pub passed_gates: BTreeSet<String>,
    /// A launch whose intent was journaled but whose result was not.
    pub pending_launch: Option<LaunchIntent>,
    /// Every completed launch: its intent and the ids it returned. A resumed deployment counts
    /// them from this record until describe shows them (read-your-writes survives a crash).
    pub launched: Vec<(LaunchIntent, Vec<InstanceId>)>,
    /// Every id a terminate intent named, so that their absence is not read as a failure.
    pub terminated: Vec<InstanceId>,
    /// The analysis measurements taken, in order.
    pub measurements: Vec<crate::analysis::Measurement>,
}

/// The last deployment in the records that began and did not end.
pub fn interrupted(read: &JournalRead) -> Option<Interrupted> {
    let last_begin = read.records.iter().rposition(|r| matches!(r.entry, JournalEntry::Begin { .. }))?;
    let deployment = read.records[last_begin].deployment.clone();
    let mine: Vec<&JournalRecord> = read.records[last_begin..].iter().filter(|r| r.deployment == deployment).collect();
    if mine.iter().any(|r| matches!(r.entry, JournalEntry::End { .. })) {
        return None;
    }
    let mut found = Interrupted {
        deployment,
        begin: mine[0].entry.clone(),
        rolling_back: None,
        waves: 0,
        passed_gates: BTreeSet::new(),
        pending_launch: None,
        launched: Vec::new(),
        terminated: Vec::new(),
        measurements: Vec::new(),
    };
    let mut open: HashMap<(u64, Option<LaunchToken>), Option<LaunchIntent>> = HashMap::new();
    for r in &mine[1..] {
        match &r.entry {
            JournalEntry::Intent { step, launch, decision } => {
                if let Decision::Terminate { ids } = decision {
                    found.terminated.extend(ids.iter().cloned());
                }
                if let Some(l) = launch {
                    found.waves = found.waves.max(l.wave);
                }
                open.insert((*step, launch.as_ref().map(|l| l.token.clone())), launch.clone());
            }
            JournalEntry::Applied { step, token, ids } => {
                if let Some(Some(intent)) = open.remove(&(*step, token.clone())) {
                    found.launched.push((intent, ids.clone()));
                }
            }
            JournalEntry::Failed { step, token, .. } => {
                open.remove(&(*step, token.clone()));
            }
            JournalEntry::GatePassed { gate } => {
                found.passed_gates.insert(gate.clone());
            }
            JournalEntry::RollingBack { reason } => found.rolling_back = Some(reason.clone()),
            JournalEntry::Measured(m) => found.measurements.push(m.clone()),
            JournalEntry::Begin { .. } | JournalEntry::End { .. } | JournalEntry::Observed(_) => {}
        }
    }
    found.pending_launch = open.into_values().flatten().max_by_key(|l| l.wave);
    Some(found)
}

/// The journal on a [`StateStore`]: one create-only object per record, and a lease per
/// service as its lock. Cheap to clone; clones share what they have read.
#[derive(Debug, Clone)]
pub struct StoreJournal {
    store: StateStore,
    lease: LeaseSettings,
    cache: Arc<Mutex<HashMap<String, ServiceCache>>>,
}

/// The journal on the local filesystem: a [`StoreJournal`] on a directory.
pub type FileJournal = StoreJournal;

#[derive(Debug, Default)]
struct ServiceCache {
    /// The next record number to try, once known.
    next: Option<u64>,
    /// Records read or written (objects are never rewritten, so they stay valid).
    records: BTreeMap<u64, Stored>,
    /// The lease this journal took for the service, if any.
    lease: Option<Lease>,
}

/// A journal record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    writer: String,
    nonce: String,
    seq: u64,
    /// The lease epoch it was written under (0: without a lease).
    epoch: u64,
    record: JournalRecord,
}

impl StoreJournal {
    /// The journal in the directory `dir` on this machine (created if missing); fails with
    /// `InvalidInput` naming `journal_dir` when it cannot be written.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let store = StateStore::local(&dir)
            .map_err(|e| Error::invalid("journal_dir", e.message().strip_prefix("state: ").unwrap_or(e.message())))?;
        Ok(StoreJournal::new(store))
    }

    /// The journal on `store`, with the default [`LeaseSettings`].
    pub fn new(store: StateStore) -> Self {
        StoreJournal { store, lease: LeaseSettings::default(), cache: Arc::default() }
    }

    /// Uses these lease settings for the locks it takes. Fails when they are inconsistent.
    pub fn with_lease(mut self, settings: LeaseSettings) -> Result<Self> {
        settings.validate()?;
        self.lease = settings;
        Ok(self)
    }

    /// The store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The lease settings.
    pub fn lease_settings(&self) -> LeaseSettings {
        self.lease
    }

    /// The key of record `seq` of `service`.
    pub fn record_key(service: &str, seq: u64) -> String {
        format!("journal/{service}/{}.json", seq_key(seq))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, ServiceCache>> {
        self.cache.lock().expect("journal cache poisoned")
    }

    /// The record numbers on the store, checked to run 0, 1, 2, … with no gap.
    fn numbers(&self, service: &str) -> Result<u64> {
        let prefix = format!("journal/{service}");
        let keys = self.store.block(move |s| async move { s.list(&prefix).await })?;
        let mut expected = 0u64;
        for key in &keys {
            let name = key.rsplit('/').next().unwrap_or_default();
            let seq: u64 = name
                .strip_suffix(".json")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| corrupt(&self.store, key, "not a journal record's name"))?;
            if seq != expected {
                return Err(corrupt(
                    &self.store,
                    &Self::record_key(service, expected),
                    format!("record {expected} of service {service} is missing while record {seq} exists"),
                ));
            }
            expected += 1;
        }
        Ok(expected)
    }

    /// Records `from..to` of `service`, from the cache or the store.
    fn fetch(&self, service: &str, from: u64, to: u64) -> Result<Vec<Stored>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let missing: Vec<u64> = {
            let cache = self.cache();
            let known = cache.get(service).map(|c| &c.records);
            (from..to).filter(|n| known.is_none_or(|k| !k.contains_key(n))).collect()
        };
        if !missing.is_empty() {
            let keys: Vec<String> = missing.iter().map(|n| Self::record_key(service, *n)).collect();
            let fetched = self.store.block(move |s| async move { s.get_many(keys).await })?;
            let mut parsed = Vec::with_capacity(fetched.len());
            for ((key, bytes), seq) in fetched.into_iter().zip(&missing) {
                let bytes = bytes
                    .ok_or_else(|| corrupt(&self.store, &key, format!("record {seq} vanished while it was read")))?;
                let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    corrupt(
                        &self.store,
                        &key,
                        format!("record {seq} of service {service} is not a journal record: {e}"),
                    )
                })?;
                if stored.seq != *seq {
                    return Err(corrupt(&self.store, &key, format!("record {seq} says it is record {}", stored.seq)));
                }
                parsed.push(stored);
            }
            let mut cache = self.cache();
            let c = cache.entry(service.to_owned()).or_default();
            for stored in parsed {
                c.records.insert(stored.seq, stored);
            }
        }
        let cache = self.cache();
        let records = &cache.get(service).expect("cached above or empty range").records;
        Ok((from..to).filter_map(|n| records.get(&n).cloned()).collect())
    }

    /// The objects as stored, with writer, nonce and epoch: for tools and tests.
    pub fn stored(&self, service: &str) -> Result<Vec<serde_json::Value>> {
        check_service(service)?;
        let n = self.numbers(service)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self.fetch(service, 0, n)?.into_iter().map(|s| serde_json::to_value(s).expect("serializes")).collect())
    }
}

impl Journal for StoreJournal {
    fn append(&self, service: &str, record: &JournalRecord) -> Result<()> {
        check_service(service)?;
        let (lease, next) = {
            let cache = self.cache();
            let c = cache.get(service);
            (c.and_then(|c| c.lease.clone()), c.and_then(|c| c.next))
        };
        if let Some(e) = lease.as_ref().and_then(Lease::lost_err) {
            return Err(e);
        }
        let epoch = lease.as_ref().map_or(0, Lease::epoch);
        let mut next = match next {
            Some(n) => n,
            None => self.numbers(service)?,
        };
        loop {
            let stored = Stored {
                writer: self.store.writer().to_owned(),
                nonce: nonce(),
                seq: next,
                epoch,
                record: record.clone(),
            };
            let bytes = serde_json::to_vec(&stored).expect("journal records serialize");
            let (key, nonce) = (Self::record_key(service, next), stored.nonce.clone());
            let created = self.store.block(move |s| async move { s.create(&key, bytes, &nonce).await })?;
            match created {
                Created::Mine => {
                    let mut cache = self.cache();
                    let c = cache.entry(service.to_owned()).or_default();
                    c.next = Some(next + 1);
                    c.records.insert(next, stored);
                    return Ok(());
                }
                Created::Theirs(bytes) => {
                    let key = Self::record_key(service, next);
                    let theirs: Stored = serde_json::from_slice(&bytes)
                        .map_err(|e| corrupt(&self.store, &key, format!("not a journal record: {e}")))?;
                    self.cache().entry(service.to_owned()).or_default().records.insert(next, theirs.clone());
                    if theirs.epoch < epoch {
                        // A late write of a deployer fenced out by this epoch: step over it.
                        tracing::warn!(%key, epoch = theirs.epoch, "a fenced writer's late record; appending after it");
                        next += 1;
                        continue;
                    }
                    if let Some(lease) = &lease
                        && let Err(e) = lease.confirm_blocking()
                    {
                        return Err(e);
                    }
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "journal of service {service}: record {next} was appended by writer {} under lease epoch {} while this writer (epoch {epoch}) appended; only the lease holder may append",
                            theirs.writer, theirs.epoch
                        ),
                    ));
                }
            }
        }
    }

    fn read(&self, service: &str) -> Result<JournalRead> {
        check_service(service)?;
        let n = self.numbers(service)?;
        {
            let mut cache = self.cache();
            let c = cache.entry(service.to_owned()).or_default();
            c.next = Some(c.next.map_or(n, |k| k.max(n)));
        }
        let records = if n == 0 { Vec::new() } else { self.fetch(service, 0, n)? };
        Ok(JournalRead { records: records.into_iter().map(|s| s.record).collect(), torn: Vec::new() })
    }

    fn read_last(&self, service: &str) -> Result<JournalRead> {
        check_service(service)?;
        let n = self.numbers(service)?;
        {
            let mut cache = self.cache();
            let c = cache.entry(service.to_owned()).or_default();
            c.next = Some(c.next.map_or(n, |k| k.max(n)));
        }
        // Walk back from the end, 16 records at a time, to the last Begin.
        let mut from = n;
        let mut records: Vec<JournalRecord> = Vec::new();
        while from > 0 {
            let start = from.saturating_sub(16);
            let mut chunk: Vec<JournalRecord> =
                self.fetch(service, start, from)?.into_iter().map(|s| s.record).collect();
            let begin = chunk.iter().rposition(|r| matches!(r.entry, JournalEntry::Begin { .. }));
            chunk.append(&mut records);
            records = chunk;
            if let Some(at) = begin {
                records.drain(..at);
                break;
            }
            from = start;
        }
        Ok(JournalRead { records, torn: Vec::new() })
    }

    fn recorded(&self, service: &str, deployments: &BTreeSet<DeploymentId>) -> Result<Recorded> {
        check_service(service)?;
        let n = self.numbers(service)?;
        // Walk back until every deployment's Begin is seen, or the start.
        let mut from = n;
        let mut records: Vec<JournalRecord> = Vec::new();
        let mut begun: BTreeSet<DeploymentId> = BTreeSet::new();
        while from > 0 && !deployments.iter().all(|d| begun.contains(d)) {
            let start = from.saturating_sub(32);
            let chunk: Vec<JournalRecord> = self.fetch(service, start, from)?.into_iter().map(|s| s.record).collect();
            for r in &chunk {
                if matches!(r.entry, JournalEntry::Begin { .. }) {
                    begun.insert(r.deployment.clone());
                }
            }
            records.extend(chunk);
            from = start;
        }
        Ok(Recorded::from_records(&records, deployments))
    }

    fn lock(&self, service: &str, deployment: &DeploymentId) -> Result<LockGuard> {
        let lease = lease::acquire(&self.store, service, deployment, self.lease)?;
        self.cache().entry(service.to_owned()).or_default().lease = Some(lease.clone());
        Ok(LockGuard::leased(lease))
    }

    fn holder(&self, service: &str) -> Result<Option<DeploymentId>> {
        Ok(lease::holder(&self.store, service, self.lease.clock_skew)?.map(|s| s.lease.deployment))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A journal in memory, for tests and the simulator. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    records: Arc<Mutex<HashMap<String, Vec<JournalRecord>>>>,
    locks: Arc<Mutex<HashMap<String, DeploymentId>>>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        MemoryJournal::default()
    }

    /// Drops the locks, as a crash of their holders would.
    pub fn clear_locks(&self) {
        self.locks.lock().expect("poisoned").clear();
    }
}

impl Journal for MemoryJournal {
    fn append(&self, service: &str, record: &JournalRecord) -> Result<()> {
        self.records.lock().expect("poisoned").entry(service.to_owned()).or_default().push(record.clone());
        Ok(())
    }

    fn read(&self, service: &str) -> Result<JournalRead> {
        let records = self.records.lock().expect("poisoned").get(service).cloned().unwrap_or_default();
        Ok(JournalRead { records, torn: Vec::new() })
    }

    fn lock(&self, service: &str, deployment: &DeploymentId) -> Result<LockGuard> {
        let mut locks = self.locks.lock().expect("poisoned");
        if let Some(holder) = locks.get(service) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "service {service} is being deployed by deployment {holder}; wait for it to finish, or cancel it"
                ),
            ));
        }
        locks.insert(service.to_owned(), deployment.clone());
        Ok(LockGuard::new(MemoryLock { locks: self.locks.clone(), service: service.to_owned() }))
    }

    fn holder(&self, service: &str) -> Result<Option<DeploymentId>> {
        Ok(self.locks.lock().expect("poisoned").get(service).cloned())
    }
}

#[derive(Debug)]
struct MemoryLock {
    locks: Arc<Mutex<HashMap<String, DeploymentId>>>,
    service: String,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.locks.lock().expect("poisoned").remove(&self.service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_round_trips_and_resume_reads_past_it() {
        let observed = JournalEntry::Observed(Observed {
            step: 3,
            serving_healthy: 2,
            serving: 3,
            total: 5,
            floor: 2,
            ceiling: 6,
            rolling_back: false,
        });
        let record = JournalRecord { deployment: DeploymentId::new("d1"), at_ms: 7, entry: observed };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["kind"], "observed");
        assert_eq!(json["serving_healthy"], 2);
        assert!(json.get("rolling_back").is_none(), "false is left out: {json}");
        assert_eq!(serde_json::from_value::<JournalRecord>(json).unwrap(), record);
        let base = crate::model::BaselineSpec::new("b", semver::Version::new(1, 0, 0), Default::default());
        let artifact = crate::model::ArtifactSpec::new("web", semver::Version::new(2, 0, 0), "img-2");
        let begin = JournalEntry::Begin {
            release: Box::new(Release::new("web", &artifact, &base).unwrap()),
            previous_release: None,
            previous: None,
            previous_count: 0,
            initial_total: 0,
            desired: 5,
            strategy: "rolling".into(),
            replacing: Vec::new(),
            accept_no_way_back: false,
        };
        let at = |at_ms, entry| JournalRecord { deployment: DeploymentId::new("d1"), at_ms, entry };
        let read = JournalRead {
            records: vec![at(0, begin), record.clone(), at(9, JournalEntry::GatePassed { gate: "bake".into() })],
            torn: Vec::new(),
        };
        let found = interrupted(&read).expect("begun and not ended");
        assert_eq!(found.passed_gates.len(), 1, "records after the observation are read");
        assert!(found.launched.is_empty() && found.pending_launch.is_none() && found.rolling_back.is_none());
        let mut ended = read.records.clone();
        ended.push(at(10, record.entry.clone()));
        assert!(interrupted(&JournalRead { records: ended, torn: Vec::new() }).is_some(), "an observation is no end");
    }
}
