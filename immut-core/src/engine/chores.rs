//! Chores the engine does before it asks the strategy, because no strategy should have to think
//! of them: finishing off stopped instances, replacing new instances that failed their
//! deadline (within the budget), and terminating again what it terminated once if a stale
//! read let it survive.

use super::*;

impl Deployment {
    /// When the budget ran out, adds why the last failed instance failed: its latest unhealthy
    /// verdict, and what the provider knows of it (bounded to 2 s, so a slow backend cannot
    /// hold the rollback).
    pub(super) async fn explain(&self, spent: Result<()>) -> Result<()> {
        let Err(e) = spent else { return Ok(()) };
        let Some(id) = e.ids().last().cloned() else { return Err(e) };
        let verdict = self.memory.last_unhealthy.get(&id).map(|why| format!("last health verdict: {why}"));
        let detail =
            tokio::time::timeout(Duration::from_secs(2), self.inner.provider.failure_detail(&id)).await.ok().flatten();
        let known: Vec<String> = verdict.into_iter().chain(detail).collect();
        if known.is_empty() {
            return Err(e);
        }
        let message = format!("{}; {id}: {}", e.message(), known.join("; "));
        Err(Error::new(e.kind(), message).with_ids(e.ids().iter().cloned()))
    }

    /// The detach or termination the fleet needs before the strategy decides, if any. Spends the
    /// replacement budget on new instances past their deadline; an error once it is spent.
    pub(super) async fn chores(&mut self, view: &FleetView) -> Result<Option<Decision>> {
        let now = Instant::now();
        let deadline = self.inner.settings.instance_deadline;
        let mut expired = Vec::new();
        let mut next = None::<Instant>;
        let mut expected = None::<(Instant, Instant, Duration)>;
        let range = self.memory.boot_range();
        let interval = self.inner.settings.poll_interval;
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
                if let Some((shortest, longest)) = range {
                    // A tenth of the shortest either side, and one interval past the longest:
                    // a wave a little faster or slower than any seen so far is still found
                    // closely, though few samples show little of the spread.
                    let margin = shortest / 10;
                    let (from, to) = (l.at + shortest - margin, l.at + longest + margin + interval);
                    let widened = expected.map_or((from, to), |(f, t, _)| (f.min(from), t.max(to)));
                    expected = Some((widened.0, widened.1, Duration::ZERO));
                }
            }
        }
        self.memory.next_deadline = next;
        // Closer in a narrow window than in a wide one, so that a wide spread of boot times
        // costs about as many polls as a narrow one: about 60 in the window at most.
        // Never faster than the backend's read quotas sustain.
        let fastest = self.inner.provider.capabilities().min_poll_interval.max(Duration::from_millis(100));
        expected =
            expected.map(|(from, to, _)| (from, to, (interval / 10).max((to - from) / 60).max(fastest).min(interval)));
        // Before any instance of this deployment turned healthy, one that runs has only its
        // health checks left to pass: polled at an eighth of the interval until it does (or
        // its deadline comes).
        if range.is_none() && self.memory.booted_unproven {
            expected = Some((now, now + deadline, (interval / 8).max(fastest).min(interval)));
        }
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
        let fleet = &self.fleet;
        let stopped_serving: Vec<InstanceId> =
            fleet.stopped.iter().filter(|id| fleet.serving.contains(*id)).cloned().collect();
        if !stopped_serving.is_empty() {
            return Ok(Some(Decision::Detach { ids: stopped_serving }));
        }
        // Every failed new instance still up, not only those that failed just now: a detach
        // above may have gone first, and a failed instance is never expired twice.
        let mut ids: Vec<InstanceId> = expired.into_iter().map(|(id, _)| id).collect();
        ids.extend(
            view.launching
                .iter()
                .filter(|id| self.memory.launched.get(*id).is_some_and(|l| l.failed && !l.terminated))
                .cloned(),
        );
        ids.extend(fleet.stopped.iter().filter(|id| !fleet.serving.contains(*id)).cloned());
        ids.extend(self.memory.reappeared(fleet).into_iter().filter(|id| !fleet.serving.contains(id)));
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
