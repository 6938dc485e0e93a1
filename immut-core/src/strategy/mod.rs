//! Replacement strategies: pure functions from an observed [`FleetView`] to the next [`Decision`].
//!
//! A strategy does no I/O, so it can be unit-tested with hand-built views and the same code
//! drives real deployments and dry-runs.

mod blue_green;
mod canary;
mod rollback;
mod rolling;

use std::collections::BTreeSet;
use std::fmt::{self, Debug};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::InstanceId;

pub use blue_green::{BAKE_GATE, BlueGreen, PROMOTE_GATE, Promotion};
pub use canary::Canary;
pub(crate) use rollback::Rollback;
pub use rolling::Rolling;

/// A number of instances, absolute or as a percent of the desired count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// An absolute count.
    Count(usize),
    /// A percent of the desired count, 0 to 100.
    Percent(u8),
}

impl Count {
    /// Resolves against `desired`. Percents round up, so 10% of 5 is 1.
    pub fn resolve(self, desired: usize) -> usize {
        match self {
            Count::Count(n) => n,
            Count::Percent(p) => (desired * p as usize).div_ceil(100),
        }
    }

    fn validate(self, field: &str) -> Result<()> {
        match self {
            Count::Percent(p) if p > 100 => {
                Err(Error::invalid(field, format!("{p}% is over 100%; give a percent from 0 to 100")))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Count(n) => write!(f, "{n}"),
            Count::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The capacity bounds a strategy promises for a desired count; the engine enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Serving-healthy instances never drop below this because of the engine's own action.
    pub floor: usize,
    /// Live instances never exceed this.
    pub ceiling: usize,
}

/// What the engine observed, sorted into the groups strategies reason about.
///
/// "New" means instances of the release being deployed; "old" means instances of any other
/// release of the service. Times are measured from the start of the deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// Time since the deployment started.
    pub now: Duration,
    /// The desired instance count.
    pub desired: usize,
    /// How many instances of the previous release served when the deployment began: 0 for a
    /// first deployment, which has nothing to bake against or roll back to.
    pub previous_count: usize,
    /// New, live, not yet healthy (pending, booting or failing health).
    pub launching: Vec<InstanceId>,
    /// New and healthy, but not for the min-ready time yet; not serving.
    pub warming: Vec<InstanceId>,
    /// New, healthy for at least the min-ready time, not serving.
    pub ready: Vec<InstanceId>,
    /// New and serving, healthy.
    pub new_serving_healthy: Vec<InstanceId>,
    /// New and serving, not healthy.
    pub new_serving_unhealthy: Vec<InstanceId>,
    /// Old and serving, healthy.
    pub old_serving_healthy: Vec<InstanceId>,
    /// Old and serving, not healthy.
    pub old_serving_unhealthy: Vec<InstanceId>,
    /// Old, live, not serving (detached, or never attached).
    pub old_idle: Vec<InstanceId>,
    /// Not serving, not live, not gone: terminating or stopped, of any release. They still
    /// exist, and where they hold quota they count toward the ceiling (see [`FleetView::occupied`]).
    pub lingering: Vec<InstanceId>,
    /// New instances this deployment launched that describe does not show yet (within the
    /// provider's consistency window). They are counted among `launching` so that nothing is
    /// launched twice, and listed here because they may never have existed.
    pub unconfirmed: Vec<InstanceId>,
    /// Whether lingering instances hold the account's quota (the provider's
    /// [`Capabilities::lingering_holds_quota`](crate::Capabilities::lingering_holds_quota)).
    pub lingering_holds_quota: bool,
    /// When the first warming instance becomes ready.
    pub next_ready_at: Option<Duration>,
    /// When the engine last launched, attached, detached, switched or terminated.
    pub last_change_at: Option<Duration>,
    /// When traffic last moved to the new release by a switch.
    pub switched_at: Option<Duration>,
    /// Gates passed so far.
    pub passed_gates: BTreeSet<String>,
}

impl FleetView {
    /// New instances that are live, in every stage.
    pub fn new_live(&self) -> usize {
        self.launching.len()
            + self.warming.len()
            + self.ready.len()
            + self.new_serving_healthy.len()
            + self.new_serving_unhealthy.len()
    }

    /// Old instances that are live.
    pub fn old_live(&self) -> usize {
        self.old_serving_healthy.len() + self.old_serving_unhealthy.len() + self.old_idle.len()
    }

    /// Every live instance.
    pub fn total_live(&self) -> usize {
        self.new_live() + self.old_live()
    }

    /// What counts against the ceiling: every live instance, plus the lingering ones when they
    /// hold quota. Strategies size launches by this, so a wave waits for a lingering
    /// termination instead of hitting the quota.
    pub fn occupied(&self) -> usize {
        self.total_live() + if self.lingering_holds_quota { self.lingering.len() } else { 0 }
    }

    /// Instances serving and healthy, of any release.
    pub fn serving_healthy(&self) -> usize {
        self.old_serving_healthy.len() + self.new_serving_healthy.len()
    }

    /// Instances serving, of any release.
    pub fn serving(&self) -> usize {
        self.serving_healthy() + self.old_serving_unhealthy.len() + self.new_serving_unhealthy.len()
    }

    /// Time since the last change, or since the start.
    pub fn since_last_change(&self) -> Duration {
        self.now.saturating_sub(self.last_change_at.unwrap_or_default())
    }
}

/// The next thing the engine should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Launch this many new instances (one wave).
    Launch {
        /// How many.
        count: usize,
    },
    /// Send traffic to these new instances.
    Attach {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// Stop traffic to these instances, draining them.
    Detach {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// Move traffic from `detach` to `attach` in one step.
    Switch {
        /// Instances to start serving.
        attach: Vec<InstanceId>,
        /// Instances to stop serving.
        detach: Vec<InstanceId>,
    },
    /// Terminate these instances; they must not be serving.
    Terminate {
        /// Which.
        ids: Vec<InstanceId>,
    },
    /// Ask the named gate (manual promotion, canary analysis) whether to go on.
    Gate {
        /// Gate name.
        name: String,
    },
    /// Nothing to do until something changes.
    Wait {
        /// Why.
        reason: String,
        /// When the strategy knows the wait ends (time since the deployment started).
        until: Option<Duration>,
    },
    /// The deployment reached its goal.
    Done,
    /// The deployment cannot succeed.
    Fail {
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// A wait with a reason and no known end.
    pub fn wait(reason: impl Into<String>) -> Self {
        Decision::Wait { reason: reason.into(), until: None }
    }

    /// A wait that ends at `until`.
    pub fn wait_until(reason: impl Into<String>, until: Duration) -> Self {
        Decision::Wait { reason: reason.into(), until: Some(until) }
    }

    /// The decision's name, as in its JSON form (`launch`, `switch`, `wait`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Launch { .. } => "launch",
            Decision::Attach { .. } => "attach",
            Decision::Detach { .. } => "detach",
            Decision::Switch { .. } => "switch",
            Decision::Terminate { .. } => "terminate",
            Decision::Gate { .. } => "gate",
            Decision::Wait { .. } => "wait",
            Decision::Done => "done",
            Decision::Fail { .. } => "fail",
        }
    }

    /// Whether the decision changes the fleet or its traffic.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Decision::Launch { .. }
                | Decision::Attach { .. }
                | Decision::Detach { .. }
                | Decision::Switch { .. }
                | Decision::Terminate { .. }
        )
    }
}

/// Decides the order of replacement.
pub trait ReplacementStrategy: Send + Sync + Debug {
    /// A short name (`blue_green`, `rolling`, `canary`).
    fn name(&self) -> &str;

    /// Checks the settings against a desired count; the error names the field and the fix.
    fn validate(&self, desired: usize) -> Result<()>;

    /// The capacity bounds for a desired count.
    fn limits(&self, desired: usize) -> Limits;

    /// The next decision for an observed fleet.
    fn decide(&self, view: &FleetView) -> Decision;
}

/// The shared replacement step of rolling, canary and rollback: move the fleet toward
/// `target_new` serving new instances and at most `old_keep` old ones, never above `ceiling`
/// live instances and never, by its own action, below `floor` serving-healthy ones.
///
/// Returns `None` when that target is reached.
pub(crate) fn replace_toward(
    view: &FleetView,
    target_new: usize,
    old_keep: usize,
    limits: Limits,
    launch_allowed: bool,
) -> Option<Decision> {
    if !view.ready.is_empty() {
        return Some(Decision::Attach { ids: view.ready.clone() });
    }
    if !view.old_idle.is_empty() {
        return Some(Decision::Terminate { ids: view.old_idle.clone() });
    }
    // Unhealthy serving instances hold no capacity: detaching them never lowers the floor.
    let old_serving = view.old_serving_healthy.len() + view.old_serving_unhealthy.len();
    let mut excess = old_serving.saturating_sub(old_keep);
    let mut detach: Vec<InstanceId> = view.old_serving_unhealthy.iter().take(excess).cloned().collect();
    excess -= detach.len();
    let removable = view.serving_healthy().saturating_sub(limits.floor);
    detach.extend(view.old_serving_healthy.iter().take(excess.min(removable)).cloned());
    if !detach.is_empty() {
        return Some(Decision::Detach { ids: detach });
    }
    let want = target_new.saturating_sub(view.new_live());
    let room = limits.ceiling.saturating_sub(view.occupied());
    if want > 0 && room > 0 && launch_allowed {
        return Some(Decision::Launch { count: want.min(room) });
    }
    let reached = view.new_serving_healthy.len() >= target_new
        && old_serving <= old_keep
        && view.launching.is_empty()
        && view.warming.is_empty();
    if reached {
        return None;
    }
    Some(waiting(view, target_new))
}

pub(crate) fn waiting(view: &FleetView, target_new: usize) -> Decision {
    let reason = format!(
        "{}/{} new instances serving healthy ({} launching, {} warming)",
        view.new_serving_healthy.len(),
        target_new,
        view.launching.len(),
        view.warming.len()
    );
    match view.next_ready_at {
        Some(at) => Decision::wait_until(reason, at),
        None => Decision::wait(reason),
    }
}

#[cfg(test)]
pub(crate) mod test_views {
    use super::*;

    pub fn ids(prefix: &str, n: usize) -> Vec<InstanceId> {
        (0..n).map(|i| InstanceId::new(format!("{prefix}{i}"))).collect()
    }

    /// A fleet of `old` old instances serving healthy, and nothing new.
    pub fn fresh(desired: usize, old: usize) -> FleetView {
        FleetView { desired, previous_count: old, old_serving_healthy: ids("old-", old), ..FleetView::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_round_up_and_over_100_is_rejected() {
        assert_eq!(Count::Percent(10).resolve(5), 1);
        assert_eq!(Count::Percent(25).resolve(8), 2);
        assert_eq!(Count::Percent(100).resolve(7), 7);
        let e = Count::Percent(120).validate("max_surge").unwrap_err();
        assert!(e.to_string().contains("max_surge"));
    }
}
