use serde::{Deserialize, Serialize};

use crate::model::{DeploymentId, InstanceId, LaunchToken, ReleaseId};
use crate::outcome::Outcome;
use crate::provider::Readiness;
use crate::strategy::Decision;
use crate::watch::WatchFinding;

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
    /// An analysis measurement was taken.
    Measured {
        /// What it showed.
        measurement: crate::analysis::Measurement,
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
    /// The health check itself failed (its backend could not be reached) after the retries;
    /// the instances it was to judge count as [`Health::Unknown`](crate::Health::Unknown) for
    /// this step: not healthy, and not failed either.
    HealthUnknown {
        /// The check's error.
        error: String,
        /// How many instances it was to judge.
        instances: usize,
    },
    /// An invariant would have been violated; the engine refused and will roll back.
    InvariantViolated {
        /// Which invariant.
        invariant: super::invariants::Invariant,
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
    /// Rollback readiness of an older release: whether it could still be launched again.
    /// Checked at the start and again before the engine terminates its instances.
    Readiness {
        /// The release checked.
        release: ReleaseId,
        /// `start` or `before_terminate`.
        at: ReadinessCheck,
        /// What the provider reported.
        readiness: Readiness,
        /// Whether the deployment goes on although the release can no longer be launched
        /// (`accept_no_way_back`).
        accepted: bool,
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
    /// The deployment waits for a watch's repair, which holds the service's lease, instead of
    /// being refused (bounded by the progress deadline).
    WaitingForLease {
        /// The repair that holds it.
        holder: DeploymentId,
        /// How long the deployment has waited so far, in milliseconds.
        waited_ms: u64,
    },
    /// A watch audited the service ([`crate::watch`]).
    WatchCycle {
        /// Cycle number, from 1, since the watch started.
        cycle: u64,
        /// Instances audited.
        audited: usize,
        /// Findings open after the cycle.
        open: usize,
    },
    /// A watch saw a finding for the first time.
    FindingOpened {
        /// The finding.
        finding: WatchFinding,
    },
    /// A finding a watch saw is gone: repaired, or gone by itself.
    FindingClosed {
        /// The finding as it opened.
        finding: WatchFinding,
    },
    /// A watch started a repair: a deployment of the serving release that replaces these
    /// instances and restores the desired count.
    RepairStarted {
        /// The repair's deployment id.
        deployment: DeploymentId,
        /// The instances it replaces.
        replacing: Vec<InstanceId>,
        /// How many instances the fleet lacked.
        missing: usize,
    },
    /// A watch took out traffic targets that no instance answers for any more, or terminated
    /// unmanaged instances (as the watch's settings ask).
    Removed {
        /// Which.
        ids: Vec<InstanceId>,
        /// Why.
        reason: String,
    },
    /// A watch's repair ended.
    RepairFinished {
        /// The repair's deployment id.
        deployment: DeploymentId,
        /// Whether it succeeded.
        succeeded: bool,
        /// The outcome, in words.
        summary: String,
    },
    /// A watch left the service alone this cycle: a deployment holds its lease.
    WatchYielded {
        /// The deployment that holds it.
        holder: DeploymentId,
    },
    /// A watch cycle failed (the provider, the balancer or the state store answered with an
    /// error); the next interval tries again.
    WatchCycleFailed {
        /// The error.
        error: String,
    },
    /// Repairs kept failing: the watch stopped repairing (it still audits and reports).
    BreakerOpened {
        /// Repairs that failed in a row.
        failures: u32,
        /// Why, and what to do.
        reason: String,
    },
}

/// When the engine checked rollback readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessCheck {
    /// At the start of the deployment, before any launch.
    Start,
    /// Right before terminating instances of the release: the point of no return.
    BeforeTerminate,
}

/// At most four ids, then a count of the rest.
fn short(ids: &[InstanceId]) -> String {
    let mut s = ids.iter().take(4).map(|i| i.as_str()).collect::<Vec<_>>().join(", ");
    if ids.len() > 4 {
        s.push_str(&format!(", +{}", ids.len() - 4));
    }
    s
}

/// One line for people: a word for what happened, padded to a column, then the details. The
/// CLI and the examples print events this way.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started { release, previous, desired, strategy, floor, ceiling, .. } => write!(
                f,
                "start    {} -> {release}, {desired} instances, {strategy} (healthy floor {floor}, ceiling {ceiling})",
                previous.as_ref().map_or("nothing".to_owned(), |p| p.to_string())
            ),
            Event::Step { decision: Decision::Wait { reason, .. }, .. } => write!(f, "wait     {reason}"),
            Event::Step { step, capacity, decision, .. } => write!(
                f,
                "step     {step}: {} serving healthy of {} live; {}",
                capacity.serving_healthy,
                capacity.total,
                decision.kind()
            ),
            Event::Launched { wave, ids, adopted, .. } => write!(
                f,
                "launch   wave {wave}: {} instances [{}]{}",
                ids.len(),
                short(ids),
                if *adopted > 0 { format!(" ({adopted} adopted)") } else { String::new() }
            ),
            Event::Attached { ids } => write!(f, "attach   [{}] now receive traffic", short(ids)),
            Event::Detached { ids } => write!(f, "detach   [{}] drained", short(ids)),
            Event::Switched { attached, detached } => {
                write!(f, "switch   traffic moved to [{}] from [{}]", short(attached), short(detached))
            }
            Event::Terminated { ids } => write!(f, "stop     [{}] terminated", short(ids)),
            Event::GatePassed { gate } => write!(f, "gate     {gate} passed"),
            Event::Measured { measurement: m } => write!(
                f,
                "measure  {} {} #{}: {}{} ({})",
                m.gate,
                m.metric,
                m.index,
                m.phase,
                m.value.map(|v| format!(" {v}")).unwrap_or_default(),
                m.message
            ),
            Event::Retrying { operation, attempt, error, delay_ms } => {
                write!(f, "retry    {operation} attempt {attempt} in {delay_ms} ms: {error}")
            }
            Event::Paced { waits, waited_ms } => {
                write!(f, "pace     {waits} calls waited {waited_ms} ms for client-side rate limits")
            }
            Event::HealthUnknown { error, instances } => {
                write!(f, "health   unknown for {instances} instances: the check failed: {error}")
            }
            Event::InvariantViolated { invariant, detail } => write!(f, "REFUSED  {invariant}: {detail}"),
            Event::RollbackStarted { reason, .. } => write!(f, "ROLLBACK {reason}"),
            Event::Readiness { release, at, readiness, accepted } => {
                let at = match at {
                    ReadinessCheck::Start => "at the start",
                    ReadinessCheck::BeforeTerminate => "before terminating it",
                };
                match &readiness.blocking {
                    Some(why) if *accepted => {
                        write!(f, "no way   back to {release} {at}: {why} (accepted: accept_no_way_back)")
                    }
                    Some(why) => write!(f, "NO WAY   back to {release} {at}: {why}"),
                    None if !readiness.checked => write!(f, "ready?   {release} {at}: the provider cannot tell"),
                    None if readiness.warnings.is_empty() => write!(f, "ready    {release} can be launched again"),
                    None => write!(f, "warning  {release} {at}: {}", readiness.warnings.join("; ")),
                }
            }
            Event::Resumed { deployment, rolling_back, pending_launch, torn_lines } => write!(
                f,
                "resume   {deployment} from the journal (rolling back: {rolling_back}, launch in flight: {pending_launch}, torn lines: {torn_lines})"
            ),
            Event::Finished { outcome } => write!(f, "done     {}", outcome.summary()),
            Event::WaitingForLease { holder, .. } => {
                write!(f, "waiting  watch repair {holder} holds the lease; this deployment starts when it ends")
            }
            Event::WatchCycle { cycle, audited, open } => {
                write!(f, "audit    cycle {cycle}: {audited} instances, {open} findings open")
            }
            Event::FindingOpened { finding } => write!(f, "FINDING  {finding}"),
            Event::FindingClosed { finding } => write!(f, "closed   {finding}"),
            Event::RepairStarted { deployment, replacing, missing } => {
                write!(f, "repair   {deployment}: replacing [{}], restoring {missing} missing", short(replacing))
            }
            Event::Removed { ids, reason } => write!(f, "remove   [{}]: {reason}", short(ids)),
            Event::RepairFinished { deployment, succeeded: true, .. } => write!(f, "repaired {deployment}"),
            Event::RepairFinished { deployment, succeeded: false, summary } => {
                write!(f, "REPAIR FAILED {deployment}: {summary}")
            }
            Event::WatchYielded { holder } => {
                write!(f, "yield    deployment {holder} holds the lease; no audit or repair this cycle")
            }
            Event::WatchCycleFailed { error } => write!(f, "CYCLE FAILED {error}; trying again next interval"),
            Event::BreakerOpened { reason, .. } => write!(f, "BREAKER  {reason}"),
        }
    }
}
