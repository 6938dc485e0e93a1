//! What the engine remembers of its own actions, so that a cloud's stale or partial answers
//! cannot fool it (read-your-writes): the instances it launched, counted from its own record
//! until describe shows them; the ones it terminated, terminated again should they show up
//! live; the replacements spent against the budget; and each instance's run of health verdicts.

use super::fleet::Fleet;
use super::*;

/// An instance this deployment launched or adopted.
#[derive(Debug, Clone)]
pub(super) struct Launched {
    /// When the launch call returned it.
    pub(super) at: Instant,
    /// Its wave.
    pub(super) wave: u32,
    /// As the launch call returned it; stands in for it while describe cannot see it.
    pub(super) instance: Instance,
    /// Whether describe has shown it.
    pub(super) seen: bool,
    /// Whether it already counted as a failure.
    pub(super) failed: bool,
    /// Whether this deployment terminated it: its going away is no failure.
    pub(super) terminated: bool,
    /// Whether the balancer was told to probe it ([`Traffic::prepare`]).
    pub(super) prepared: bool,
}

/// A run of health verdicts on one instance.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Streak {
    ok: u32,
    bad: u32,
    healthy: bool,
    /// Since when it has counted as healthy, for the min-ready time.
    healthy_since: Option<Instant>,
}

impl Streak {
    /// The run an instance starts with when first observed: one already serving is presumed
    /// healthy (it takes the unhealthy threshold to count it out), a new one must prove itself.
    pub(super) fn first(serving: bool) -> Self {
        Streak { healthy: serving, ..Streak::default() }
    }

    /// Whether the instance counts as healthy.
    pub(super) fn healthy(&self) -> bool {
        self.healthy
    }

    /// Whether another verdict like the last one would change nothing: it is not in the middle
    /// of a run towards a threshold. A poll may skip the read only when every run is settled.
    pub(super) fn settled(&self) -> bool {
        if self.healthy { self.bad == 0 } else { self.ok == 0 }
    }

    /// Since when the instance has counted as healthy, if it does.
    pub(super) fn healthy_since(&self) -> Option<Instant> {
        self.healthy_since
    }

    /// Adds a verdict and says whether the instance now counts as healthy. `Unknown` (no
    /// answer) neither proves an instance nor fails one.
    pub(super) fn record(&mut self, health: &Health, thresholds: HealthThresholds, now: Instant) -> bool {
        match health {
            Health::Healthy => {
                self.ok += 1;
                self.bad = 0;
                if self.ok >= thresholds.healthy {
                    self.healthy = true;
                }
            }
            Health::Unhealthy(_) => {
                self.bad += 1;
                self.ok = 0;
                if self.bad >= thresholds.unhealthy {
                    self.healthy = false;
                }
            }
            Health::Unknown => self.ok = 0,
        }
        if !self.healthy {
            self.healthy_since = None;
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(now);
        }
        self.healthy
    }
}

/// The engine's own record of this deployment's instances.
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub(super) launched: HashMap<InstanceId, Launched>,
    /// When the first launching instance's deadline runs out: the engine wakes for it even
    /// when the provider promises no change.
    pub(super) next_deadline: Option<Instant>,
    /// When launching instances are expected to turn healthy, from the earliest to the
    /// latest, from how long this deployment's earlier instances took (or, before any did,
    /// while one runs but is not healthy yet): the engine polls closely within it.
    /// With how close a poll interval.
    pub(super) next_expected: Option<(Instant, Instant, Duration)>,
    /// Whether the last observation showed a new instance running but not healthy yet.
    pub(super) booted_unproven: bool,
    /// When the previous observation was made.
    pub(super) previous_observation: Option<Instant>,
    /// When the last read (in full or patched) went out: a change feed is asked about what
    /// changed since.
    pub(super) read_at: Option<Instant>,
    /// Whether the last read's health verdicts were all in hand and every run of verdicts is
    /// settled, so that reading again with nothing changed would change nothing.
    pub(super) settled: bool,
    /// When the first launched instance that describe has not shown yet leaves its
    /// consistency window (and counts as failed): the engine's clock, not the provider's.
    pub(super) next_unseen_expiry: Option<Instant>,
    /// How long recent instances took from launch to healthy (at the earliest).
    boot_samples: std::collections::VecDeque<Duration>,
    /// Ids this deployment terminated, and when.
    pub(super) terminated: HashMap<InstanceId, Instant>,
    pub(super) wave_sizes: HashMap<u32, usize>,
    pub(super) replaced_per_wave: HashMap<u32, usize>,
    pub(super) replaced: usize,
    /// The reason of each instance's latest unhealthy verdict, for the error that ends a
    /// deployment on it.
    pub(super) last_unhealthy: HashMap<InstanceId, String>,
    /// Launched instances that no observation has shown yet.
    pub(super) unseen: BTreeSet<InstanceId>,
    /// Launched instances the balancer was not told to probe yet.
    pub(super) unprepared: BTreeSet<InstanceId>,
}

impl Memory {
    /// Remembers what a launch call returned.
    pub(super) fn launched(&mut self, wave: u32, instances: &[Instance]) {
        let now = Instant::now();
        *self.wave_sizes.entry(wave).or_default() += instances.len();
        for i in instances {
            if self.launched.contains_key(&i.id) {
                continue;
            }
            self.unseen.insert(i.id.clone());
            self.unprepared.insert(i.id.clone());
            let launched = Launched {
                at: now,
                wave,
                instance: i.clone(),
                seen: false,
                failed: false,
                terminated: false,
                prepared: false,
            };
            self.launched.insert(i.id.clone(), launched);
        }
    }

    /// Notes that `id` turned healthy no earlier than `now`, to learn how long instances take.
    pub(super) fn turned_healthy(&mut self, id: &InstanceId, now: Instant) {
        if let Some(l) = self.launched.get(id) {
            if self.boot_samples.len() == 64 {
                self.boot_samples.pop_front();
            }
            self.boot_samples.push_back(now.saturating_duration_since(l.at));
        }
    }

    /// The shortest and the longest launch-to-healthy time learned so far. Boot times spread
    /// (a real cloud's, or the simulator's under jitter), so the close polling covers the
    /// whole range seen, not one typical value that a slower or faster wave would miss.
    pub(super) fn boot_range(&self) -> Option<(Duration, Duration)> {
        let min = self.boot_samples.iter().min()?;
        let max = self.boot_samples.iter().max()?;
        Some((*min, *max))
    }

    /// Remembers what a terminate call was given.
    pub(super) fn terminated(&mut self, ids: &[InstanceId]) {
        let now = Instant::now();
        for id in ids {
            self.terminated.insert(id.clone(), now);
            if let Some(l) = self.launched.get_mut(id) {
                l.terminated = true;
            }
        }
    }

    /// Completes an observation with what describe cannot show yet, and notes what it shows:
    /// instances launched within the consistency window and not yet visible are returned as
    /// pending stand-ins; launched instances that stopped or vanished without the engine's
    /// doing are returned as failures. `touched` names what the observation may show
    /// differently from the one before (`None`: everything, after a full read): what did not
    /// change was noted when it last did. `asked_at` is when the read went out: the window is
    /// measured against it, since the answer may be older than its arrival.
    pub(super) fn reconcile(
        &mut self,
        fleet: &Fleet,
        touched: Option<&[InstanceId]>,
        window: Duration,
        asked_at: Instant,
        deployment: &DeploymentId,
    ) -> (Vec<(InstanceId, u32)>, Vec<Instance>) {
        let now = asked_at;
        let mut failures = Vec::new();
        let mut stand_ins = Vec::new();
        self.next_unseen_expiry = None;
        if self.launched.is_empty() && self.terminated.is_empty() {
            return (failures, stand_ins);
        }
        // What this deployment launched carries its id: the rest of the fleet needs no look-up.
        let ours = |i: &Instance| i.provenance.as_ref().is_none_or(|p| p.deployment == *deployment);
        match touched {
            None => fleet.instances.iter().for_each(|i| self.note(i, ours(i), now, window, &mut failures)),
            Some(ids) => ids
                .iter()
                .filter_map(|id| fleet.get(id))
                .for_each(|i| self.note(i, ours(i), now, window, &mut failures)),
        }
        // What the observation does not show of what this deployment launched: never seen yet,
        // or gone since (which a patch touched).
        let shown = |id: &InstanceId| fleet.get(id).is_some_and(ours);
        let mut missing: Vec<InstanceId> = match touched {
            None => self.launched.keys().filter(|id| !shown(id)).cloned().collect(),
            Some(ids) => self
                .unseen
                .iter()
                .chain(ids.iter().filter(|id| self.launched.contains_key(*id)))
                .filter(|id| !shown(id))
                .cloned()
                .collect(),
        };
        missing.sort_unstable();
        missing.dedup();
        for id in missing {
            let Some(l) = self.launched.get(&id) else { continue };
            if l.terminated {
                self.forget(&id);
            } else if !l.seen && now < l.at + window {
                let expiry = l.at + window;
                self.next_unseen_expiry = Some(self.next_unseen_expiry.map_or(expiry, |e| e.min(expiry)));
                let mut stand_in = l.instance.clone();
                stand_in.state = InstanceState::Pending;
                stand_ins.push(stand_in);
            } else {
                if !l.failed {
                    failures.push((id.clone(), l.wave));
                }
                self.forget(&id);
            }
        }
        // A terminated id is watched for the window (it may show up live later).
        self.terminated.retain(|_, at| now < *at + window);
        (failures, stand_ins)
    }

    /// Notes that the observation shows `i`.
    fn note(
        &mut self,
        i: &Instance,
        ours: bool,
        now: Instant,
        window: Duration,
        failures: &mut Vec<(InstanceId, u32)>,
    ) {
        if ours && let Some(l) = self.launched.get_mut(&i.id) {
            if !l.seen {
                l.seen = true;
                self.unseen.remove(&i.id);
            }
            if i.state.is_lingering() && !l.failed && !l.terminated {
                l.failed = true;
                failures.push((i.id.clone(), l.wave));
            }
        }
        if !self.terminated.is_empty()
            && let Some(at) = self.terminated.get_mut(&i.id)
            && !i.state.is_live()
        {
            // On its way out: no longer watched.
            *at = now - window - Duration::from_nanos(1);
        }
    }

    fn forget(&mut self, id: &InstanceId) {
        self.launched.remove(id);
        self.unseen.remove(id);
        self.unprepared.remove(id);
    }

    /// Ids this deployment terminated that the fleet now shows live again.
    pub(super) fn reappeared(&self, fleet: &Fleet) -> Vec<InstanceId> {
        self.terminated.keys().filter(|id| fleet.get(id).is_some_and(|i| i.state.is_live())).cloned().collect()
    }

    /// Spends the budget on `failed` replacements; an error once it is exhausted.
    pub(super) fn spend(
        &mut self,
        failed: &[(InstanceId, u32)],
        budget: ReplacementBudget,
        desired: usize,
    ) -> Result<()> {
        for (id, wave) in failed {
            self.replaced += 1;
            let in_wave = self.replaced_per_wave.entry(*wave).or_default();
            *in_wave += 1;
            let wave_size = self.wave_sizes.get(wave).copied().unwrap_or(1);
            let (wave_limit, total_limit) =
                (budget.per_wave.resolve(wave_size).max(1), budget.per_deployment.resolve(desired).max(1));
            if *in_wave > wave_limit || self.replaced > total_limit {
                return Err(Error::new(
                    ErrorKind::Unhealthy,
                    format!(
                        "the replacement budget is exhausted: {} of wave {wave}'s {wave_size} instances failed (budget {wave_limit}), {} in the deployment (budget {total_limit}); the last was {id}",
                        in_wave, self.replaced
                    ),
                )
                .with_ids([id.clone()]));
            }
        }
        Ok(())
    }
}
