//! Observing the fleet: describe, the serving set and health, turned into a [`FleetView`].

use super::memory::Streak;
use super::*;

pub(super) struct Observation {
    pub(super) instances: Vec<Instance>,
    pub(super) serving: HashSet<InstanceId>,
    pub(super) health: Vec<Health>,
    /// New instances that stopped or vanished without the engine's doing, with their wave.
    pub(super) failures: Vec<(InstanceId, u32)>,
    /// Instances added from the engine's own record because describe does not show them yet.
    pub(super) stand_ins: HashSet<InstanceId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Signature(pub(super) [usize; 10]);

impl Deployment {
    pub(super) async fn observe(&mut self) -> Result<Observation> {
        let (provider, traffic) = (&self.inner.provider, &self.inner.traffic);
        let query = Query::service(self.release.service());
        let settings = &self.inner.settings;
        // A describe answer shows the fleet as it was when the call went out, however long
        // the answer (or its retries, or the serving read beside it) took.
        let asked_at = Instant::now();
        let (described, serving) = tokio::join!(
            retry_call(settings, "describe", || provider.describe(&query)),
            retry_call(settings, "serving", || traffic.serving()),
        );
        let mut instances = self.absorb(described)?;
        if !self.replacing.is_empty() {
            let query = Query::ids(self.replacing.iter().cloned()).with_unmanaged();
            let provider = self.inner.provider.clone();
            let extra = self.retrying("describe", || provider.describe(&query)).await?;
            let known: HashSet<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
            instances.extend(extra.into_iter().filter(|i| !known.contains(&i.id)));
        }
        let serving: HashSet<InstanceId> = self.absorb(serving)?.into_iter().collect();
        self.calls.describe += 1;
        self.calls.serving += 1;
        let window = self.inner.provider.capabilities().consistency_window;
        let (failures, stand_ins) = self.memory.reconcile(&mut instances, window, asked_at, self.step);
        let health = self.judge(&instances, &serving).await;
        Ok(Observation { instances, serving, health, failures, stand_ins })
    }

    /// Health of the instances whose classification depends on it: those of the target
    /// release and those serving. An old instance that does not serve is old and idle
    /// whatever its health, so it is not checked. A check that fails after its retries
    /// leaves the instances `Unknown` for this step (see [`crate::health`]).
    pub(super) async fn judge(&mut self, instances: &[Instance], serving: &HashSet<InstanceId>) -> Vec<Health> {
        let target = self.target().cloned();
        let decides = |i: &Instance| {
            serving.contains(&i.id)
                || (i.state.is_live()
                    && target.is_some()
                    && i.release() == target.as_ref()
                    && !self.replacing.contains(&i.id))
        };
        let checked: Vec<usize> = (0..instances.len()).filter(|&n| decides(&instances[n])).collect();
        let mut health = vec![Health::Unknown; instances.len()];
        if checked.is_empty() {
            return health;
        }
        // Most steps check every instance: then the fleet is passed as it is, uncopied.
        let copied: Vec<Instance>;
        let subject: &[Instance] = if checked.len() == instances.len() {
            instances
        } else {
            copied = checked.iter().map(|&n| instances[n].clone()).collect();
            &copied
        };
        let check = self.inner.health.clone();
        let result = self.retrying("health", || check.check_many(subject)).await;
        self.calls.health += 1;
        match result {
            Ok(verdicts) if verdicts.len() == subject.len() => {
                for (n, v) in checked.into_iter().zip(verdicts) {
                    health[n] = v;
                }
            }
            Ok(verdicts) => {
                let error = format!("the check returned {} verdicts for {} instances", verdicts.len(), subject.len());
                self.pending.push_back(Event::HealthUnknown { error, instances: subject.len() });
            }
            Err(e) => {
                tracing::warn!(error = %e, "health check unavailable; instances count as unknown this step");
                self.pending.push_back(Event::HealthUnknown { error: e.to_string(), instances: subject.len() });
            }
        }
        health
    }

    pub(super) fn build_view(&mut self, obs: &Observation) -> FleetView {
        let now = Instant::now();
        let min_ready = self.inner.settings.min_ready;
        let mut view = FleetView {
            now: self.elapsed(),
            desired: match self.phase {
                Phase::RollingBack { .. } => self.previous_count,
                _ => self.inner.settings.desired,
            },
            previous_count: self.previous_count,
            last_change_at: self.last_change_at,
            switched_at: self.switched_at,
            passed_gates: self.passed_gates.clone(),
            lingering_holds_quota: self.inner.provider.capabilities().lingering_holds_quota,
            ..FleetView::default()
        };
        let thresholds = self.inner.settings.thresholds;
        let started = self.started.unwrap_or(now);
        let target = self.target().cloned();
        let generation = self.step;
        for (instance, health) in obs.instances.iter().zip(&obs.health) {
            let id = &instance.id;
            let serving = obs.serving.contains(id);
            if instance.state.is_lingering() && !serving {
                view.lingering.push(id.clone());
                continue;
            }
            let healthy = instance.state.is_live()
                && self
                    .memory
                    .streaks
                    .entry(id.clone())
                    .or_insert_with(|| Streak::first(serving))
                    .record(health, thresholds, generation, now);
            let since = if healthy { self.memory.streaks.get(id).and_then(Streak::healthy_since) } else { None };
            if since == Some(now) {
                // It turned healthy after the previous observation: that is the earliest it
                // may have, which is what the close polling should aim at.
                let earliest = self.memory.previous_observation.unwrap_or(now);
                self.memory.turned_healthy(id, earliest);
            }
            let replaced = !self.replacing.is_empty() && self.replacing.contains(id);
            let is_target = target.is_some() && instance.release() == target.as_ref() && !replaced;
            let bucket = match (is_target, serving, healthy) {
                (true, true, true) => &mut view.new_serving_healthy,
                (true, true, false) => &mut view.new_serving_unhealthy,
                (true, false, false) => &mut view.launching,
                (true, false, true) => {
                    let ready_at = since.expect("healthy has a since") + min_ready;
                    if ready_at <= now {
                        &mut view.ready
                    } else {
                        let at = ready_at - started;
                        view.next_ready_at = Some(view.next_ready_at.map_or(at, |t| t.min(at)));
                        &mut view.warming
                    }
                }
                (false, true, true) => &mut view.old_serving_healthy,
                (false, true, false) => &mut view.old_serving_unhealthy,
                (false, false, _) => &mut view.old_idle,
            };
            bucket.push(id.clone());
            if !obs.stand_ins.is_empty() && obs.stand_ins.contains(id) {
                view.unconfirmed.push(id.clone());
            }
        }
        self.memory.previous_observation = Some(now);
        // Only instances still observed keep their run of verdicts.
        self.memory.streaks.retain(|_, s| s.seen_at_step() == generation);
        view
    }

    pub(super) fn note_progress(&mut self, view: &FleetView) {
        let signature = Signature([
            view.launching.len(),
            view.warming.len(),
            view.ready.len(),
            view.new_serving_healthy.len(),
            view.new_serving_unhealthy.len(),
            view.old_serving_healthy.len(),
            view.old_serving_unhealthy.len(),
            view.old_idle.len(),
            view.passed_gates.len(),
            view.lingering.len(),
        ]);
        if signature != self.signature {
            self.signature = signature;
            self.last_progress = Instant::now();
        }
    }
}
