//! The write-ahead journal and the per-service deployment lock.
//!
//! The engine appends a record before every mutation (the intent, with its launch token) and
//! after it (the result), plus the start, the rollback and the end of each deployment.
//! [`Deployer::resume`](crate::Deployer::resume) reads it back to continue, or roll back, a
//! deployment whose process died. [`FileJournal`] keeps one JSON-lines file per service and
//! fsyncs every record; a torn last line (a crash mid-write) is reported, never fatal.
//!
//! The lock makes a second concurrent deployment of the same service fail at once, naming the
//! deployment that holds it. A lock left by a dead process is detected (pid and start time) and
//! taken over safely.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeploymentId, InstanceId, LaunchToken, Release, ReleaseId};
use crate::outcome::Outcome;
use crate::process;
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
    /// The engine started rolling back.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// The deployment ended.
    End {
        /// How.
        outcome: Box<Outcome>,
    },
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

/// A journal read back: the records, and the torn last line if a crash cut one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalRead {
    /// Records in order.
    pub records: Vec<JournalRecord>,
    /// Lines that did not parse (line number, from 1, and the reason). A torn last line is the
    /// mark of a crash mid-write; it is skipped.
    pub torn: Vec<(usize, String)>,
}

/// Holds a service's deployment lock until dropped.
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] Box<dyn Debug + Send + Sync>);

impl LockGuard {
    /// A guard around anything that releases the lock on drop.
    pub fn new(inner: impl Debug + Send + Sync + 'static) -> Self {
        LockGuard(Box::new(inner))
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
            JournalEntry::Begin { .. } | JournalEntry::End { .. } => {}
        }
    }
    found.pending_launch = open.into_values().flatten().max_by_key(|l| l.wave);
    Some(found)
}

/// One JSON-lines file per service in a directory, fsynced on every record, with lock files.
#[derive(Debug, Clone)]
pub struct FileJournal {
    dir: PathBuf,
    write: Arc<Mutex<()>>,
}

impl FileJournal {
    /// Opens (creating) the journal directory; fails with `InvalidInput` naming `journal_dir`
    /// when it cannot be written.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("journal_dir", &dir, e))?;
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(|e| io_error("journal_dir", &dir, e))?;
        let _ = std::fs::remove_file(probe);
        Ok(FileJournal { dir, write: Arc::default() })
    }

    /// The journal file of a service.
    pub fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.journal.jsonl"))
    }

    fn lock_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.lock"))
    }
}

fn io_error(field: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{field}: cannot write {}: {e}; pass a writable directory", path.display()),
    )
}

impl Journal for FileJournal {
    fn append(&self, service: &str, record: &JournalRecord) -> Result<()> {
        let _serial = self.write.lock().expect("journal lock poisoned");
        let path = self.path(service);
        let mut line = serde_json::to_vec(record).expect("journal records serialize");
        line.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(&path)?;
            // After a torn write the file ends mid-line: start this record on a line of its own.
            let len = file.metadata()?.len();
            if len > 0 {
                use std::io::{Read, Seek, SeekFrom};
                let mut last = [0u8; 1];
                file.seek(SeekFrom::Start(len - 1))?;
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n")?;
                }
            }
            file.write_all(&line)?;
            file.sync_data()
        };
        write().map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("cannot append to the journal {}: {e}", path.display()))
        })
    }

    fn read(&self, service: &str) -> Result<JournalRead> {
        let path = self.path(service);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalRead::default()),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot read the journal {}: {e}", path.display()),
                ));
            }
        };
        let mut read = JournalRead::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(record) => read.records.push(record),
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping a torn journal line");
                    read.torn.push((i + 1, e.to_string()));
                }
            }
        }
        Ok(read)
    }

    fn lock(&self, service: &str, deployment: &DeploymentId) -> Result<LockGuard> {
        let path = self.lock_path(service);
        let (pid, start_ticks) = process::current();
        let mine = LockInfo { deployment: deployment.clone(), pid, start_ticks, acquired_at_ms: now_ms() };
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(&serde_json::to_vec(&mine).expect("serializes"))
                        .and_then(|_| file.sync_all())
                        .map_err(|e| io_error("journal_dir", &path, e))?;
                    return Ok(LockGuard::new(FileLock { path, deployment: deployment.clone() }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = read_lock(&path);
                    if let Some(h) = holder.as_ref().filter(|h| process::is_alive(h.pid, h.start_ticks)) {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "service {service} is being deployed by deployment {} (pid {}); wait for it to finish, or cancel it",
                                h.deployment, h.pid
                            ),
                        ));
                    }
                    take_over(&path, holder.as_ref())?;
                }
                Err(e) => return Err(io_error("journal_dir", &path, e)),
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("another process took the lock {} while this one took it over", path.display()),
        ))
    }

    fn holder(&self, service: &str) -> Result<Option<DeploymentId>> {
        self.live_holder(service)
    }
}

impl FileJournal {
    /// The live holder recorded in a lock file: its process still runs (same pid and start
    /// time). A lock file that cannot be read while it exists is reported as held, since its
    /// writer may be mid-write.
    fn live_holder(&self, service: &str) -> Result<Option<DeploymentId>> {
        let path = self.lock_path(service);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<LockInfo>(&bytes) {
                Ok(h) if process::is_alive(h.pid, h.start_ticks) => Ok(Some(h.deployment)),
                Ok(_) => Ok(None),
                Err(_) => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the lock {} cannot be read yet; try again", path.display()),
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::new(ErrorKind::Unavailable, format!("cannot read the lock {}: {e}", path.display()))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockInfo {
    deployment: DeploymentId,
    pid: i32,
    start_ticks: Option<u64>,
    acquired_at_ms: u64,
}

fn read_lock(path: &Path) -> Option<LockInfo> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Removes a stale lock, serialized by a second lock file so two takers cannot both win.
fn take_over(path: &Path, stale: Option<&LockInfo>) -> Result<()> {
    let takeover = path.with_extension("lock.takeover");
    let guard = std::fs::OpenOptions::new().write(true).create_new(true).open(&takeover);
    if guard.is_err() {
        // A takeover file older than a minute belongs to a taker that died midway.
        let old = std::fs::metadata(&takeover).and_then(|m| m.modified()).map(|t| t.elapsed().unwrap_or_default());
        if old.is_ok_and(|age| age > std::time::Duration::from_secs(60)) {
            let _ = std::fs::remove_file(&takeover);
        }
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("another process is taking over the stale lock {}", path.display()),
        ));
    }
    if read_lock(path).as_ref() == stale {
        tracing::warn!(lock = %path.display(), holder = ?stale, "taking over a stale deployment lock");
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(&takeover);
    Ok(())
}

#[derive(Debug)]
struct FileLock {
    path: PathBuf,
    deployment: DeploymentId,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if read_lock(&self.path).is_some_and(|h| h.deployment == self.deployment) {
            let _ = std::fs::remove_file(&self.path);
        }
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
