//! The engine's invariants as pure functions over a view and a decision.

use std::fmt;

use foldhash::HashSet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::model::InstanceId;
use crate::strategy::{Decision, FleetView, Limits};

/// The engine's invariants, by name (the names appear in errors and events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// Serving-healthy never drops below the floor by the engine's own action.
    HealthyFloor,
    /// Live instances never exceed the ceiling.
    SurgeCeiling,
    /// Only proven (ready) instances receive traffic, and nothing serving is terminated.
    OldKeptUntilNewProven,
    /// At quiescence no instance is left outside the final release's serving set.
    NoOrphans,
}

impl Invariant {
    /// The name used in errors, events and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::HealthyFloor => "healthy_floor",
            Invariant::SurgeCeiling => "surge_ceiling",
            Invariant::OldKeptUntilNewProven => "old_kept_until_new_proven",
            Invariant::NoOrphans => "no_orphans",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decision or an observation that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// What would have broken it.
    pub detail: String,
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Error {
        Error::new(ErrorKind::InvariantViolated, format!("{}: {}", v.invariant, v.detail))
    }
}

type Result<T> = std::result::Result<T, Violation>;

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Checks the observed fleet: the ceiling (or the fleet size at the start, if that was larger),
/// counting only instances describe shows.
pub fn check_observed(view: &FleetView, limits: Limits, initial_total: usize) -> Result<()> {
    let ceiling = limits.ceiling.max(initial_total);
    // Instances counted from the engine's own record only may not exist: they hold room for
    // launches, but cannot prove the ceiling broken.
    let live = view.total_live() - view.unconfirmed.len().min(view.total_live());
    if live > ceiling {
        return Err(violation(
            Invariant::SurgeCeiling,
            format!("{live} live instances exceed the ceiling of {ceiling}"),
        ));
    }
    Ok(())
}

/// Checks a decision before it is carried out.
pub fn check_decision(view: &FleetView, decision: &Decision, limits: Limits) -> Result<()> {
    match decision {
        Decision::Launch { count } => {
            let after = view.occupied() + count;
            if after > limits.ceiling {
                return Err(violation(
                    Invariant::SurgeCeiling,
                    format!(
                        "launching {count} would bring {after} live instances above the ceiling of {}",
                        limits.ceiling
                    ),
                ));
            }
        }
        Decision::Attach { ids } => check_proven(view, ids)?,
        Decision::Detach { ids } => check_floor(view, &[], ids, limits)?,
        Decision::Switch { attach, detach } => {
            check_proven(view, attach)?;
            check_floor(view, attach, detach, limits)?;
        }
        Decision::Terminate { ids } => {
            let serving: HashSet<&InstanceId> = serving_ids(view).collect();
            if let Some(id) = ids.iter().find(|id| serving.contains(id)) {
                return Err(violation(
                    Invariant::OldKeptUntilNewProven,
                    format!("{id} would be terminated while serving; detach and drain it first"),
                ));
            }
        }
        Decision::Done => check_quiescent(view)?,
        Decision::Gate { .. } | Decision::Wait { .. } | Decision::Fail { .. } => {}
    }
    Ok(())
}

fn serving_ids(view: &FleetView) -> impl Iterator<Item = &InstanceId> {
    view.old_serving_healthy
        .iter()
        .chain(&view.old_serving_unhealthy)
        .chain(&view.new_serving_healthy)
        .chain(&view.new_serving_unhealthy)
}

fn check_proven(view: &FleetView, attach: &[InstanceId]) -> Result<()> {
    let ready: HashSet<&InstanceId> = view.ready.iter().collect();
    if let Some(id) = attach.iter().find(|id| !ready.contains(id)) {
        return Err(violation(
            Invariant::OldKeptUntilNewProven,
            format!("{id} would receive traffic before it was proven healthy for the min-ready time"),
        ));
    }
    Ok(())
}

fn check_floor(view: &FleetView, attach: &[InstanceId], detach: &[InstanceId], limits: Limits) -> Result<()> {
    let before = view.serving_healthy();
    let detach: HashSet<&InstanceId> = detach.iter().collect();
    let healthy: HashSet<&InstanceId> = view.old_serving_healthy.iter().chain(&view.new_serving_healthy).collect();
    let lost = detach.iter().filter(|id| healthy.contains(*id)).count();
    let gained = attach.iter().filter(|id| !detach.contains(id)).count();
    let after = before + gained - lost;
    if after < limits.floor && after < before {
        return Err(violation(
            Invariant::HealthyFloor,
            format!("serving-healthy would drop from {before} to {after}, below the floor of {}", limits.floor),
        ));
    }
    Ok(())
}

/// At quiescence only serving-healthy instances of the target release remain.
pub fn check_quiescent(view: &FleetView) -> Result<()> {
    let leftovers = view.launching.len()
        + view.warming.len()
        + view.ready.len()
        + view.new_serving_unhealthy.len()
        + view.old_live();
    if leftovers > 0 {
        return Err(violation(
            Invariant::NoOrphans,
            format!(
                "{leftovers} instances would be left behind ({} not serving new, {} unhealthy serving, {} old)",
                view.launching.len() + view.warming.len() + view.ready.len(),
                view.new_serving_unhealthy.len(),
                view.old_live()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_views::{fresh, ids};

    const LIMITS: Limits = Limits { floor: 3, ceiling: 4 };

    #[test]
    fn floor_ceiling_and_serving_termination_are_refused() {
        let v = fresh(3, 3);
        let e = check_decision(&v, &Decision::Detach { ids: ids("old-", 1) }, LIMITS).unwrap_err();
        assert_eq!(e.invariant, Invariant::HealthyFloor, "{e:?}");
        let e = check_decision(&v, &Decision::Launch { count: 2 }, LIMITS).unwrap_err();
        assert_eq!(e.invariant, Invariant::SurgeCeiling, "{e:?}");
        let e = check_decision(&v, &Decision::Terminate { ids: ids("old-", 1) }, LIMITS).unwrap_err();
        assert_eq!(e.invariant, Invariant::OldKeptUntilNewProven, "{e:?}");
        assert!(check_decision(&v, &Decision::Launch { count: 1 }, LIMITS).is_ok());
    }

    #[test]
    fn switch_needs_proven_instances_and_keeps_the_floor() {
        let mut v = fresh(3, 3);
        v.warming = ids("new-", 3);
        let early = Decision::Switch { attach: ids("new-", 3), detach: ids("old-", 3) };
        assert!(check_decision(&v, &early, LIMITS).is_err());
        v.ready = std::mem::take(&mut v.warming);
        assert!(check_decision(&v, &early, LIMITS).is_ok());
        let short = Decision::Switch { attach: ids("new-", 2), detach: ids("old-", 3) };
        assert!(check_decision(&v, &short, LIMITS).is_err());
    }

    #[test]
    fn detaching_unhealthy_is_always_allowed() {
        let mut v = fresh(3, 2);
        v.old_serving_unhealthy = ids("sick-", 1);
        assert!(check_decision(&v, &Decision::Detach { ids: ids("sick-", 1) }, LIMITS).is_ok());
    }

    #[test]
    fn done_with_leftovers_is_an_orphan_violation() {
        let mut v = fresh(2, 1);
        v.new_serving_healthy = ids("new-", 2);
        let e = check_decision(&v, &Decision::Done, LIMITS).unwrap_err();
        assert_eq!(e.invariant, Invariant::NoOrphans, "{e:?}");
    }
}
