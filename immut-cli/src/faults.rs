//! Fault injection for the crash tests: hidden flags of `deploy` and `resume` that SIGKILL
//! the command at a chosen journal record or around a chosen process spawn of the local
//! provider, so that a test can resume from every point a real crash could leave behind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use immut::journal::{Journal, JournalRead, JournalRecord, LockGuard, Recorded};
use immut::local::SpawnCrash;
use immut::{DeploymentId, Result};

/// The hidden flags. Not in `--help`: they exist for the crash tests.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Faults {
    /// SIGKILLs this process just before its Nth journal record (from 0), or with `KIND:N`
    /// its Nth record of that kind (`measured:1`: before the second analysis measurement).
    #[arg(long, hide = true, value_name = "[KIND:]N", value_parser = record_point)]
    pub kill_at_record: Option<RecordPoint>,
    /// SIGKILLs this process around its Nth process spawn (from 0; the local provider only):
    /// `N:before` (the record written ahead, the process not started) or `N:after` (the
    /// process started, its record not completed).
    #[arg(long, hide = true, value_name = "N:WHEN", value_parser = spawn_crash)]
    pub kill_at_spawn: Option<SpawnCrash>,
}

impl Faults {
    /// The journal the deployer writes to: `inner`, or `inner` behind the kill point.
    pub fn journal(&self, inner: Arc<dyn Journal>) -> Arc<dyn Journal> {
        match &self.kill_at_record {
            Some(point) => Arc::new(KillAtRecord { inner, point: point.clone(), seen: AtomicUsize::new(0) }),
            None => inner,
        }
    }
}

/// Where `--kill-at-record` strikes: the Nth record, of one kind or of any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPoint {
    /// The record kind as journaled (`intent`, `measured`, ...), or any.
    pub kind: Option<String>,
    /// Counted from 0.
    pub at: usize,
}

fn record_point(value: &str) -> std::result::Result<RecordPoint, String> {
    let bad = || format!("{value:?}: use N or KIND:N, such as 12 or measured:1");
    let (kind, n) = match value.split_once(':') {
        Some((kind, n)) if !kind.is_empty() => (Some(kind.to_owned()), n),
        Some(_) => return Err(bad()),
        None => (None, value),
    };
    let at = n.parse().map_err(|_| bad())?;
    Ok(RecordPoint { kind, at })
}

fn spawn_crash(value: &str) -> std::result::Result<SpawnCrash, String> {
    let bad = || format!("{value:?}: use N:before or N:after");
    let (n, when) = value.split_once(':').ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    match when {
        "before" => Ok(SpawnCrash::BeforeSpawn(n)),
        "after" => Ok(SpawnCrash::AfterSpawn(n)),
        _ => Err(bad()),
    }
}

/// SIGKILLs this process just before the Nth record is appended.
#[derive(Debug)]
struct KillAtRecord {
    inner: Arc<dyn Journal>,
    point: RecordPoint,
    seen: AtomicUsize,
}

impl Journal for KillAtRecord {
    fn append(&self, service: &str, record: &JournalRecord) -> Result<()> {
        let counts = match &self.point.kind {
            None => true,
            // The kind as the journal writes it (its serde tag).
            Some(kind) => {
                serde_json::to_value(record).ok().and_then(|v| v.get("kind")?.as_str().map(str::to_owned))
                    == Some(kind.clone())
            }
        };
        if counts && self.seen.fetch_add(1, Ordering::SeqCst) == self.point.at {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        self.inner.append(service, record)
    }
    fn read(&self, service: &str) -> Result<JournalRead> {
        self.inner.read(service)
    }
    fn lock(&self, service: &str, deployment: &DeploymentId) -> Result<LockGuard> {
        self.inner.lock(service, deployment)
    }
    fn holder(&self, service: &str) -> Result<Option<DeploymentId>> {
        self.inner.holder(service)
    }
    fn read_last(&self, service: &str) -> Result<JournalRead> {
        self.inner.read_last(service)
    }
    fn recorded(&self, service: &str, deployments: &BTreeSet<DeploymentId>) -> Result<Recorded> {
        self.inner.recorded(service, deployments)
    }
}
