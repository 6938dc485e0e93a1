//! Observing the fleet: describe, the serving set and health, turned into a [`FleetView`].

use super::memory::Streak;
use super::*;

pub(super) struct Observation {
    pub(super) instances: Vec<Instance>,
    pub(super) serving: HashSet<InstanceId>,
    /// Whether each of `instances` serves: looked up once, used by every pass.
    pub(super) serves: Vec<bool>,
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
        let (failures, stand_ins) = self.memory.reconcile(&mut instances, window, asked_at, self.step, &self.id);
        self.memory.read_at = Some(asked_at);
        let (serves, checked) = self.checked_first(&mut instances, &serving);
        let health = self.judge(&instances, checked).await;
        Ok(Observation { instances, serving, serves, health, failures, stand_ins })
    }

    /// Moves the instances whose classification depends on their health (those of the target
    /// release and those serving) ahead of the rest, keeping the order within each group, and
    /// returns how many they are: the health check gets them as one slice, uncopied. Every
    /// group of the view (old and idle, lingering, ...) lies in one group or the other, so its
    /// order is the describe order still. An old instance that does not serve is old and idle
    /// whatever its health, so it is not checked.
    fn checked_first(&self, instances: &mut Vec<Instance>, serving: &HashSet<InstanceId>) -> (Vec<bool>, usize) {
        let target = self.target();
        // (serves, checked) per instance.
        let flags: Vec<(bool, bool)> = instances
            .iter()
            .map(|i| {
                let serves = serving.contains(&i.id);
                let checked = serves
                    || (i.state.is_live()
                        && target.is_some()
                        && i.release() == target
                        && (self.replacing.is_empty() || !self.replacing.contains(&i.id)));
                (serves, checked)
            })
            .collect();
        let checked = flags.iter().filter(|f| f.1).count();
        if checked == instances.len() {
            return (flags.into_iter().map(|f| f.0).collect(), checked);
        }
        let mut n = 0;
        let rest: Vec<Instance> = instances
            .extract_if(.., |_| {
                n += 1;
                !flags[n - 1].1
            })
            .collect();
        instances.extend(rest);
        // What is not checked does not serve.
        let mut serves: Vec<bool> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        serves.resize(instances.len(), false);
        (serves, checked)
    }

    /// Health of the first `checked` instances (see [`Deployment::checked_first`]); the rest
    /// are `Unknown`. A check that fails after its retries leaves them all `Unknown` for this
    /// step (see [`crate::health`]).
    pub(super) async fn judge(&mut self, instances: &[Instance], checked: usize) -> Vec<Health> {
        let mut health = vec![Health::Unknown; instances.len()];
        // Cleared below when the verdicts are not in hand: the next poll must read again.
        self.memory.settled = true;
        if checked == 0 {
            return health;
        }
        let subject = &instances[..checked];
        let check = self.inner.health.clone();
        let result = self.retrying("health", || check.check_many(subject)).await;
        self.calls.health += 1;
        match result {
            Ok(verdicts) if verdicts.len() == subject.len() => {
                for (slot, v) in health.iter_mut().zip(verdicts) {
                    *slot = v;
                }
            }
            Ok(verdicts) => {
                self.memory.settled = false;
                let error = format!("the check returned {} verdicts for {} instances", verdicts.len(), subject.len());
                self.pending.push_back(Event::HealthUnknown { error, instances: subject.len() });
            }
            Err(e) => {
                self.memory.settled = false;
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
        // Most of a fleet serves: sized once, not grown by doubling at every observation.
        view.old_serving_healthy.reserve(obs.instances.len());
        view.new_serving_healthy.reserve(obs.instances.len());
        let thresholds = self.inner.settings.thresholds;
        let started = self.started.unwrap_or(now);
        let target = self.target().cloned();
        let generation = self.step;
        let mut settled = true;
        self.memory.booted_unproven = false;
        for ((instance, health), &serving) in obs.instances.iter().zip(&obs.health).zip(&obs.serves) {
            let id = &instance.id;
            if instance.state.is_lingering() && !serving {
                view.lingering.push(id.clone());
                continue;
            }
            // (healthy, since when): one look-up of the streak per instance.
            let (healthy, since) = if instance.state.is_live() {
                // Looked up before inserting: most instances have a run already, and the
                // entry API would clone every id to find out.
                let streak = match self.memory.streaks.get_mut(id) {
                    Some(streak) => streak,
                    None => self.memory.streaks.entry(id.clone()).or_insert_with(|| Streak::first(serving)),
                };
                let healthy = streak.record(health, thresholds, generation, now);
                settled &= streak.settled();
                if let Health::Unhealthy(why) = health {
                    self.memory.last_unhealthy.insert(id.clone(), why.clone());
                }
                (healthy, if healthy { streak.healthy_since() } else { None })
            } else {
                (false, None)
            };
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
                (true, false, false) => {
                    self.memory.booted_unproven |= instance.state == InstanceState::Running;
                    &mut view.launching
                }
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
        self.memory.settled &= settled;
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
