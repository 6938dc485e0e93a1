use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{DeploymentId, InstanceId, LaunchToken, ReleaseId};
use crate::strategy::Decision;

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
            Phase::Succeeded | Phase::RolledBack { .. } | Phase::RollbackFailed { .. } | Phase::Refused { .. }
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
    /// Retried attempts.
    pub retries: u64,
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

/// What the fleet looked like at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// Serving and healthy, any release.
    pub serving_healthy: usize,
    /// Serving, any release.
    pub serving: usize,
    /// Live instances, any release.
    pub total: usize,
    /// Live instances of the release being moved to.
    pub new_live: usize,
    /// Live instances of other releases.
    pub old_live: usize,
}

/// A typed, serializable record of everything a deployment does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The deployment began.
    Started {
        /// Deployment id.
        deployment: DeploymentId,
        /// Service.
        service: String,
        /// Release being deployed.
        release: ReleaseId,
        /// Release serving before, if any.
        previous: Option<ReleaseId>,
        /// How many instances of the previous release served at the start: what a rollback restores.
        previous_count: usize,
        /// Desired count.
        desired: usize,
        /// Strategy name.
        strategy: String,
        /// Healthy floor.
        floor: usize,
        /// Surge ceiling.
        ceiling: usize,
    },
    /// One engine step: what was observed and what was decided.
    Step {
        /// Step number, from 1.
        step: u64,
        /// Time since the start, in milliseconds.
        at_ms: u64,
        /// Rolling back or not.
        rolling_back: bool,
        /// Observed capacity.
        capacity: Capacity,
        /// The decision.
        decision: Decision,
    },
    /// A wave was launched (or adopted).
    Launched {
        /// Wave number, from 1.
        wave: u32,
        /// Launch token.
        token: LaunchToken,
        /// Instances of the wave.
        ids: Vec<InstanceId>,
        /// How many already existed under the token and were adopted.
        adopted: usize,
    },
    /// Instances started serving.
    Attached {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// Instances stopped serving and drained.
    Detached {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// Traffic moved in one step.
    Switched {
        /// Now serving.
        attached: Vec<InstanceId>,
        /// No longer serving.
        detached: Vec<InstanceId>,
    },
    /// Instances were terminated.
    Terminated {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// A gate passed.
    GatePassed {
        /// Gate name.
        gate: String,
    },
    /// A call failed with a retryable error and will be tried again.
    Retrying {
        /// Operation.
        operation: String,
        /// Attempt that failed, from 1.
        attempt: u32,
        /// The error.
        error: String,
        /// Delay before the next attempt, in milliseconds.
        delay_ms: u64,
    },
    /// The backend's client-side rate limits held calls back during the last step.
    Paced {
        /// Calls that waited.
        waits: u64,
        /// How long they waited in total, in milliseconds.
        waited_ms: u64,
    },
    /// An invariant would have been violated; the engine refused and will roll back.
    InvariantViolated {
        /// Which invariant.
        invariant: String,
        /// Details.
        detail: String,
    },
    /// The engine abandoned the deployment and started restoring the previous release.
    RollbackStarted {
        /// Why.
        reason: String,
        /// Healthy floor while restoring the previous release.
        floor: usize,
        /// Surge ceiling while restoring: the previous release's count plus the strategy's surge.
        ceiling: usize,
    },
    /// A deployment interrupted by a crash was picked up from the journal.
    Resumed {
        /// Deployment id.
        deployment: DeploymentId,
        /// Whether it was rolling back.
        rolling_back: bool,
        /// Whether a launch was in flight (it is completed by token, adopting what exists).
        pending_launch: bool,
        /// Journal lines that did not parse (a torn last line marks a crash mid-write).
        torn_lines: usize,
    },
    /// The deployment ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
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
