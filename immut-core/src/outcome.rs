//! How a deployment ends: its [`Phase`] and its [`Outcome`]. The engine produces them; the
//! journal and the ledger record them, so they live outside the engine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{DeploymentId, InstanceId, ReleaseId};

/// Where a deployment is. Each state documents its transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Moving toward the new release. `Done` leads to [`Phase::Succeeded`]; a failing decision,
    /// a non-retryable error, an invariant violation, a missed progress deadline or a
    /// cancellation leads to [`Phase::RollingBack`].
    Deploying,
    /// Restoring the previous release: its traffic first, then removing the new instances.
    /// `Done` leads to [`Phase::RolledBack`]; any failure to [`Phase::RollbackFailed`].
    /// Cancellation is ignored here: a rollback always runs to its end.
    RollingBack {
        /// Why the deployment was abandoned.
        reason: String,
    },
    /// Terminal: the new release serves and nothing else remains.
    Succeeded,
    /// Terminal: the previous release serves again and the new instances are gone.
    RolledBack {
        /// Why the deployment was abandoned.
        reason: String,
    },
    /// Terminal: the deployment never began (a bad request, or another deployment of the service
    /// holds the lock); nothing was changed.
    Refused {
        /// Why.
        reason: String,
    },
    /// Terminal: the new release serves, but the engine stopped before terminating instances
    /// of an older release because that release can no longer be launched (its image was
    /// deregistered, obsoleted or deleted, its executable is gone): destroying them would
    /// destroy the last way back. The new release keeps the traffic it earned and the old
    /// instances stay. A later deployment with `accept_no_way_back` finishes the clean-up.
    NoWayBack {
        /// Which release can no longer be launched, and why.
        reason: String,
    },
    /// Terminal: the rollback itself failed; the fleet needs attention.
    RollbackFailed {
        /// Why the deployment was abandoned.
        reason: String,
        /// Why the rollback failed.
        rollback_error: String,
    },
}

impl Phase {
    /// Whether no further step will happen.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::RolledBack { .. }
                | Phase::RollbackFailed { .. }
                | Phase::Refused { .. }
                | Phase::NoWayBack { .. }
        )
    }
}

/// Calls the engine made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallCounts {
    /// Launch calls.
    pub launch: u64,
    /// Describe calls.
    pub describe: u64,
    /// Terminate calls.
    pub terminate: u64,
    /// Serving-set reads.
    pub serving: u64,
    /// Attach calls.
    pub attach: u64,
    /// Detach calls.
    pub detach: u64,
    /// Switch calls.
    pub switch: u64,
    /// Batched health checks.
    pub health: u64,
    /// Calls that made new instances known to the balancer for probing.
    #[serde(default)]
    pub prepare: u64,
    /// Change-feed calls: polls that asked whether anything changed instead of reading the
    /// fleet ([`crate::feed`]).
    #[serde(default)]
    pub changes: u64,
    /// Change-feed calls that listed the instances changed since the last read: observations
    /// that patched the fleet instead of reading it in full ([`crate::feed`]).
    #[serde(default)]
    pub deltas: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Rollback readiness checks.
    #[serde(default)]
    pub readiness: u64,
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Deployment id.
    pub deployment: DeploymentId,
    /// Service.
    pub service: String,
    /// The release that was deployed.
    pub release: ReleaseId,
    /// The release that served before, if any.
    pub previous: Option<ReleaseId>,
    /// The terminal phase, with the reasons.
    pub phase: Phase,
    /// Wall-clock (or virtual) duration.
    #[serde(with = "millis")]
    pub elapsed: Duration,
    /// Engine steps taken.
    pub steps: u64,
    /// Launch waves.
    pub waves: u32,
    /// The instances serving at the end.
    pub serving: Vec<InstanceId>,
    /// Calls the engine made.
    pub calls: CallCounts,
}

impl Outcome {
    /// Whether the new release was deployed.
    pub fn succeeded(&self) -> bool {
        self.phase == Phase::Succeeded
    }

    /// A one-line summary for people.
    pub fn summary(&self) -> String {
        let how = match &self.phase {
            Phase::Succeeded => "succeeded".to_owned(),
            Phase::RolledBack { reason } => format!("rolled back ({reason})"),
            Phase::Refused { reason } => format!("refused ({reason})"),
            Phase::NoWayBack { reason } => format!("stopped before the point of no return ({reason})"),
            Phase::RollbackFailed { reason, rollback_error } => {
                format!("ROLLBACK FAILED ({reason}; then: {rollback_error})")
            }
            other => format!("{other:?}"),
        };
        format!(
            "deployment {} of {} to {} {how} in {:.1}s: {} steps, {} waves, {} serving",
            self.deployment,
            self.service,
            self.release,
            self.elapsed.as_secs_f64(),
            self.steps,
            self.waves,
            self.serving.len()
        )
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
