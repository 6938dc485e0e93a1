use super::{Decision, FleetView, Limits, replace_toward};

/// How the engine goes back: the view it is given is inverted, so "new" is the previous release
/// and "old" the failed one. It restores the previous release's traffic first, in one switch
/// where enough of it is ready, then removes the failed release within the same limits as the
/// deployment.
#[derive(Debug, Clone)]
pub(crate) struct Rollback {
    pub limits: Limits,
    pub can_launch: bool,
}

impl Rollback {
    pub fn decide(&self, view: &FleetView) -> Decision {
        let old_serving = view.old_serving_healthy.len() + view.old_serving_unhealthy.len();
        if !view.ready.is_empty()
            && old_serving > 0
            && view.ready.len() + view.new_serving_healthy.len() >= view.desired
        {
            let mut detach = view.old_serving_unhealthy.clone();
            detach.extend(view.old_serving_healthy.iter().cloned());
            return Decision::Switch { attach: view.ready.clone(), detach };
        }
        match replace_toward(view, view.desired, 0, self.limits, self.can_launch) {
            None => Decision::Done,
            Some(Decision::Wait { .. }) if !self.can_launch && view.new_live() < view.desired => Decision::Fail {
                reason: format!(
                    "the previous release has {} of {} instances left and cannot be relaunched because the deployer was not given it",
                    view.new_live(),
                    view.desired
                ),
            },
            Some(d) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_views::ids;

    #[test]
    fn switches_back_in_one_step_when_the_old_fleet_is_idle() {
        let r = Rollback { limits: Limits { floor: 2, ceiling: 4 }, can_launch: true };
        let v = FleetView {
            desired: 2,
            ready: ids("prev-", 2),
            old_serving_unhealthy: ids("bad-", 2),
            ..FleetView::default()
        };
        assert_eq!(r.decide(&v), Decision::Switch { attach: ids("prev-", 2), detach: ids("bad-", 2) });
    }

    #[test]
    fn terminates_unserving_failed_instances_and_relaunches_previous() {
        let r = Rollback { limits: Limits { floor: 2, ceiling: 3 }, can_launch: true };
        let mut v = FleetView {
            desired: 2,
            new_serving_healthy: ids("prev-", 1),
            old_idle: ids("bad-", 2),
            ..FleetView::default()
        };
        assert_eq!(r.decide(&v), Decision::Terminate { ids: ids("bad-", 2) });
        v.old_idle.clear();
        assert_eq!(r.decide(&v), Decision::Launch { count: 1 });
        let r = Rollback { can_launch: false, ..r };
        assert!(matches!(r.decide(&v), Decision::Fail { .. }));
    }
}
