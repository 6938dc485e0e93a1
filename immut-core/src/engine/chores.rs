//! Chores the engine does before it asks the strategy, because no strategy should have to think
//! of them: finishing off stopped instances, replacing new instances that failed their
//! deadline (within the budget), and terminating again what it terminated once if a stale
//! read let it survive.

use super::*;

impl Deployment {
    /// When the budget ran out, adds what the provider knows of the last failed instance
    /// (bounded to 2 s, so a slow backend cannot hold the rollback).
    pub(super) async fn explain(&self, spent: Result<()>) -> Result<()> {
        let Err(e) = spent else { return Ok(()) };
        let Some(id) = e.ids().last().cloned() else { return Err(e) };
        let detail =
            tokio::time::timeout(Duration::from_secs(2), self.inner.provider.failure_detail(&id)).await.ok().flatten();
        match detail {
            Some(detail) => {
                Err(Error::new(e.kind(), format!("{}; {id}: {detail}", e.message())).with_ids(e.ids().iter().cloned()))
            }
            None => Err(e),
        }
    }

    /// The detach or termination the fleet needs before the strategy decides, if any. Spends the
    /// replacement budget on new instances past their deadline; an error once it is spent.
    pub(super) async fn chores(&mut self, view: &FleetView, obs: &Observation) -> Result<Option<Decision>> {
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
            let spent = self.memory.spend(&expired, self.inner.settings.budget, self.inner.settings.desired);
            self.explain(spent).await?;
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
