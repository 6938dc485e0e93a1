//! Observing the fleet: read in full (describe, the serving set and health) or patched with
//! what a change feed lists as changed, and turned into a [`FleetView`].

use super::fleet::Fleet;
use super::memory::Streak;
use super::*;

pub(super) struct Observation {
    /// Instances this deployment launched that describe does not show yet, counted from its
    /// own record as pending: they may never have existed, so no health check is asked about
    /// them.
    pub(super) stand_ins: Vec<Instance>,
    /// New instances that stopped or vanished without the engine's doing, with their wave.
    pub(super) failures: Vec<(InstanceId, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Signature(pub(super) [usize; 10]);

impl Deployment {
    /// Brings `self.fleet` up to date, and completes it with what the engine's own record
    /// knows. A read that fails leaves the fleet as it was, to be read in full next time.
    pub(super) async fn observe(&mut self) -> Result<Observation> {
        let mut fleet = std::mem::take(&mut self.fleet);
        // Cleared below when the verdicts are not in hand: the next poll must read again.
        self.memory.settled = true;
        let read = match self.read_changes(&mut fleet).await {
            Some(read) => Ok(read),
            None => self.read_all(&mut fleet).await,
        };
        if read.is_err() {
            fleet.patchable = false;
        }
        self.fleet = fleet;
        let (asked_at, touched) = read?;
        let window = self.inner.provider.capabilities().consistency_window;
        let (failures, stand_ins) = self.memory.reconcile(&self.fleet, touched.as_deref(), window, asked_at, &self.id);
        self.memory.read_at = Some(asked_at);
        Ok(Observation { stand_ins, failures })
    }

    /// Reads the whole fleet: describe, the serving set, and the health of the instances it
    /// decides the place of. Returns when the read went out.
    async fn read_all(&mut self, fleet: &mut Fleet) -> Result<(Instant, Option<Vec<InstanceId>>)> {
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
        let target = self.target().cloned();
        let (mut read, checked) = Fleet::read(instances, serving, target.as_ref(), &self.replacing, fleet, asked_at);
        match self.judge(&read.instances[..checked]).await {
            Some(verdicts) => read.health[..checked].clone_from_slice(&verdicts),
            None => read.patchable = false,
        }
        *fleet = read;
        Ok((asked_at, None))
    }

    /// Patches `fleet` with what the change feed lists as changed since the last read, and
    /// judges the health of what changed (and of what is mid-way through a run of verdicts).
    /// Returns when the feed call went out and the ids it named; `None` when the fleet must
    /// be read in full: no feed, or one that cannot tell or failed, no earlier read to patch,
    /// another release to judge, instances to replace, or a full read due.
    async fn read_changes(&mut self, fleet: &mut Fleet) -> Option<(Instant, Option<Vec<InstanceId>>)> {
        let feed = self.inner.settings.feed.clone()?;
        let since = self.memory.read_at?;
        let asked_at = Instant::now();
        let due = fleet.full_read_at.is_none_or(|at| asked_at >= at + self.inner.settings.full_read_every);
        if !fleet.patchable || due || fleet.target.as_ref() != self.target() || !self.replacing.is_empty() {
            return None;
        }
        let query = Query::service(self.release.service());
        let answer = self.retrying("changes", || feed.changes_since(since, &query)).await;
        let changes = match answer {
            Ok(Some(changes)) => changes,
            Ok(None) => return None,
            Err(e) => {
                self.calls.deltas += 1;
                tracing::warn!(error = %e, "the change feed failed; reading the fleet in full");
                return None;
            }
        };
        self.calls.deltas += 1;
        let touched = fleet.patch(changes);
        let due = fleet.due_for_check(&touched);
        if !due.is_empty() {
            let subject: Vec<Instance> = due.iter().map(|&p| fleet.instances[p].clone()).collect();
            let verdicts = self.judge(&subject).await;
            if verdicts.is_none() {
                fleet.patchable = false;
            }
            let verdicts = verdicts.unwrap_or_else(|| vec![Health::Unknown; subject.len()]);
            for (p, verdict) in due.into_iter().zip(verdicts) {
                fleet.health[p] = verdict;
                fleet.fresh[p] = true;
            }
        }
        Some((asked_at, Some(touched)))
    }

    /// Health of `subject`; `None` when the check fails after its retries, or answers for
    /// other instances: they count as unknown for this step (see [`crate::health`]), and
    /// the next observation reads in full.
    pub(super) async fn judge(&mut self, subject: &[Instance]) -> Option<Vec<Health>> {
        if subject.is_empty() {
            return Some(Vec::new());
        }
        let check = self.inner.health.clone();
        let result = self.retrying("health", || check.check_many(subject)).await;
        self.calls.health += 1;
        match result {
            Ok(verdicts) if verdicts.len() == subject.len() => Some(verdicts),
            Ok(verdicts) => {
                self.memory.settled = false;
                let error = format!("the check returned {} verdicts for {} instances", verdicts.len(), subject.len());
                self.pending.push_back(Event::HealthUnknown { error, instances: subject.len() });
                None
            }
            Err(e) => {
                self.memory.settled = false;
                tracing::warn!(error = %e, "health check unavailable; instances count as unknown this step");
                self.pending.push_back(Event::HealthUnknown { error: e.to_string(), instances: subject.len() });
                None
            }
        }
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
        let size = self.fleet.instances.len() + obs.stand_ins.len();
        view.old_serving_healthy.reserve(size);
        view.new_serving_healthy.reserve(size);
        let thresholds = self.inner.settings.thresholds;
        let started = self.started.unwrap_or(now);
        // It turned healthy after the previous observation: that is the earliest it may have,
        // which is what the close polling should aim at.
        let earliest = self.memory.previous_observation.unwrap_or(now);
        let mut booted_unproven = false;
        let fleet = &mut self.fleet;
        fleet.unsettled.clear();
        for p in 0..fleet.instances.len() {
            let instance = &fleet.instances[p];
            let (id, serving) = (&instance.id, fleet.serves[p]);
            if instance.state.is_lingering() && !serving {
                view.lingering.push(id.clone());
                fleet.streaks[p] = None;
                continue;
            }
            // (healthy, since when).
            let (healthy, since) = if instance.state.is_live() {
                let slot = &mut fleet.streaks[p];
                // A verdict that is not fresh is the one the run last counted, on a settled
                // run (an unsettled one is judged again): counting it again changes nothing.
                let fresh = fleet.fresh[p] || slot.is_none();
                let streak = slot.get_or_insert_with(|| Streak::first(serving));
                let healthy = if fresh { streak.record(&fleet.health[p], thresholds, now) } else { streak.healthy() };
                if fresh && let Health::Unhealthy(why) = &fleet.health[p] {
                    self.memory.last_unhealthy.insert(id.clone(), why.clone());
                }
                if !streak.settled() {
                    fleet.unsettled.push(id.clone());
                }
                (healthy, if healthy { streak.healthy_since() } else { None })
            } else {
                fleet.streaks[p] = None;
                (false, None)
            };
            if since == Some(now) {
                self.memory.turned_healthy(id, earliest);
            }
            let bucket = match (fleet.is_target[p], serving, healthy) {
                (true, true, true) => &mut view.new_serving_healthy,
                (true, true, false) => &mut view.new_serving_unhealthy,
                (true, false, false) => {
                    booted_unproven |= instance.state == InstanceState::Running;
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
        }
        // Stand-ins are pending, serve nobody and have no verdict.
        let target = self.target();
        for instance in &obs.stand_ins {
            let replaced = !self.replacing.is_empty() && self.replacing.contains(&instance.id);
            let is_target = target.is_some() && instance.release() == target && !replaced;
            let bucket = if is_target { &mut view.launching } else { &mut view.old_idle };
            bucket.push(instance.id.clone());
            view.unconfirmed.push(instance.id.clone());
        }
        self.memory.booted_unproven = booted_unproven;
        self.memory.previous_observation = Some(now);
        self.memory.settled &= self.fleet.unsettled.is_empty();
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
