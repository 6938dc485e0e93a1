//! Exit codes that CI can branch on. `immut --help` and the README list them.

use immut::{ErrorKind, Outcome, Phase};

/// How a command ended, as a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 0: done; the new release serves, or the report is clean.
    Success = 0,
    /// 1: `audit`, `verify` or `reap` found problems (drift, a broken ledger chain, orphans).
    Findings = 1,
    /// 2: bad input: arguments, the spec (file, line and column given), a missing key.
    BadInput = 2,
    /// 3: the deployment failed and was rolled back; the previous release serves.
    RolledBack = 3,
    /// 4: the rollback itself failed: both releases may be serving; a human is needed.
    RollbackFailed = 4,
    /// 5: cancelled (Ctrl-C, SIGTERM) and rolled back.
    Cancelled = 5,
    /// 6: refused, nothing changed: another deployment holds the service's lock, a
    /// downgrade was asked without `--rollback`, `promote` found nothing waiting, or the
    /// previous release can no longer be launched (no way back). Also: a deployment that
    /// stopped before terminating such a release; the new release serves, the old
    /// instances stay until a run with `--set rollout.accept_no_way_back=true`.
    Refused = 6,
    /// 7: a provider (or state) call failed: unreachable, throttled past the retries, denied.
    Provider = 7,
    /// 70: a bug in immut (a panic, caught); the journal lets `immut resume` continue.
    Internal = 70,
}

/// The exit-code table, as printed by `--help`.
pub const TABLE: &str = "\
Exit codes:
   0  success: the new release serves, or the report is clean
   1  findings: audit, verify or reap found problems
   2  bad input: arguments, the spec (file:line:column is given), a missing key
   3  rolled back: the deployment failed; the previous release serves
   4  rollback failed: both releases may serve; a human is needed
   5  cancelled (Ctrl-C or SIGTERM) and rolled back
   6  refused, nothing changed: the service's lock is held, a downgrade without --rollback,
      or nothing waits for `immut promote`; or no way back: the previous release can no
      longer be launched (at the start nothing changed; midway the new release serves and
      the old instances stay until --set rollout.accept_no_way_back=true)
   7  provider error: a provider or state call failed
  70  internal error (a bug); `immut resume` continues from the journal";

impl Exit {
    /// The code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for a library error that stopped a command.
    pub fn of_error(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::InvalidInput => Exit::BadInput,
            ErrorKind::Conflict => Exit::Refused,
            ErrorKind::Cancelled => Exit::Cancelled,
            _ => Exit::Provider,
        }
    }

    /// The exit code of a finished deployment. `cancelled` tells a cancellation (which also
    /// ends as rolled back) from a failure.
    pub fn of_outcome(outcome: &Outcome, cancelled: bool) -> Exit {
        match &outcome.phase {
            Phase::Succeeded => Exit::Success,
            Phase::RolledBack { .. } if cancelled => Exit::Cancelled,
            Phase::RolledBack { .. } => Exit::RolledBack,
            Phase::RollbackFailed { .. } => Exit::RollbackFailed,
            // Stopped before terminating a release that can no longer be launched.
            Phase::NoWayBack { .. } => Exit::Refused,
            Phase::Refused { reason } => match refusal_kind(reason) {
                Some(ErrorKind::Conflict | ErrorKind::NoWayBack) => Exit::Refused,
                // A downgrade without --rollback, or a previous release that does not serve.
                Some(ErrorKind::InvalidInput)
                    if reason.contains("artifact.version") || reason.contains("previous:") =>
                {
                    Exit::Refused
                }
                Some(ErrorKind::InvalidInput) => Exit::BadInput,
                Some(ErrorKind::Cancelled) => Exit::Cancelled,
                _ => Exit::Provider,
            },
            Phase::Deploying | Phase::RollingBack { .. } => Exit::Internal,
        }
    }
}

/// The error kind a refusal's reason starts with. A refusal carries the error's text
/// (`Kind [provider op]: message`), not the error.
fn refusal_kind(reason: &str) -> Option<ErrorKind> {
    let word = reason.split([' ', ':']).next()?;
    Some(match word {
        "Conflict" => ErrorKind::Conflict,
        "InvalidInput" => ErrorKind::InvalidInput,
        "Cancelled" => ErrorKind::Cancelled,
        "NoWayBack" => ErrorKind::NoWayBack,
        "NotFound" => ErrorKind::NotFound,
        "PermissionDenied" => ErrorKind::PermissionDenied,
        "Unavailable" => ErrorKind::Unavailable,
        "RateLimited" => ErrorKind::RateLimited,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_their_kind() {
        assert_eq!(refusal_kind("Conflict: service web is being deployed"), Some(ErrorKind::Conflict));
        assert_eq!(refusal_kind("Unavailable [sim describe]: down"), Some(ErrorKind::Unavailable));
        assert_eq!(refusal_kind("something else"), None);
        let e = immut::Error::new(ErrorKind::Conflict, "held").with_provider("x");
        assert_eq!(refusal_kind(&e.to_string()), Some(ErrorKind::Conflict));
    }

    #[test]
    fn no_way_back_exits_refused_at_the_start_and_midway() {
        let outcome = |phase| Outcome {
            deployment: immut::DeploymentId::new("d1"),
            service: "web".into(),
            release: immut::ReleaseId::new("r2"),
            previous: None,
            phase,
            elapsed: std::time::Duration::ZERO,
            steps: 0,
            waves: 0,
            serving: Vec::new(),
            calls: Default::default(),
        };
        let at_start = immut::Error::new(ErrorKind::NoWayBack, "the previous release r1 can no longer be launched");
        let refused = outcome(Phase::Refused { reason: at_start.to_string() });
        assert_eq!(Exit::of_outcome(&refused, false), Exit::Refused);
        let midway = outcome(Phase::NoWayBack { reason: "release r1 can no longer be launched".into() });
        assert_eq!(Exit::of_outcome(&midway, false), Exit::Refused);
    }

    #[test]
    fn codes_are_distinct_and_never_101() {
        let all = [
            Exit::Success,
            Exit::Findings,
            Exit::BadInput,
            Exit::RolledBack,
            Exit::RollbackFailed,
            Exit::Cancelled,
            Exit::Refused,
            Exit::Provider,
            Exit::Internal,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&101));
        for e in all {
            assert!(TABLE.contains(&format!("{:>4}  ", e.code())), "{e:?} is missing from the table");
        }
    }
}
