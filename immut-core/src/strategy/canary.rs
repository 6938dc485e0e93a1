use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Count, Decision, FleetView, Limits, ReplacementStrategy, replace_toward};
use crate::error::{Error, Result};

/// Canary: grow the new release through steps (a count or a percent of the desired count).
/// After each step but the last it pauses, then asks the analysis gate `canary-step-N` whether
/// to go on; a failing gate rolls back.
///
/// A step's new instances come on top of the old ones: the old instances that a step replaces
/// are terminated only once that step's gate has passed, so a canary that fails its analysis
/// rolls back with every old instance still serving.
///
/// Capacity: the floor is the desired count; the ceiling adds the largest step increment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    steps: Vec<Count>,
    pause: Duration,
}

impl Canary {
    /// Steps in increasing order; a final 100% step is implied.
    pub fn new(steps: impl IntoIterator<Item = Count>) -> Self {
        Canary { steps: steps.into_iter().collect(), pause: Duration::ZERO }
    }

    /// How long to observe each step before its gate.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// The gate name after step `step` (1-based).
    pub fn gate_name(step: usize) -> String {
        format!("canary-step-{step}")
    }

    /// The new-instance target of each step, ending at `desired`. Steps that resolve to the
    /// same count (a small fleet) merge into one.
    pub fn targets(&self, desired: usize) -> Vec<usize> {
        let mut targets: Vec<usize> = self.steps.iter().map(|s| s.resolve(desired).min(desired)).collect();
        targets.push(desired);
        targets.dedup();
        targets
    }
}

impl ReplacementStrategy for Canary {
    fn name(&self) -> &str {
        "canary"
    }

    fn validate(&self, desired: usize) -> Result<()> {
        if desired == 0 {
            return Err(Error::invalid("desired", "must be at least 1"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            step.validate(&format!("steps[{i}]"))?;
        }
        let targets = self.targets(desired);
        for (i, pair) in targets.windows(2).enumerate() {
            if pair[0] == 0 || pair[1] <= pair[0] {
                return Err(Error::invalid(
                    &format!("steps[{i}]"),
                    format!(
                        "steps resolve to {targets:?} instances for {desired} desired; each step must be larger than the one before and above 0"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn limits(&self, desired: usize) -> Limits {
        let targets = self.targets(desired);
        let increment =
            targets.iter().scan(0, |prev, &t| Some(t - std::mem::replace(prev, t))).max().unwrap_or(desired);
        Limits { floor: desired, ceiling: desired + increment }
    }

    fn decide(&self, view: &FleetView) -> Decision {
        let targets = self.targets(view.desired);
        let step = (1..targets.len()).take_while(|s| view.passed_gates.contains(&Self::gate_name(*s))).count();
        // The old instances a step replaces go only after its gate; the last step has none.
        let old_keep = match step {
            _ if step + 1 == targets.len() => 0,
            0 => view.desired,
            _ => view.desired - targets[step - 1],
        };
        match replace_toward(view, targets[step], old_keep, self.limits(view.desired), true) {
            Some(d) => d,
            None if step + 1 == targets.len() => Decision::Done,
            None => {
                let observe_until = view.last_change_at.unwrap_or_default() + self.pause;
                if view.now < observe_until {
                    Decision::wait_until(format!("observing canary step {}", step + 1), observe_until)
                } else {
                    Decision::Gate { name: Self::gate_name(step + 1) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_views::{fresh, ids};

    #[test]
    fn steps_resolve_and_validate() {
        let c = Canary::new([Count::Count(1), Count::Percent(50)]);
        assert_eq!(c.targets(10), vec![1, 5, 10]);
        assert_eq!(Canary::new([Count::Count(1), Count::Percent(25), Count::Percent(50)]).targets(4), vec![1, 2, 4]);
        assert_eq!(c.limits(10), Limits { floor: 10, ceiling: 15 });
        assert!(c.validate(10).is_ok());
        let e = Canary::new([Count::Percent(50), Count::Percent(10)]).validate(10).unwrap_err();
        assert!(e.to_string().contains("steps[0]"), "{e}");
        assert!(Canary::new([Count::Percent(150)]).validate(10).is_err());
    }

    #[test]
    fn gates_between_steps() {
        let c = Canary::new([Count::Count(1)]).pause(Duration::from_secs(60));
        let mut v = fresh(4, 4);
        assert_eq!(c.decide(&v), Decision::Launch { count: 1 });
        v.new_serving_healthy = ids("new-", 1);
        v.last_change_at = Some(Duration::from_secs(5));
        v.now = Duration::from_secs(6);
        assert!(matches!(c.decide(&v), Decision::Wait { until: Some(t), .. } if t == Duration::from_secs(65)));
        v.now = Duration::from_secs(65);
        assert_eq!(c.decide(&v), Decision::Gate { name: "canary-step-1".into() });
        v.passed_gates.insert("canary-step-1".into());
        assert!(matches!(c.decide(&v), Decision::Detach { ids } if ids.len() == 1));
        v.old_serving_healthy.truncate(3);
        assert_eq!(c.decide(&v), Decision::Launch { count: 3 });
    }

    #[test]
    fn no_old_instance_goes_before_the_first_gate() {
        let c = Canary::new([Count::Count(1), Count::Percent(50)]);
        let mut v = fresh(10, 10);
        assert_eq!(c.decide(&v), Decision::Launch { count: 1 });
        v.new_serving_healthy = ids("new-", 1);
        assert_eq!(c.decide(&v), Decision::Gate { name: "canary-step-1".into() });
        assert_eq!(v.old_serving_healthy.len(), 10);
        v.passed_gates.insert("canary-step-1".into());
        // Step 2 keeps the nine old instances that step 1 did not replace, until its own gate.
        assert!(matches!(c.decide(&v), Decision::Detach { ids } if ids.len() == 1));
        v.old_serving_healthy.truncate(9);
        assert_eq!(c.decide(&v), Decision::Launch { count: 4 });
        v.new_serving_healthy = ids("new-", 5);
        assert_eq!(c.decide(&v), Decision::Gate { name: "canary-step-2".into() });
        assert!(v.occupied() <= c.limits(10).ceiling);
    }
}
