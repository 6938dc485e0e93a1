//! The fleet as the engine last observed it, kept from one observation to the next: read in
//! full, or patched with the instances a change feed lists as changed (see [`crate::feed`]).
//! Every fact a view needs of an instance lies beside it, so building a view looks nothing up
//! by id, and a patch costs what changed, not the size of the fleet.

use super::memory::Streak;
use super::*;
use crate::feed::Changed;

#[derive(Debug, Default)]
pub(super) struct Fleet {
    /// In describe order after a full read. A patch replaces an instance in place, appends a
    /// new one and moves the last into the place of one gone: the order matters to no one.
    pub(super) instances: Vec<Instance>,
    /// Per instance: whether it serves.
    pub(super) serves: Vec<bool>,
    /// Per instance: whether it is of the release the engine judges, and not being replaced.
    pub(super) is_target: Vec<bool>,
    /// Per instance: its last health verdict; `Unknown` when it is not checked.
    pub(super) health: Vec<Health>,
    /// Per instance: whether `health` was given by the last observation. A run of verdicts
    /// counts only those: an unchanged instance's verdict would be the same again.
    pub(super) fresh: Vec<bool>,
    /// Per instance: its run of verdicts, while it is live.
    pub(super) streaks: Vec<Option<Streak>>,
    index: HashMap<InstanceId, usize>,
    /// The serving set, with what describe does not show.
    pub(super) serving: HashSet<InstanceId>,
    /// The stopped instances.
    pub(super) stopped: BTreeSet<InstanceId>,
    /// The release that `is_target` speaks of: another one needs a full read.
    pub(super) target: Option<ReleaseId>,
    /// Whether a change feed's list may patch it: not before the first full read, nor after an
    /// observation that left the engine unsure of what it holds.
    pub(super) patchable: bool,
    /// When its last full read went out.
    pub(super) full_read_at: Option<Instant>,
    /// Instances whose run of verdicts is on its way to a threshold: checked again at the next
    /// observation, however little changed.
    pub(super) unsettled: Vec<InstanceId>,
}

impl Fleet {
    /// The fleet as a full read shows it: `instances` from describe, `serving` from the
    /// balancer. Instances whose health decides their place in the view (those of `target`
    /// not being replaced, and those serving) come first, in describe order, and the returned
    /// count says how many they are: the health check gets them as one slice. Runs of verdicts
    /// carry over from `previous` by id.
    pub(super) fn read(
        instances: Vec<Instance>,
        serving: HashSet<InstanceId>,
        target: Option<&ReleaseId>,
        replacing: &HashSet<InstanceId>,
        previous: &Fleet,
        asked_at: Instant,
    ) -> (Fleet, usize) {
        let n = instances.len();
        let mut fleet = Fleet {
            serving,
            target: target.cloned(),
            patchable: true,
            full_read_at: Some(asked_at),
            instances: Vec::with_capacity(n),
            serves: Vec::with_capacity(n),
            is_target: Vec::with_capacity(n),
            health: vec![Health::Unknown; n],
            fresh: vec![true; n],
            streaks: Vec::with_capacity(n),
            ..Fleet::default()
        };
        // (checked, serves, is_target) per instance, in describe order.
        let flags: Vec<(bool, bool, bool)> =
            instances.iter().map(|i| fleet.flags(i, fleet.serving.contains(&i.id), replacing)).collect();
        let checked = flags.iter().filter(|f| f.0).count();
        let mut rest = Vec::with_capacity(n - checked);
        for (instance, (is_checked, serves, is_target)) in instances.into_iter().zip(flags) {
            if is_checked {
                fleet.push(instance, serves, is_target, previous);
            } else {
                rest.push((instance, is_target));
            }
        }
        for (instance, is_target) in rest {
            fleet.push(instance, false, is_target, previous);
        }
        fleet.index.reserve(n);
        for (pos, i) in fleet.instances.iter().enumerate() {
            fleet.index.insert(i.id.clone(), pos);
        }
        (fleet, checked)
    }

    /// (checked, serves, is_target) of `instance`: an old instance that does not serve is old
    /// and idle whatever its health, so it is not checked.
    fn flags(&self, instance: &Instance, serves: bool, replacing: &HashSet<InstanceId>) -> (bool, bool, bool) {
        let is_target = self.target.is_some()
            && instance.release() == self.target.as_ref()
            && (replacing.is_empty() || !replacing.contains(&instance.id));
        (serves || (instance.state.is_live() && is_target), serves, is_target)
    }

    fn push(&mut self, instance: Instance, serves: bool, is_target: bool, previous: &Fleet) {
        let streak = previous.position(&instance.id).and_then(|p| previous.streaks[p]);
        if instance.state == InstanceState::Stopped {
            self.stopped.insert(instance.id.clone());
        }
        self.instances.push(instance);
        self.serves.push(serves);
        self.is_target.push(is_target);
        self.streaks.push(streak);
    }

    pub(super) fn position(&self, id: &InstanceId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The instance `id`, as last observed.
    pub(super) fn get(&self, id: &InstanceId) -> Option<&Instance> {
        self.position(id).map(|p| &self.instances[p])
    }

    /// Applies what a change feed listed, and returns the ids it touched. No verdict is fresh
    /// afterwards: the caller judges again what it must.
    pub(super) fn patch(&mut self, changes: Vec<Changed>) -> Vec<InstanceId> {
        self.fresh.fill(false);
        let mut touched = Vec::with_capacity(changes.len());
        for Changed { id, instance, serving } in changes {
            if serving {
                self.serving.insert(id.clone());
            } else {
                self.serving.remove(&id);
            }
            match (self.position(&id), instance) {
                (Some(pos), Some(instance)) => {
                    let (checked, serves, is_target) = self.flags(&instance, serving, &HashSet::new());
                    self.note_stopped(&instance);
                    self.instances[pos] = instance;
                    self.serves[pos] = serves;
                    self.is_target[pos] = is_target;
                    if !checked {
                        self.health[pos] = Health::Unknown;
                        self.fresh[pos] = true;
                    }
                }
                (None, Some(instance)) => {
                    let (checked, serves, is_target) = self.flags(&instance, serving, &HashSet::new());
                    self.note_stopped(&instance);
                    self.index.insert(id.clone(), self.instances.len());
                    self.instances.push(instance);
                    self.serves.push(serves);
                    self.is_target.push(is_target);
                    self.health.push(Health::Unknown);
                    self.fresh.push(!checked);
                    self.streaks.push(None);
                }
                (Some(pos), None) => self.remove(pos),
                (None, None) => {}
            }
            touched.push(id);
        }
        touched
    }

    fn note_stopped(&mut self, instance: &Instance) {
        if instance.state == InstanceState::Stopped {
            self.stopped.insert(instance.id.clone());
        } else if !self.stopped.is_empty() {
            self.stopped.remove(&instance.id);
        }
    }

    fn remove(&mut self, pos: usize) {
        let gone = self.instances.swap_remove(pos);
        self.serves.swap_remove(pos);
        self.is_target.swap_remove(pos);
        self.health.swap_remove(pos);
        self.fresh.swap_remove(pos);
        self.streaks.swap_remove(pos);
        self.index.remove(&gone.id);
        self.stopped.remove(&gone.id);
        if let Some(moved) = self.instances.get(pos) {
            self.index.insert(moved.id.clone(), pos);
        }
    }

    /// Where the instances are that the health check must judge after a patch: those touched
    /// and those mid-way through a run of verdicts, when their health decides their place.
    pub(super) fn due_for_check(&self, touched: &[InstanceId]) -> Vec<usize> {
        let mut due: Vec<usize> = touched
            .iter()
            .chain(&self.unsettled)
            .filter_map(|id| self.position(id))
            .filter(|&p| self.serves[p] || (self.instances[p].state.is_live() && self.is_target[p]))
            .collect();
        due.sort_unstable();
        due.dedup();
        due
    }
}

/// The instances named by `ids` that the observation shows, stand-ins included, each once.
pub(super) fn pick(fleet: &Fleet, stand_ins: &[Instance], ids: &[InstanceId]) -> Vec<Instance> {
    let mut seen: HashSet<&InstanceId> = HashSet::with_capacity(ids.len());
    ids.iter()
        .filter(|id| seen.insert(id))
        .filter_map(|id| fleet.get(id).or_else(|| stand_ins.iter().find(|i| i.id == *id)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::feed::ChangeFeed;
    use crate::health::HealthCheck;
    use crate::model::{ArtifactSpec, BaselineSpec, LaunchSpec};
    use crate::sim::{OutOfBand, SimProvider};

    fn release(major: u64) -> Release {
        let base = BaselineSpec::new("base", semver::Version::new(1, 0, 0), LaunchSpec::default());
        let artifact = ArtifactSpec::new("web", semver::Version::new(major, 0, 0), "img");
        Release::new("web", &artifact, &base).unwrap()
    }

    /// What a view is built from, by id: the instance, whether it serves, whether it is of the
    /// target and the health verdict when it is checked.
    fn facts(fleet: &Fleet) -> BTreeMap<InstanceId, (Instance, bool, bool, Option<Health>)> {
        (0..fleet.instances.len())
            .map(|p| {
                let checked = fleet.serves[p] || (fleet.instances[p].state.is_live() && fleet.is_target[p]);
                let health = checked.then(|| fleet.health[p].clone());
                (
                    fleet.instances[p].id.clone(),
                    (fleet.instances[p].clone(), fleet.serves[p], fleet.is_target[p], health),
                )
            })
            .collect()
    }

    async fn full_read(sim: &SimProvider, target: &ReleaseId, previous: &Fleet) -> Fleet {
        let asked_at = Instant::now();
        let instances = sim.describe(&Query::service("web")).await.unwrap();
        let serving = sim.traffic().serving().await.unwrap().into_iter().collect();
        let (mut fleet, checked) = Fleet::read(instances, serving, Some(target), &HashSet::new(), previous, asked_at);
        let verdicts = sim.health().check_many(&fleet.instances[..checked]).await.unwrap();
        fleet.health[..checked].clone_from_slice(&verdicts);
        fleet
    }

    /// One random change to the simulated cloud.
    #[derive(Debug, Clone)]
    enum Op {
        Launch(usize),
        Terminate(usize),
        Attach(usize),
        Detach(usize),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..6).prop_map(Op::Launch),
            (0usize..64).prop_map(Op::Terminate),
            (0usize..64).prop_map(Op::Attach),
            (0usize..64).prop_map(Op::Detach),
            (1u64..40).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// After any run of launches, terminations, attaches, detaches, out-of-band kills and
        /// stops, stale describes, lingering, the balancer's initial period and time passing,
        /// the fleet patched with the simulator's change lists holds what a full read shows:
        /// the same instances in the same states, the same serving set and the same verdicts.
        #[test]
        fn a_patched_fleet_equals_a_full_read(
            ops in proptest::collection::vec(op(), 1..40),
            seed in 0u64..1000,
            staleness in 0u64..10,
            linger in 0u64..10,
        ) {
            crate::sim::run_in_virtual_time(async move {
                let faults = crate::sim::Faults {
                    out_of_band: vec![OutOfBand { at: Duration::from_secs(50), count: 2 }],
                    out_of_band_stops: vec![OutOfBand { at: Duration::from_secs(90), count: 2 }],
                    ..Default::default()
                };
                // Calls take no time, so that the patched fleet and the full read after it
                // speak of the same instant.
                let sim = SimProvider::builder()
                    .launch_to_running(Duration::from_secs(20))
                    .boot_to_healthy(Duration::from_secs(10))
                    .describe_staleness(Duration::from_secs(staleness))
                    .terminate_linger(Duration::from_secs(linger))
                    .lb_initial(Duration::from_secs(3))
                    .jitter(0.2)
                    .faults(faults)
                    .seed(seed)
                    .build()
                    .unwrap();
                let (v1, v2) = (release(1), release(2));
                sim.seed(&v1, 4, true);
                let target = v2.id().clone();
                let deployment = DeploymentId::new("d");
                let mut patched = full_read(&sim, &target, &Fleet::default()).await;
                let mut since = patched.full_read_at.unwrap();
                let mut launched: Vec<Instance> = Vec::new();
                for op in ops {
                    let pick = |n: usize| launched.get(n % launched.len().max(1)).cloned();
                    match op {
                        Op::Launch(count) => {
                            let request = LaunchRequest::new(
                                Arc::new(v2.clone()),
                                count,
                                &deployment,
                                crate::model::LaunchToken::new(format!("t{}", launched.len())),
                            );
                            launched.extend(sim.launch(&request).await.unwrap());
                        }
                        Op::Terminate(n) => if let Some(i) = pick(n) {
                            sim.traffic().detach(std::slice::from_ref(&i.id)).await.unwrap();
                            sim.terminate(&[i.id]).await.unwrap();
                        },
                        Op::Attach(n) => if let Some(i) = pick(n) {
                            // Attaching what is gone is refused: that is no change.
                            let _ = sim.traffic().attach(&[i]).await;
                        },
                        Op::Detach(n) => if let Some(i) = pick(n) {
                            sim.traffic().detach(&[i.id]).await.unwrap();
                        },
                        Op::Wait(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                    }
                    // A patch, as the engine makes it: what changed, then the health of what it must judge.
                    let asked_at = Instant::now();
                    let changes = sim.feed().changes_since(since, &Query::service("web")).await.unwrap().unwrap();
                    since = asked_at;
                    let touched = patched.patch(changes);
                    let due = patched.due_for_check(&touched);
                    let subject: Vec<Instance> = due.iter().map(|&p| patched.instances[p].clone()).collect();
                    let verdicts = sim.health().check_many(&subject).await.unwrap();
                    for (p, v) in due.into_iter().zip(verdicts) {
                        patched.health[p] = v;
                    }
                    let full = full_read(&sim, &target, &Fleet::default()).await;
                    prop_assert_eq!(facts(&patched), facts(&full));
                    prop_assert_eq!(&patched.serving, &full.serving);
                    prop_assert_eq!(&patched.stopped, &full.stopped);
                }
                Ok(())
            })?;
        }
    }
}
