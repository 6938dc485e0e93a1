//! The breaker: repairs that keep failing (a release that crashes at start) stop the
//! repairing, instead of relaunching forever.

use crate::ledger::LedgerEntry;
use crate::outcome::Phase;

/// Counts repairs that failed in a row; opens at the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Breaker {
    threshold: u32,
    failures: u32,
    last: Option<String>,
    /// Whether the opening was announced.
    pub announced: bool,
}

/// Whether a repair's end counts against the breaker: a repair that was refused (another
/// deployment took the lease first) or cancelled says nothing about the release.
pub(crate) fn counts_as_failure(phase: &Phase) -> bool {
    match phase {
        Phase::RolledBack { reason } | Phase::RollbackFailed { reason, .. } => !reason.contains("cancelled"),
        Phase::NoWayBack { .. } => true,
        Phase::Succeeded | Phase::Refused { .. } | Phase::Deploying | Phase::RollingBack { .. } => false,
    }
}

impl Breaker {
    pub fn new(threshold: u32) -> Self {
        Breaker { threshold, failures: 0, last: None, announced: false }
    }

    /// The breaker as the ledger leaves it: the repairs of `service` that failed since the
    /// last success (of a repair or of any deployment).
    pub fn from_ledger(threshold: u32, service: &str, entries: &[LedgerEntry]) -> Self {
        let mut breaker = Breaker::new(threshold);
        for e in entries.iter().filter(|e| e.service == service && e.watch.is_none()) {
            if e.outcome == Phase::Succeeded {
                breaker.succeeded();
            } else if super::is_watch(&e.deployment) && counts_as_failure(&e.outcome) {
                breaker.failed(phase_reason(&e.outcome));
            }
        }
        breaker
    }

    pub fn failed(&mut self, reason: String) {
        self.failures += 1;
        self.last = Some(reason);
    }

    pub fn succeeded(&mut self) {
        *self = Breaker::new(self.threshold);
    }

    pub fn is_open(&self) -> bool {
        self.failures >= self.threshold
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Why it opened, and what to do.
    pub fn reason(&self) -> String {
        format!(
            "{} repairs in a row failed (the last: {}); the watch stopped repairing and only reports now. Fix or roll back the release (a successful deployment closes the breaker), then restart the watch",
            self.failures,
            self.last.as_deref().unwrap_or("unknown")
        )
    }
}

pub(crate) fn phase_reason(phase: &Phase) -> String {
    match phase {
        Phase::RolledBack { reason }
        | Phase::Refused { reason }
        | Phase::NoWayBack { reason }
        | Phase::RollingBack { reason } => reason.clone(),
        Phase::RollbackFailed { reason, rollback_error } => format!("{reason}; then {rollback_error}"),
        Phase::Succeeded => "succeeded".to_owned(),
        Phase::Deploying => "deploying".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_a_success_closes_it() {
        let mut b = Breaker::new(2);
        b.failed("crashed".into());
        assert!(!b.is_open());
        b.failed("crashed again".into());
        assert!(b.is_open());
        assert!(b.reason().contains("crashed again"), "{}", b.reason());
        b.succeeded();
        assert!(!b.is_open() && b.failures() == 0);
        assert!(!counts_as_failure(&Phase::Refused { reason: "lease held".into() }));
        assert!(!counts_as_failure(&Phase::RolledBack { reason: "the deployment was cancelled".into() }));
        assert!(counts_as_failure(&Phase::RolledBack { reason: "budget spent".into() }));
    }
}
