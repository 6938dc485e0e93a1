use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Count, Decision, FleetView, Limits, ReplacementStrategy, replace_toward};
use crate::error::{Error, Result};

/// Rolling: replace the fleet in batches bounded by a surge ceiling and an unavailability floor.
///
/// `max_surge` percents round up and `max_unavailable` percents round down, so 25% of 10 is a
/// surge of 3 and an unavailability of 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    max_surge: Count,
    max_unavailable: Count,
    pause: Duration,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling { max_surge: Count::Count(1), max_unavailable: Count::Count(0), pause: Duration::ZERO }
    }
}

impl Rolling {
    /// One extra instance at a time, never below the desired count.
    pub fn new() -> Self {
        Rolling::default()
    }

    /// How many instances may run above the desired count.
    pub fn max_surge(mut self, surge: Count) -> Self {
        self.max_surge = surge;
        self
    }

    /// How many serving instances the rollout may take away.
    pub fn max_unavailable(mut self, unavailable: Count) -> Self {
        self.max_unavailable = unavailable;
        self
    }

    /// How long to wait after a batch before launching the next.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    fn surge(&self, desired: usize) -> usize {
        self.max_surge.resolve(desired)
    }

    fn unavailable(&self, desired: usize) -> usize {
        match self.max_unavailable {
            Count::Count(n) => n.min(desired),
            Count::Percent(p) => desired * p as usize / 100,
        }
    }
}

impl ReplacementStrategy for Rolling {
    fn name(&self) -> &str {
        "rolling"
    }

    fn validate(&self, desired: usize) -> Result<()> {
        if desired == 0 {
            return Err(Error::invalid("desired", "must be at least 1"));
        }
        self.max_surge.validate("max_surge")?;
        self.max_unavailable.validate("max_unavailable")?;
        if self.surge(desired) == 0 && self.unavailable(desired) == 0 {
            return Err(Error::invalid(
                "max_surge",
                format!(
                    "max_surge ({}) and max_unavailable ({}) are both 0 for {desired} instances, so nothing could ever be replaced; set max_surge to at least 1",
                    self.max_surge, self.max_unavailable
                ),
            ));
        }
        Ok(())
    }

    fn limits(&self, desired: usize) -> Limits {
        Limits { floor: desired - self.unavailable(desired), ceiling: desired + self.surge(desired) }
    }

    fn decide(&self, view: &FleetView) -> Decision {
        let pause_end = view.last_change_at.map(|t| t + self.pause).filter(|end| view.now < *end);
        match replace_toward(view, view.desired, 0, self.limits(view.desired), pause_end.is_none()) {
            None => Decision::Done,
            Some(Decision::Wait { reason, until }) => match pause_end {
                Some(end) if view.new_live() < view.desired => {
                    Decision::wait_until("pausing between batches", until.map_or(end, |u| u.min(end)))
                }
                _ => Decision::Wait { reason, until },
            },
            Some(d) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_views::{fresh, ids};

    #[test]
    fn surge_one_unavailable_zero_replaces_one_at_a_time() {
        let s = Rolling::new();
        let mut v = fresh(3, 3);
        assert_eq!(s.decide(&v), Decision::Launch { count: 1 });
        v.launching = ids("new-", 1);
        assert!(matches!(s.decide(&v), Decision::Wait { .. }));
        v.launching.clear();
        v.ready = ids("new-", 1);
        assert_eq!(s.decide(&v), Decision::Attach { ids: ids("new-", 1) });
        v.ready.clear();
        v.new_serving_healthy = ids("new-", 1);
        assert_eq!(s.decide(&v), Decision::Detach { ids: ids("old-", 1) });
        v.old_idle = vec![v.old_serving_healthy.remove(0)];
        assert_eq!(s.decide(&v), Decision::Terminate { ids: ids("old-", 1) });
        v.old_idle.clear();
        assert_eq!(s.decide(&v), Decision::Launch { count: 1 });
    }

    #[test]
    fn unavailable_without_surge_removes_first() {
        let s = Rolling::new().max_surge(Count::Count(0)).max_unavailable(Count::Percent(50));
        let v = fresh(4, 4);
        assert_eq!(s.limits(4), Limits { floor: 2, ceiling: 4 });
        assert_eq!(s.decide(&v), Decision::Detach { ids: ids("old-", 2) });
    }

    #[test]
    fn pause_holds_the_next_batch() {
        let s = Rolling::new().pause(Duration::from_secs(30));
        let mut v = fresh(2, 1);
        v.new_serving_healthy = ids("new-", 1);
        v.last_change_at = Some(Duration::from_secs(10));
        v.now = Duration::from_secs(20);
        assert_eq!(s.decide(&v), Decision::wait_until("pausing between batches", Duration::from_secs(40)));
        v.now = Duration::from_secs(40);
        assert_eq!(s.decide(&v), Decision::Launch { count: 1 });
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let e = Rolling::new().max_surge(Count::Count(0)).validate(5).unwrap_err();
        assert!(e.to_string().contains("max_surge"), "{e}");
        let e = Rolling::new().max_unavailable(Count::Percent(101)).validate(5).unwrap_err();
        assert!(e.to_string().contains("max_unavailable"), "{e}");
        // 10% of 5 rounds down to 0 unavailable, with no surge: nothing could move.
        assert!(Rolling::new().max_surge(Count::Count(0)).max_unavailable(Count::Percent(10)).validate(5).is_err());
    }

    #[test]
    fn done_when_all_new_serve_and_no_old_remains() {
        let s = Rolling::new();
        let mut v = fresh(2, 0);
        v.new_serving_healthy = ids("new-", 2);
        assert_eq!(s.decide(&v), Decision::Done);
    }
}
