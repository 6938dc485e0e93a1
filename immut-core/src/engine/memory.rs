//! What the engine remembers of its own actions, so that a cloud's stale or partial answers
//! cannot fool it (read-your-writes): the instances it launched, counted from its own record
//! until describe shows them; the ones it terminated, terminated again should they show up
//! live; the replacements spent against the budget; and each instance's run of health verdicts.

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
}

/// A run of health verdicts on one instance.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Streak {
    ok: u32,
    bad: u32,
    healthy: bool,
    /// The step that last judged it, so that instances gone from the fleet are forgotten.
    seen_at_step: u64,
}

impl Streak {
    /// The run an instance starts with when first observed: one already serving is presumed
    /// healthy (it takes the unhealthy threshold to count it out), a new one must prove itself.
    pub(super) fn first(serving: bool) -> Self {
        Streak { healthy: serving, ..Streak::default() }
    }

    pub(super) fn seen_at_step(&self) -> u64 {
        self.seen_at_step
    }

    /// Adds a verdict and says whether the instance now counts as healthy. `Unknown` (no
    /// answer) neither proves an instance nor fails one.
    pub(super) fn record(&mut self, health: &Health, thresholds: HealthThresholds, step: u64) -> bool {
        self.seen_at_step = step;
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
        self.healthy
    }
}

/// The engine's own record of this deployment's instances.
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub(super) launched: HashMap<InstanceId, Launched>,
    /// Ids this deployment terminated, and when.
    pub(super) terminated: HashMap<InstanceId, Instant>,
    pub(super) wave_sizes: HashMap<u32, usize>,
    pub(super) replaced_per_wave: HashMap<u32, usize>,
    pub(super) replaced: usize,
    pub(super) streaks: HashMap<InstanceId, Streak>,
}

impl Memory {
    /// Remembers what a launch call returned.
    pub(super) fn launched(&mut self, wave: u32, instances: &[Instance]) {
        let now = Instant::now();
        *self.wave_sizes.entry(wave).or_default() += instances.len();
        for i in instances {
            self.launched.entry(i.id.clone()).or_insert_with(|| Launched {
                at: now,
                wave,
                instance: i.clone(),
                seen: false,
                failed: false,
            });
        }
    }

    /// Remembers launches a dead process journaled. Its crash and this restart outlast any
    /// consistency window, so describe is trusted for them: no stand-ins.
    pub(super) fn recovered(&mut self, wave: u32, instances: &[Instance]) {
        self.launched(wave, instances);
        for i in instances {
            if let Some(l) = self.launched.get_mut(&i.id) {
                l.seen = true;
            }
        }
    }

    /// Remembers what a terminate call was given.
    pub(super) fn terminated(&mut self, ids: &[InstanceId]) {
        let now = Instant::now();
        for id in ids {
            self.terminated.insert(id.clone(), now);
        }
    }

    /// Completes an observation with what describe cannot show yet, and notes what it shows:
    /// instances launched within the consistency window and not yet visible are added as
    /// pending; launched instances that stopped or vanished without the engine's doing are
    /// returned as failures. `asked_at` is when the describe call went out: the window is
    /// measured against it, since the answer may be older than its arrival.
    pub(super) fn reconcile(
        &mut self,
        instances: &mut Vec<Instance>,
        window: Duration,
        asked_at: Instant,
    ) -> Vec<(InstanceId, u32)> {
        let now = asked_at;
        let present: HashMap<InstanceId, InstanceState> = instances.iter().map(|i| (i.id.clone(), i.state)).collect();
        let mut failures = Vec::new();
        let mut forget = Vec::new();
        for (id, l) in self.launched.iter_mut() {
            let ours = self.terminated.contains_key(id);
            match present.get(id) {
                Some(state) => {
                    l.seen = true;
                    if state.is_lingering() && !ours && !l.failed {
                        l.failed = true;
                        failures.push((id.clone(), l.wave));
                    }
                }
                None if ours => forget.push(id.clone()),
                None if !l.seen && now < l.at + window => {
                    let mut stand_in = l.instance.clone();
                    stand_in.state = InstanceState::Pending;
                    instances.push(stand_in);
                }
                None => {
                    if !l.failed {
                        failures.push((id.clone(), l.wave));
                    }
                    forget.push(id.clone());
                }
            }
        }
        for id in forget {
            self.launched.remove(&id);
        }
        // A terminated id is watched for the window (it may show up live later), or until
        // describe shows it on its way out.
        self.terminated.retain(|id, at| {
            let leaving = present.get(id).is_some_and(|s| !s.is_live());
            !leaving && (now < *at + window || present.contains_key(id))
        });
        failures
    }

    /// The next instant after `now` at which one of the engine's own timers runs out: a
    /// launched instance's deadline (`at + deadline`). The consistency windows end before
    /// those, and are seen at the next observation.
    pub(super) fn next_timer(&self, deadline: Duration, now: Instant) -> Option<Instant> {
        self.launched.values().filter(|l| !l.failed).map(|l| l.at + deadline).filter(|t| *t > now).min()
    }

    /// Ids this deployment terminated that describe now shows live again.
    pub(super) fn reappeared(&self, instances: &[Instance]) -> Vec<InstanceId> {
        instances
            .iter()
            .filter(|i| i.state.is_live() && self.terminated.contains_key(&i.id))
            .map(|i| i.id.clone())
            .collect()
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
