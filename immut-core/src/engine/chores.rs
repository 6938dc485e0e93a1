//! Chores the engine does before it asks the strategy, because no strategy should have to think
//! of them: finishing off stopped instances, replacing new instances that failed their
//! deadline (within the budget), and terminating again what it terminated once if a stale
//! read let it survive.

use super::*;

impl Deployment {
    /// The detach or termination the fleet needs before the strategy decides, if any. Spends the
    /// replacement budget on new instances past their deadline; an error once it is spent.
    pub(super) fn chores(&mut self, view: &FleetView, obs: &Observation) -> Result<Option<Decision>> {
        let now = Instant::now();
        let deadline = self.inner.settings.instance_deadline;
        let mut expired = Vec::new();
        let (mut next, mut expected) = (None::<Instant>, None::<Instant>);
        let typical = self.memory.typical_boot();
        for id in &view.launching {
            if let Some(l) = self.memory.launched.get(id)
                && !l.failed
            {
                let due = l.at + deadline;
                if now >= due {
                    expired.push((id.clone(), l.wave));
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
                if let Some(t) = typical {
                    let at = l.at + t;
                    expected = Some(expected.map_or(at, |e| e.min(at)));
                }
            }
        }
        self.memory.next_deadline = next;
        self.memory.next_expected = expected;
        if matches!(self.phase, Phase::Deploying) {
            self.memory.spend(&expired, self.inner.settings.budget, self.inner.settings.desired)?;
        }
        for (id, _) in &expired {
            if let Some(l) = self.memory.launched.get_mut(id) {
                l.failed = true;
            }
        }
        // A stopped instance still in the balancer serves nobody: take it out first.
        let stopped_serving: Vec<InstanceId> = obs
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Stopped && obs.serving.contains(&i.id))
            .map(|i| i.id.clone())
            .collect();
        if !stopped_serving.is_empty() {
            return Ok(Some(Decision::Detach { ids: stopped_serving }));
        }
        let mut ids: Vec<InstanceId> = expired.into_iter().map(|(id, _)| id).collect();
        ids.extend(
            obs.instances
                .iter()
                .filter(|i| i.state == InstanceState::Stopped && !obs.serving.contains(&i.id))
                .map(|i| i.id.clone()),
        );
        ids.extend(self.memory.reappeared(&obs.instances).into_iter().filter(|id| !obs.serving.contains(id)));
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(None);
        }
        tracing::info!(
            count = ids.len(),
            "terminating failed, stopped or resurfaced instances before the strategy decides"
        );
        Ok(Some(Decision::Terminate { ids }))
    }
}
