use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Decision, FleetView, Limits, ReplacementStrategy, waiting};
use crate::error::{Error, Result};

/// Who promotes the new release once it is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promotion {
    /// Switch as soon as every new instance is ready.
    #[default]
    Auto,
    /// Wait for the `promote` gate to pass.
    Manual,
    /// Analysis decides: the `promote` gate before the switch (pre-promotion, against the idle
    /// set), then the `bake` gate during the bake (post-promotion), which a failed measurement
    /// rolls back at once. The bake lasts at least until the `bake` gate passed.
    Analysis,
}

/// Blue/green: launch a whole new fleet beside the old one, switch all traffic at once, bake,
/// keep the old fleet idle for a window (a rollback is one switch back), then terminate it.
///
/// Capacity: the floor is the desired count, the ceiling twice that.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlueGreen {
    bake: Duration,
    keep_old: Duration,
    promotion: Promotion,
}

/// The gate a manual promotion waits on.
pub const PROMOTE_GATE: &str = "promote";

/// The gate post-promotion analysis decides during the bake ([`Promotion::Analysis`]).
pub const BAKE_GATE: &str = "bake";

impl BlueGreen {
    /// Automatic promotion, no bake, no keep-old window.
    pub fn new() -> Self {
        BlueGreen::default()
    }

    /// How long the new fleet must stay healthy after the switch before the old one may go.
    /// An unhealthy new instance during the bake fails the deployment (and rolls back).
    pub fn bake(mut self, bake: Duration) -> Self {
        self.bake = bake;
        self
    }

    /// How long the old fleet stays idle after the bake, ready for a switch back.
    pub fn keep_old(mut self, keep_old: Duration) -> Self {
        self.keep_old = keep_old;
        self
    }

    /// Sets who promotes.
    pub fn promotion(mut self, promotion: Promotion) -> Self {
        self.promotion = promotion;
        self
    }
}

impl ReplacementStrategy for BlueGreen {
    fn name(&self) -> &str {
        "blue_green"
    }

    fn validate(&self, desired: usize) -> Result<()> {
        if desired == 0 {
            return Err(Error::invalid("desired", "must be at least 1"));
        }
        Ok(())
    }

    fn limits(&self, desired: usize) -> Limits {
        Limits { floor: desired, ceiling: desired * 2 }
    }

    fn decide(&self, view: &FleetView) -> Decision {
        let n = view.desired;
        let new_serving = view.new_serving_healthy.len() + view.new_serving_unhealthy.len();
        let old_serving = view.old_serving_healthy.len() + view.old_serving_unhealthy.len();
        if new_serving >= n && old_serving == 0 {
            let switched = view.switched_at.or(view.last_change_at).unwrap_or_default();
            // A first deployment replaces nothing: there is no old release to keep baking for.
            let bake = if view.previous_count == 0 && view.old_idle.is_empty() { Duration::ZERO } else { self.bake };
            let analysing =
                self.promotion == Promotion::Analysis && !bake.is_zero() && !view.passed_gates.contains(BAKE_GATE);
            if view.now < switched + bake || analysing {
                if !view.new_serving_unhealthy.is_empty() {
                    return Decision::Fail {
                        reason: format!(
                            "{} new instances turned unhealthy during the bake",
                            view.new_serving_unhealthy.len()
                        ),
                    };
                }
                if analysing {
                    return Decision::Gate { name: BAKE_GATE.to_owned() };
                }
                return Decision::wait_until("baking the new release", switched + bake);
            }
            if !view.old_idle.is_empty() {
                let release_at = switched + self.bake + self.keep_old;
                if view.now < release_at {
                    return Decision::wait_until("keeping the old release idle for a fast rollback", release_at);
                }
                return Decision::Terminate { ids: view.old_idle.clone() };
            }
            if !view.new_serving_unhealthy.is_empty() {
                // Done only with every new instance healthy; the progress deadline bounds this.
                return Decision::wait(format!(
                    "{} new serving instances unhealthy after the bake",
                    view.new_serving_unhealthy.len()
                ));
            }
            return Decision::Done;
        }
        let missing = n.saturating_sub(view.new_live());
        let room = self.limits(n).ceiling.saturating_sub(view.occupied());
        if missing > 0 && room > 0 {
            return Decision::Launch { count: missing.min(room) };
        }
        if view.ready.len() + new_serving < n {
            return waiting(view, n);
        }
        if self.promotion != Promotion::Auto && !view.passed_gates.contains(PROMOTE_GATE) {
            return Decision::Gate { name: PROMOTE_GATE.to_owned() };
        }
        let mut detach = view.old_serving_healthy.clone();
        detach.extend(view.old_serving_unhealthy.iter().cloned());
        Decision::Switch { attach: view.ready.clone(), detach }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_views::{fresh, ids};

    #[test]
    fn launches_all_then_switches_then_bakes_then_terminates() {
        let s = BlueGreen::new().bake(Duration::from_secs(10)).keep_old(Duration::from_secs(5));
        let mut v = fresh(3, 3);
        assert_eq!(s.decide(&v), Decision::Launch { count: 3 });
        v.launching = ids("new-", 3);
        assert!(matches!(s.decide(&v), Decision::Wait { .. }));
        v.launching.clear();
        v.ready = ids("new-", 3);
        assert_eq!(s.decide(&v), Decision::Switch { attach: ids("new-", 3), detach: ids("old-", 3) });
        v.ready.clear();
        v.new_serving_healthy = ids("new-", 3);
        v.old_idle = std::mem::take(&mut v.old_serving_healthy);
        v.switched_at = Some(Duration::from_secs(100));
        v.now = Duration::from_secs(105);
        assert_eq!(s.decide(&v), Decision::wait_until("baking the new release", Duration::from_secs(110)));
        v.now = Duration::from_secs(111);
        assert!(matches!(s.decide(&v), Decision::Wait { until: Some(t), .. } if t == Duration::from_secs(115)));
        v.now = Duration::from_secs(115);
        assert_eq!(s.decide(&v), Decision::Terminate { ids: ids("old-", 3) });
        v.old_idle.clear();
        assert_eq!(s.decide(&v), Decision::Done);
    }

    #[test]
    fn unhealthy_during_bake_fails_and_manual_promotion_gates() {
        let s = BlueGreen::new().bake(Duration::from_secs(10)).promotion(Promotion::Manual);
        let mut v = fresh(2, 2);
        v.ready = ids("new-", 2);
        assert_eq!(s.decide(&v), Decision::Gate { name: PROMOTE_GATE.into() });
        v.passed_gates.insert(PROMOTE_GATE.into());
        assert!(matches!(s.decide(&v), Decision::Switch { .. }));
        let mut v = fresh(2, 0);
        v.previous_count = 2;
        v.new_serving_healthy = ids("new-", 1);
        v.new_serving_unhealthy = ids("bad-", 1);
        v.switched_at = Some(Duration::ZERO);
        assert!(matches!(s.decide(&v), Decision::Fail { .. }));
        // A first deployment has nothing to bake against: done once all of it serves healthy.
        let mut first = fresh(2, 0);
        first.new_serving_healthy = ids("new-", 2);
        first.switched_at = Some(Duration::ZERO);
        assert_eq!(s.decide(&first), Decision::Done);
    }
}
