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
        for id in &view.launching {
            if let Some(l) = self.memory.launched.get(id)
                && !l.failed
                && now >= l.at + deadline
            {
                expired.push((id.clone(), l.wave));
            }
        }
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
