//! A journal that dies between two records, like a process killed there, for the tests that
//! resume a deployment after a crash at every kill point.

use std::sync::atomic::{AtomicUsize, Ordering};

use immut_core::DeploymentId;
use immut_core::journal::{Journal, JournalEntry, JournalRead, JournalRecord, LockGuard, MemoryJournal};

/// Dies (panics, which drops the deployment mid-step) on the `crash_at`-th record it counts,
/// before writing it; every other call goes to `inner`.
#[derive(Debug)]
pub struct CrashingJournal<J = MemoryJournal> {
    inner: J,
    crash_at: usize,
    counted: AtomicUsize,
    counts: fn(&JournalRecord) -> bool,
    kind: &'static str,
}

impl<J> CrashingJournal<J> {
    /// Counts every record.
    pub fn new(inner: J, crash_at: usize) -> Self {
        Self { inner, crash_at, counted: AtomicUsize::new(0), counts: |_| true, kind: "journal" }
    }

    /// Counts only the measurement records of an analysis.
    pub fn on_measurements(inner: J, crash_at: usize) -> Self {
        let counts = |r: &JournalRecord| matches!(r.entry, JournalEntry::Measured(_));
        Self { inner, crash_at, counted: AtomicUsize::new(0), counts, kind: "measurement" }
    }
}

impl<J: Journal> Journal for CrashingJournal<J> {
    fn append(&self, service: &str, record: &JournalRecord) -> immut_core::Result<()> {
        quiet_simulated_crashes();
        if (self.counts)(record) && self.counted.fetch_add(1, Ordering::SeqCst) == self.crash_at {
            panic!("simulated crash before {} record {}", self.kind, self.crash_at);
        }
        self.inner.append(service, record)
    }
    fn read(&self, service: &str) -> immut_core::Result<JournalRead> {
        self.inner.read(service)
    }
    fn lock(&self, service: &str, deployment: &DeploymentId) -> immut_core::Result<LockGuard> {
        self.inner.lock(service, deployment)
    }
    fn holder(&self, service: &str) -> immut_core::Result<Option<DeploymentId>> {
        self.inner.holder(service)
    }
}

/// Keeps the deliberate crashes out of the test output; every other panic is reported.
pub fn quiet_simulated_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let simulated = info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("simulated crash"));
            if !simulated {
                default(info);
            }
        }));
    });
}
