//! The simulator: an in-memory cloud on the tokio clock.
//!
//! [`SimProvider`], [`SimTraffic`] and [`SimHealth`] implement the three contracts over one
//! shared state. Every call sleeps for the configured latency on the tokio clock, so under a
//! paused runtime (`#[tokio::test(start_paused = true)]`) hours of deployment run in
//! milliseconds. Faults are injected from a seeded generator, so a run is reproducible. The
//! simulator counts every call. It is what the dry-run, the randomized fault tests and the
//! benches run on, and it is public so that you can test your own rollout policies against it.
//!
//! ```
//! use std::time::Duration;
//! use immut_core::sim::{Faults, SimProvider};
//!
//! let sim = SimProvider::builder()
//!     .api_latency(Duration::from_millis(50))
//!     .launch_to_running(Duration::from_secs(20))
//!     .boot_to_healthy(Duration::from_secs(10))
//!     .faults(Faults { throttle_rate: 0.05, ..Faults::default() })
//!     .seed(7)
//!     .build()
//!     .unwrap();
//! assert_eq!(sim.calls().launch, 0);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, HealthCheck};
use crate::model::{
    Access, AccessPath, DeploymentId, Instance, InstanceId, InstanceState, LabelCharset, LaunchToken, Observed,
    Provenance, Release, ReleaseId,
};
use crate::provider::{Adopt, Capabilities, LaunchRequest, Provider, Query, Readiness};
use crate::traffic::Traffic;

/// Runs `future` to completion on a fresh single-threaded runtime whose clock is paused, so
/// simulated hours pass in milliseconds. Blocks the calling thread; do not call it from inside
/// a runtime (spawn a thread, as the dry-run does).
pub fn run_in_virtual_time<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime always builds")
        .block_on(future)
}

/// Simulated latencies.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latencies {
    /// Every API call (launch, describe, terminate, serving, attach, detach, switch).
    pub api: Duration,
    /// From the end of a launch call to the instance running.
    pub launch_to_running: Duration,
    /// From running to passing health checks.
    pub boot_to_healthy: Duration,
    /// How long a detach drains in-flight requests.
    pub drain: Duration,
    /// How long a terminated instance stays `Terminating` (visible, holding quota) before it
    /// is gone.
    pub terminate_linger: Duration,
    /// After an instance starts serving, how long the balancer reports it `Unknown` (its
    /// initial health checks), as ELB's `initial` state.
    pub lb_initial: Duration,
    /// How long a new instance stays invisible to describe after its launch call returned
    /// (eventual consistency, as EC2's describe shows).
    pub describe_staleness: Duration,
    /// Spread of every latency above: each is drawn, per use, uniformly from
    /// `[d × (1 − jitter), d × (1 + jitter)]` by the seeded generator. 0 means constant.
    pub jitter: f64,
    /// Describe answers in pages of this many instances, each page one API latency (0: one page).
    pub describe_page: usize,
}

/// An out-of-band termination: at `at` after the simulator was built, `count` live instances
/// (chosen by the seeded generator) vanish as if terminated by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutOfBand {
    /// When, from the simulator's creation.
    pub at: Duration,
    /// How many instances.
    pub count: usize,
}

/// Injected faults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Probability that a launch call fails with [`ErrorKind::Unavailable`] (retryable) before
    /// launching anything.
    pub launch_failure_rate: f64,
    /// Launch calls (1-based, counted over the simulator's life) that fail with
    /// `failing_launch_kind`.
    pub failing_launch_calls: Vec<u64>,
    /// The error kind of `failing_launch_calls`; [`ErrorKind::QuotaExceeded`] when unset.
    pub failing_launch_kind: Option<ErrorKind>,
    /// When set, `failing_launch_calls` counts only launches of this release.
    pub failing_launch_release: Option<ReleaseId>,
    /// Probability that any API call is throttled ([`ErrorKind::RateLimited`]).
    pub throttle_rate: f64,
    /// Instances of these releases run but never become healthy.
    pub never_healthy_releases: Vec<ReleaseId>,
    /// Probability that any launched instance never becomes healthy.
    pub never_healthy_rate: f64,
    /// Out-of-band terminations.
    pub out_of_band: Vec<OutOfBand>,
    /// Out-of-band stops: instances that stop (but are not terminated) at these times.
    pub out_of_band_stops: Vec<OutOfBand>,
    /// Probability that a launch call starts fewer instances than asked (at least one), and
    /// says so by returning only those, as EC2 does with MinCount below MaxCount.
    pub partial_launch_rate: f64,
    /// Probability that a launched instance stays pending forever.
    pub stuck_pending_rate: f64,
    /// Probability that one health verdict on a healthy instance is a blip (`Unhealthy`).
    pub flap_rate: f64,
    /// Whether health checks are API calls too: they cost the API latency and can be
    /// throttled like any other call.
    pub health_costs_calls: bool,
    /// The most instances the account may hold at once, `Terminating` and `Stopped` ones
    /// included; a launch beyond it fails with [`ErrorKind::QuotaExceeded`].
    pub quota: Option<usize>,
    /// What [`Provider::readiness`] answers per release from the start (releases not named are
    /// ready); [`SimProvider::set_readiness`] changes it while a deployment runs.
    #[serde(default)]
    pub readiness: BTreeMap<ReleaseId, Readiness>,
    /// Turns off the simulator's promise of its next change ([`Provider::next_change`]), so
    /// the engine polls as it must against a real cloud.
    pub no_next_change: bool,
}

/// Calls the simulator received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SimCalls {
    /// Launch calls.
    pub launch: u64,
    /// Describe calls.
    pub describe: u64,
    /// Instances describe returned, over all its calls: what full reads cost.
    #[serde(default)]
    pub described: u64,
    /// Terminate calls.
    pub terminate: u64,
    /// Serving-set reads.
    pub serving: u64,
    /// Attach calls.
    pub attach: u64,
    /// Detach calls.
    pub detach: u64,
    /// Switch calls.
    pub switch: u64,
    /// Batched health checks.
    pub health: u64,
    /// Change-feed calls ([`SimFeed`]) that asked whether anything changed.
    #[serde(default)]
    pub changes: u64,
    /// Change-feed calls ([`SimFeed`]) that asked which instances changed.
    #[serde(default)]
    pub deltas: u64,
    /// Instances the change feed listed as changed, over all its calls: what an observation
    /// through the feed costs.
    #[serde(default)]
    pub delta_instances: u64,
    /// Readiness checks.
    #[serde(default)]
    pub readiness: u64,
    /// Calls answered with a throttling error.
    pub throttled: u64,
    /// Calls answered with an injected failure.
    pub failed: u64,
}

impl SimCalls {
    /// Calls that change the fleet: launch and terminate.
    pub fn fleet_mutations(&self) -> u64 {
        self.launch + self.terminate
    }

    /// Calls that change traffic: attach, detach and switch.
    pub fn traffic_mutations(&self) -> u64 {
        self.attach + self.detach + self.switch
    }
}

/// Builds a [`SimProvider`]. Setters never fail; [`SimBuilder::build`] checks the settings.
#[derive(Debug, Clone, Default)]
pub struct SimBuilder {
    latencies: Latencies,
    faults: Faults,
    seed: u64,
    max_launch_batch: Option<usize>,
    min_poll_interval: Duration,
}

impl SimBuilder {
    /// Sets all latencies.
    pub fn latencies(mut self, latencies: Latencies) -> Self {
        self.latencies = latencies;
        self
    }
    /// Latency of every API call.
    pub fn api_latency(mut self, d: Duration) -> Self {
        self.latencies.api = d;
        self
    }
    /// Launch to running.
    pub fn launch_to_running(mut self, d: Duration) -> Self {
        self.latencies.launch_to_running = d;
        self
    }
    /// Running to healthy.
    pub fn boot_to_healthy(mut self, d: Duration) -> Self {
        self.latencies.boot_to_healthy = d;
        self
    }
    /// Drain time of a detach.
    pub fn drain(mut self, d: Duration) -> Self {
        self.latencies.drain = d;
        self
    }
    /// How long terminated instances linger as `Terminating`.
    pub fn terminate_linger(mut self, d: Duration) -> Self {
        self.latencies.terminate_linger = d;
        self
    }
    /// How long new instances stay invisible to describe.
    pub fn describe_staleness(mut self, d: Duration) -> Self {
        self.latencies.describe_staleness = d;
        self
    }
    /// The balancer's initial period after an instance starts serving.
    pub fn lb_initial(mut self, d: Duration) -> Self {
        self.latencies.lb_initial = d;
        self
    }
    /// The spread of every latency (0 to 1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.latencies.jitter = jitter;
        self
    }
    /// Injected faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
    /// Seed of the fault generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// The launch batch limit the simulator advertises (default 1000).
    pub fn max_launch_batch(mut self, n: usize) -> Self {
        self.max_launch_batch = Some(n);
        self
    }

    /// Declares that the simulated cloud's read quotas sustain one observation per `d` at most
    /// ([`Capabilities::min_poll_interval`]; default none).
    pub fn min_poll_interval(mut self, d: Duration) -> Self {
        self.min_poll_interval = d;
        self
    }

    /// Builds the simulator. Must be called inside a tokio runtime (it reads the tokio clock).
    pub fn build(self) -> Result<SimProvider> {
        for (field, rate) in [
            ("faults.launch_failure_rate", self.faults.launch_failure_rate),
            ("faults.throttle_rate", self.faults.throttle_rate),
            ("faults.never_healthy_rate", self.faults.never_healthy_rate),
            ("faults.partial_launch_rate", self.faults.partial_launch_rate),
            ("faults.stuck_pending_rate", self.faults.stuck_pending_rate),
            ("faults.flap_rate", self.faults.flap_rate),
            ("latencies.jitter", self.latencies.jitter),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::invalid(field, format!("{rate} is not a probability; use 0.0 to 1.0")));
            }
        }
        if self.faults.throttle_rate >= 1.0 {
            return Err(Error::invalid(
                "faults.throttle_rate",
                "1.0 would throttle every call forever; use less than 1.0",
            ));
        }
        let readiness = self.faults.readiness.clone();
        let epoch = Instant::now();
        let mut oob: Vec<(Instant, usize, bool)> = (self.faults.out_of_band.iter().map(|o| (o, false)))
            .chain(self.faults.out_of_band_stops.iter().map(|o| (o, true)))
            .map(|(o, stop)| (epoch + o.at, o.count, stop))
            .collect();
        oob.sort();
        let caps = Capabilities {
            max_launch_batch: self.max_launch_batch.unwrap_or(1000),
            consistency_window: self.latencies.describe_staleness.mul_f64(1.0 + self.latencies.jitter),
            lingering_holds_quota: true,
            min_poll_interval: self.min_poll_interval,
            ..Capabilities::default()
        };
        Ok(SimProvider {
            shared: Arc::new(Shared {
                latencies: self.latencies,
                faults: self.faults,
                caps,
                state: Mutex::new(SimState {
                    rng: self.seed ^ 0x9e37_79b9_7f4a_7c15,
                    seed: self.seed,
                    oob,
                    readiness,
                    ..SimState::default()
                }),
            }),
        })
    }
}

#[derive(Debug)]
struct Shared {
    latencies: Latencies,
    faults: Faults,
    caps: Capabilities,
    state: Mutex<SimState>,
}

#[derive(Debug, Default)]
struct SimState {
    instances: Vec<SimInstance>,
    index: HashMap<InstanceId, usize>,
    serving: BTreeSet<InstanceId>,
    calls: SimCalls,
    rng: u64,
    transitions: BTreeSet<Instant>,
    oob: Vec<(Instant, usize, bool)>,
    launches_by_release: HashMap<ReleaseId, u64>,
    /// Out-of-band events applied so far.
    out_of_band_applied: usize,
    /// When each instance started serving, for the balancer's initial period.
    attached_at: HashMap<InstanceId, Instant>,
    /// The seed, for draws that must not depend on the order of calls.
    seed: u64,
    /// Blips in a row per instance: two in a row make the instance look failed to a check
    /// with the engine's default thresholds, an event outside the engine's control.
    blips: HashMap<InstanceId, u32>,
    /// When anything last changed by a call (or out of band), for the change feed; changes
    /// that come with time are in `transitions`.
    changed_at: Option<Instant>,
    /// What readiness reports per release; ready when absent.
    readiness: BTreeMap<ReleaseId, Readiness>,
    /// Which instances (by slot) changed at each instant, by a call, out of band or with time
    /// (running, healthy, visible, gone, past the balancer's initial period): what the change
    /// feed lists, without a pass over the fleet.
    touched: BTreeMap<Instant, Vec<usize>>,
}

#[derive(Debug)]
struct SimInstance {
    instance: Instance,
    /// `None`: stuck pending forever.
    running_at: Option<Instant>,
    healthy_at: Option<Instant>,
    /// When describe first shows it.
    visible_at: Instant,
    /// When it was terminated; it lingers as `Terminating` until `gone_at`.
    terminated: bool,
    gone_at: Instant,
    stopped: bool,
}

impl SimInstance {
    /// Running, healthy and visible from `now`.
    fn ready(instance: Instance, now: Instant) -> Self {
        SimInstance {
            instance,
            running_at: Some(now),
            healthy_at: Some(now),
            visible_at: now,
            terminated: false,
            gone_at: now,
            stopped: false,
        }
    }

    fn state(&self, now: Instant) -> InstanceState {
        if self.terminated {
            if now >= self.gone_at { InstanceState::Terminated } else { InstanceState::Terminating }
        } else if self.stopped {
            InstanceState::Stopped
        } else if self.running_at.is_some_and(|t| now >= t) {
            InstanceState::Running
        } else {
            InstanceState::Pending
        }
    }

    /// Whether it still holds a place in the account's quota.
    fn holds_quota(&self, now: Instant) -> bool {
        !(self.terminated && now >= self.gone_at)
    }
}

impl SimState {
    /// Notes that the instance in slot `idx` answers differently from `at` on.
    fn touch(&mut self, at: Instant, idx: usize) {
        self.touched.entry(at).or_default().push(idx);
    }

    fn random(&mut self) -> f64 {
        // splitmix64: small, fast and reproducible.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn apply_out_of_band(&mut self, now: Instant) {
        while self.oob.first().is_some_and(|(at, _, _)| *at <= now) {
            let (_, count, stop) = self.oob.remove(0);
            let mut live: Vec<usize> = (0..self.instances.len())
                .filter(|&i| !self.instances[i].terminated && !self.instances[i].stopped)
                .collect();
            for _ in 0..count.min(live.len()) {
                let pick = (self.random() * live.len() as f64) as usize % live.len();
                let idx = live.swap_remove(pick);
                self.touch(now, idx);
                if stop {
                    self.instances[idx].stopped = true;
                } else {
                    self.instances[idx].terminated = true;
                    self.instances[idx].gone_at = now;
                    let id = self.instances[idx].instance.id.clone();
                    self.serving.remove(&id);
                }
            }
            if count > 0 {
                self.out_of_band_applied += 1;
                self.changed_at = Some(now);
            }
        }
    }

    /// `d` spread by the jitter setting, drawn for the `n`-th launch call's `k`-th latency
    /// from the seed alone: the same launch gets the same latencies whatever else the caller
    /// did before (how often it observed, how it was retried), so two engines can be compared
    /// on the same simulated cloud.
    fn launch_jitter(&self, d: Duration, jitter: f64, n: u64, k: u64) -> Duration {
        if jitter <= 0.0 || d.is_zero() {
            return d;
        }
        let mut z = self.seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(k);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let unit = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(1.0 - jitter + 2.0 * jitter * unit)
    }

    /// `d` spread by the jitter setting.
    fn jittered(&mut self, d: Duration, jitter: f64) -> Duration {
        if jitter <= 0.0 || d.is_zero() {
            return d;
        }
        d.mul_f64(1.0 - jitter + 2.0 * jitter * self.random())
    }

    fn quota_used(&self, now: Instant) -> usize {
        self.instances.iter().filter(|s| s.holds_quota(now)).count()
    }

    fn snapshot(&self, idx: usize, now: Instant) -> Instance {
        let s = &self.instances[idx];
        let mut instance = s.instance.clone();
        instance.state = s.state(now);
        instance
    }
}

/// The simulated compute backend. Cloning gives another handle to the same simulated cloud.
#[derive(Debug, Clone)]
pub struct SimProvider {
    shared: Arc<Shared>,
}

impl SimProvider {
    /// A builder with zero latencies, no faults and seed 0.
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// A deployer builder wired to this simulated cloud: its provider, traffic, health and
    /// change feed.
    pub fn deployer(&self) -> crate::DeployerBuilder {
        crate::Deployer::builder()
            .provider(self.clone())
            .traffic(self.traffic())
            .health(self.health())
            .change_feed(self.feed())
    }

    /// The change feed of this simulated cloud: whether describe, the serving set or a
    /// health check may answer differently since an instant, and for which instances
    /// ([`crate::feed`]).
    pub fn feed(&self) -> SimFeed {
        SimFeed { shared: self.shared.clone() }
    }

    /// The traffic side of this simulated cloud.
    pub fn traffic(&self) -> SimTraffic {
        SimTraffic { shared: self.shared.clone() }
    }

    /// The health side of this simulated cloud.
    pub fn health(&self) -> SimHealth {
        SimHealth { shared: self.shared.clone() }
    }

    /// The calls received so far.
    pub fn calls(&self) -> SimCalls {
        self.lock().calls
    }

    /// Sets what [`Provider::readiness`] reports for `release` from now on, as if its image
    /// were deregistered ([`Readiness::blocked`]) or deprecated (a warning) in the cloud.
    pub fn set_readiness(&self, release: &ReleaseId, readiness: Readiness) {
        self.lock().readiness.insert(release.clone(), readiness);
    }

    /// The ground truth, read directly: every instance that is not gone (live, stopped or
    /// still terminating, invisible to describe or not) and the serving set. No latency, no
    /// faults, not counted. For assertions about the simulated fleet.
    pub fn inspect(&self) -> (Vec<Instance>, Vec<InstanceId>) {
        let now = Instant::now();
        let state = self.lock();
        let present = (0..state.instances.len())
            .filter(|&i| state.instances[i].holds_quota(now))
            .map(|i| state.snapshot(i, now))
            .collect();
        (present, state.serving.iter().cloned().collect())
    }

    /// The health each instance really has right now (no blips, no initial period): the
    /// ground truth an independent checker compares the engine's actions with.
    pub fn true_health(&self, id: &InstanceId) -> Health {
        let state = self.lock();
        SimHealth::judge(&state, id, Instant::now(), &mut 0)
    }

    /// How many instances were ever created (launched or seeded), whatever became of them.
    pub fn instances_created(&self) -> usize {
        self.lock().instances.len()
    }

    /// How many out-of-band events have happened so far: terminations and stops by someone
    /// else, and health blips twice in a row on one instance (which make a healthy instance
    /// look failed).
    pub fn out_of_band_applied(&self) -> usize {
        let mut state = self.lock();
        state.apply_out_of_band(Instant::now());
        state.out_of_band_applied
    }

    /// The configured latencies.
    pub fn latencies(&self) -> Latencies {
        self.shared.latencies
    }

    /// Puts `count` running, healthy instances of `release` in place at once, as if a
    /// deployment `seed` had launched them, and attaches them when `serving`. No call is counted.
    pub fn seed(&self, release: &Release, count: usize, serving: bool) -> Vec<Instance> {
        let deployment = DeploymentId::new("seed");
        let token = LaunchToken::new(format!("seed-{}", release.id()));
        let request = LaunchRequest::new(Arc::new(release.clone()), count, &deployment, token);
        let now = Instant::now();
        let mut state = self.lock();
        let launched = insert(&mut state, &request, now, now);
        if serving {
            state.serving.extend(launched.iter().map(|i| i.id.clone()));
        }
        launched
    }

    /// Starts `count` running, healthy instances without provenance, as if launched by hand
    /// outside immut, and attaches them when `serving`. No call is counted.
    pub fn launch_unmanaged(&self, count: usize, image: &str, serving: bool) -> Vec<Instance> {
        let now = Instant::now();
        let mut state = self.lock();
        state.changed_at = Some(now);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let idx = state.instances.len();
            let instance = Instance {
                id: InstanceId::new(format!("hand-{idx:07}")),
                state: InstanceState::Running,
                provenance: None,
                labels: Arc::default(),
                observed: Arc::new(Observed { image: Some(image.to_owned()), ..Observed::default() }),
                address: None,
            };
            state.index.insert(instance.id.clone(), idx);
            state.touch(now, idx);
            if serving {
                state.serving.insert(instance.id.clone());
            }
            state.instances.push(SimInstance::ready(instance.clone(), now));
            out.push(instance);
        }
        out
    }

    /// Edits one label of an instance in place, as someone with console access could; the
    /// provenance is read again from the labels. Returns false for an unknown id.
    pub fn edit_label(&self, id: &InstanceId, key: &str, value: &str) -> bool {
        self.edit(id, |instance| {
            let mut labels = (*instance.labels).clone();
            labels.insert(key.to_owned(), value.to_owned());
            instance.provenance = Provenance::from_labels(&labels, LabelCharset::Any).map(Arc::new);
            instance.labels = Arc::new(labels);
        })
    }

    /// Changes one instance out of band, recorded as a change now (for the change feed).
    /// Returns false for an unknown id.
    fn edit(&self, id: &InstanceId, change: impl FnOnce(&mut Instance)) -> bool {
        let mut state = self.lock();
        let Some(&idx) = state.index.get(id) else { return false };
        let now = Instant::now();
        state.changed_at = Some(now);
        state.touch(now, idx);
        change(&mut state.instances[idx].instance);
        true
    }

    /// Changes what the provider observes of an instance's machine type, as an in-place resize
    /// would. Returns false for an unknown id.
    pub fn resize(&self, id: &InstanceId, machine_type: &str) -> bool {
        self.edit(id, |instance| {
            instance.observed =
                Arc::new(Observed { machine_type: Some(machine_type.to_owned()), ..(*instance.observed).clone() });
        })
    }

    /// Opens a way into an instance out of band, as adding a key or enabling a console by hand
    /// would: what the provider observes of its access gains the opening. Returns false for
    /// an unknown id.
    pub fn open_access(&self, id: &InstanceId, path: AccessPath, detail: &str) -> bool {
        self.edit(id, |instance| {
            let access = instance.observed.access.clone().unwrap_or_default().with(path, detail);
            instance.observed = Arc::new(Observed { access: Some(access), ..(*instance.observed).clone() });
        })
    }

    /// Puts existing instances in place, keeping their ids and provenance (the dry-run seeds
    /// the simulator from a live fleet this way). Live ones are running and healthy.
    pub fn seed_instances(&self, instances: &[Instance], serving: &[InstanceId]) {
        let now = Instant::now();
        let mut state = self.lock();
        state.changed_at = Some(now);
        for instance in instances {
            let idx = state.instances.len();
            state.index.insert(instance.id.clone(), idx);
            state.touch(now, idx);
            let mut s = SimInstance::ready(instance.clone(), now);
            s.terminated = !instance.state.is_live();
            state.instances.push(s);
        }
        state.serving.extend(serving.iter().cloned());
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.shared.state.lock().expect("simulator state lock poisoned")
    }

    /// Sleeps the API latency, applies due out-of-band faults, counts the call and maybe
    /// throttles it.
    async fn call(&self, count: impl FnOnce(&mut SimCalls)) -> Result<MutexGuard<'_, SimState>> {
        self.shared.call(count).await
    }
}

impl Shared {
    async fn call(&self, count: impl FnOnce(&mut SimCalls)) -> Result<MutexGuard<'_, SimState>> {
        self.latency(self.latencies.api).await;
        let mut state = self.state.lock().expect("simulator state lock poisoned");
        state.apply_out_of_band(Instant::now());
        count(&mut state.calls);
        if self.faults.throttle_rate > 0.0 && state.random() < self.faults.throttle_rate {
            state.calls.throttled += 1;
            return Err(Error::new(ErrorKind::RateLimited, "request rate exceeded (simulated)").with_provider("sim"));
        }
        Ok(state)
    }
}

impl Shared {
    /// Sleeps `d`, spread by the jitter setting.
    async fn latency(&self, d: Duration) {
        let d = self.state.lock().expect("simulator state lock poisoned").jittered(d, self.latencies.jitter);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

fn insert(state: &mut SimState, request: &LaunchRequest, running_at: Instant, healthy_from: Instant) -> Vec<Instance> {
    let labels = Arc::new(request.labels(LabelCharset::Any));
    let provenance = Some(Arc::new(request.provenance.clone()));
    let observed = Arc::new(Observed {
        image: Some(request.release.artifact().image.clone()),
        machine_type: request.release.baseline().spec.machine_type.clone(),
        // The simulated cloud closes every way in of a sealed launch and knows of none otherwise.
        access: request.release.baseline().spec.sealed.then(Access::sealed),
    });
    let mut out = Vec::with_capacity(request.count);
    let now = Instant::now();
    state.changed_at = Some(now);
    for _ in 0..request.count {
        let idx = state.instances.len();
        let id = InstanceId::new(format!("sim-{idx:07}"));
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Pending,
            provenance: provenance.clone(),
            labels: labels.clone(),
            observed: observed.clone(),
            address: None,
        };
        state.index.insert(id, idx);
        for at in [now, running_at, healthy_from] {
            state.touch(at, idx);
        }
        let mut s = SimInstance::ready(instance.clone(), running_at);
        s.healthy_at = Some(healthy_from);
        state.instances.push(s);
        out.push(instance);
    }
    out
}

#[async_trait]
impl Provider for SimProvider {
    fn name(&self) -> &str {
        "sim"
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps.clone()
    }

    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let state = self.call(|c| c.readiness += 1).await?;
        Ok(state.readiness.get(release.id()).cloned().unwrap_or_else(Readiness::ready))
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.shared.caps).map_err(|e| e.with_provider("sim").with_operation("launch"))?;
        let mut state = self.call(|c| c.launch += 1).await?;
        let faults = &self.shared.faults;
        let per_release = state.launches_by_release.entry(request.release.id().clone()).or_default();
        *per_release += 1;
        let call_no = match &faults.failing_launch_release {
            Some(r) if r == request.release.id() => *per_release,
            Some(_) => 0,
            None => state.calls.launch,
        };
        if faults.failing_launch_calls.contains(&call_no) {
            state.calls.failed += 1;
            let kind = faults.failing_launch_kind.unwrap_or(ErrorKind::QuotaExceeded);
            return Err(Error::new(kind, format!("launch call {call_no} failed (injected)"))
                .with_provider("sim")
                .with_operation("launch"));
        }
        if faults.launch_failure_rate > 0.0 && state.random() < faults.launch_failure_rate {
            state.calls.failed += 1;
            return Err(Error::new(ErrorKind::Unavailable, "launch failed (injected)")
                .with_provider("sim")
                .with_operation("launch"));
        }
        let now = Instant::now();
        if let Some(quota) = faults.quota
            && state.quota_used(now) + request.count > quota
        {
            state.calls.failed += 1;
            return Err(Error::new(
                ErrorKind::QuotaExceeded,
                format!("launching {} would exceed the instance quota of {quota} (simulated)", request.count),
            )
            .with_provider("sim")
            .with_operation("launch"));
        }
        let mut count = request.count;
        if count > 1 && faults.partial_launch_rate > 0.0 && state.random() < faults.partial_launch_rate {
            count = 1 + (state.random() * (count - 1) as f64) as usize % (count - 1);
        }
        let lat = self.shared.latencies;
        let n = state.calls.launch;
        let running_at = now + state.launch_jitter(lat.launch_to_running, lat.jitter, n, 0);
        let healthy_at = running_at + state.launch_jitter(lat.boot_to_healthy, lat.jitter, n, 1);
        let launched = insert(&mut state, &LaunchRequest { count, ..request.clone() }, running_at, healthy_at);
        let never_release = faults.never_healthy_releases.contains(request.release.id());
        let first = state.instances.len() - launched.len();
        for idx in first..state.instances.len() {
            if never_release || (faults.never_healthy_rate > 0.0 && state.random() < faults.never_healthy_rate) {
                state.instances[idx].healthy_at = None;
            }
            if faults.stuck_pending_rate > 0.0 && state.random() < faults.stuck_pending_rate {
                state.instances[idx].running_at = None;
            }
            let visible_at = now + state.jittered(lat.describe_staleness, lat.jitter);
            state.instances[idx].visible_at = visible_at;
            state.transitions.insert(visible_at);
            state.touch(visible_at, idx);
        }
        state.transitions.insert(running_at);
        state.transitions.insert(healthy_at);
        Ok(launched)
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let mut out;
        {
            let state = self.call(|c| c.describe += 1).await?;
            out = Vec::with_capacity(if query.ids.is_some() { 0 } else { state.instances.len() });
            let now = Instant::now();
            let visible = |idx: usize| state.instances[idx].visible_at <= now;
            match &query.ids {
                Some(ids) => {
                    for id in ids {
                        if let Some(&idx) = state.index.get(id)
                            && visible(idx)
                        {
                            let instance = state.snapshot(idx, now);
                            if query.matches(&instance) {
                                out.push(instance);
                            }
                        }
                    }
                }
                None => {
                    for idx in 0..state.instances.len() {
                        let gone = !state.instances[idx].holds_quota(now);
                        if (!query.include_terminated && gone) || !visible(idx) {
                            continue;
                        }
                        let instance = state.snapshot(idx, now);
                        if query.matches(&instance) {
                            out.push(instance);
                        }
                    }
                }
            }
        }
        self.lock().calls.described += out.len() as u64;
        // Each further page is one more round trip.
        let page = self.shared.latencies.describe_page;
        if page > 0 {
            for _ in 1..out.len().div_ceil(page) {
                self.shared.latency(self.shared.latencies.api).await;
            }
        }
        Ok(out)
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let mut state = self.call(|c| c.terminate += 1).await?;
        let now = Instant::now();
        state.changed_at = Some(now);
        let lat = self.shared.latencies;
        for id in ids {
            if let Some(&idx) = state.index.get(id)
                && !state.instances[idx].terminated
            {
                let gone_at = now + state.jittered(lat.terminate_linger, lat.jitter);
                state.instances[idx].terminated = true;
                state.instances[idx].gone_at = gone_at;
                state.transitions.insert(gone_at);
                state.touch(now, idx);
                state.touch(gone_at, idx);
                state.serving.remove(id);
            }
        }
        Ok(())
    }

    fn next_change(&self) -> Option<Instant> {
        // Blips can change a health answer on any call: nothing can be promised then.
        if self.shared.faults.no_next_change || self.shared.faults.flap_rate > 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        while state.transitions.first().is_some_and(|t| *t <= now) {
            state.transitions.pop_first();
        }
        let oob = state.oob.first().map(|(at, _, _)| *at);
        // With nothing pending, nothing changes until someone calls: promise a distant instant.
        let idle = now + Duration::from_secs(365 * 24 * 3600);
        Some([state.transitions.first().copied(), oob].into_iter().flatten().fold(idle, Instant::min))
    }
}

#[async_trait]
impl Adopt for SimProvider {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let mut state = self.call(|_| {}).await?;
        let now = Instant::now();
        state.changed_at = Some(now);
        let mut out = Vec::new();
        for id in ids {
            let Some(&idx) = state.index.get(id) else {
                return Err(Error::new(ErrorKind::NotFound, "cannot adopt an unknown instance").with_ids([id.clone()]));
            };
            let labels = provenance.signed_labels(LabelCharset::Any, signature);
            state.touch(now, idx);
            let instance = &mut state.instances[idx].instance;
            instance.provenance = Some(Arc::new(provenance.clone()));
            instance.labels = Arc::new(labels);
            out.push(state.snapshot(idx, now));
        }
        Ok(out)
    }
}

/// The simulated load balancer of a [`SimProvider`].
#[derive(Debug, Clone)]
pub struct SimTraffic {
    shared: Arc<Shared>,
}

impl SimTraffic {
    fn serve(state: &mut SimState, instances: &[Instance], initial: Duration) {
        let now = Instant::now();
        state.changed_at = Some(now);
        for i in instances {
            if state.serving.insert(i.id.clone()) {
                state.attached_at.insert(i.id.clone(), now);
                let idx = state.index.get(&i.id).copied();
                if let Some(idx) = idx {
                    state.touch(now, idx);
                }
                if !initial.is_zero() {
                    state.transitions.insert(now + initial);
                    if let Some(idx) = idx {
                        state.touch(now + initial, idx);
                    }
                }
            }
        }
    }

    /// Takes `ids` out of the serving set.
    fn unserve(state: &mut SimState, ids: &[InstanceId]) {
        let now = Instant::now();
        state.changed_at = Some(now);
        for id in ids {
            if state.serving.remove(id)
                && let Some(&idx) = state.index.get(id)
            {
                state.touch(now, idx);
            }
        }
    }

    fn check_known(state: &SimState, instances: &[Instance]) -> Result<()> {
        let unknown: Vec<InstanceId> = instances
            .iter()
            .filter(|i| state.index.get(&i.id).is_none_or(|&idx| state.instances[idx].terminated))
            .map(|i| i.id.clone())
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NotFound, "cannot attach instances that do not exist or are terminated")
                .with_provider("sim")
                .with_operation("attach")
                .with_ids(unknown))
        }
    }
}

#[async_trait]
impl Traffic for SimTraffic {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let state = self.shared.call(|c| c.serving += 1).await?;
        Ok(state.serving.iter().cloned().collect())
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        let mut state = self.shared.call(|c| c.attach += 1).await?;
        Self::check_known(&state, instances)?;
        Self::serve(&mut state, instances, self.shared.latencies.lb_initial);
        Ok(())
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        {
            let mut state = self.shared.call(|c| c.detach += 1).await?;
            Self::unserve(&mut state, ids);
        }
        tokio::time::sleep(self.shared.latencies.drain).await;
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        {
            let mut state = self.shared.call(|c| c.switch += 1).await?;
            Self::check_known(&state, attach)?;
            Self::serve(&mut state, attach, self.shared.latencies.lb_initial);
            Self::unserve(&mut state, detach);
        }
        tokio::time::sleep(self.shared.latencies.drain).await;
        Ok(())
    }
}

/// The simulated health of a [`SimProvider`]'s instances, as a balancer would see it.
#[derive(Debug, Clone)]
pub struct SimHealth {
    shared: Arc<Shared>,
}

impl SimHealth {
    /// `hint` is where the instance probably is: the engine checks instances in describe
    /// order, so the slot after the previous one is the first guess and the index the
    /// fallback. It is left after the slot found.
    fn judge(state: &SimState, id: &InstanceId, now: Instant, hint: &mut usize) -> Health {
        let idx = match state.instances.get(*hint) {
            Some(s) if s.instance.id == *id => *hint,
            _ => match state.index.get(id) {
                Some(&idx) => idx,
                None => return Health::Unhealthy("unknown instance".into()),
            },
        };
        *hint = idx + 1;
        let s = &state.instances[idx];
        if s.visible_at > now {
            // What the API cannot show yet, its balancer has not seen either.
            return Health::Unknown;
        }
        match s.state(now) {
            InstanceState::Pending => Health::Unknown,
            InstanceState::Running if s.healthy_at.is_some_and(|t| now >= t) => Health::Healthy,
            InstanceState::Running => Health::Unhealthy("not answering health checks".into()),
            other => Health::Unhealthy(format!("instance is {other:?}")),
        }
    }
}

#[async_trait]
impl HealthCheck for SimHealth {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        let mut state = if self.shared.faults.health_costs_calls {
            self.shared.call(|c| c.health += 1).await?
        } else {
            let mut state = self.shared.state.lock().expect("simulator state lock poisoned");
            state.calls.health += 1;
            state
        };
        let now = Instant::now();
        let (initial, flap) = (self.shared.latencies.lb_initial, self.shared.faults.flap_rate);
        let mut out = Vec::with_capacity(instances.len());
        let mut hint = 0;
        for i in instances {
            let mut health = Self::judge(&state, &i.id, now, &mut hint);
            // Each look-up only when its setting is on: this runs for every instance at
            // every observation.
            let in_initial = !initial.is_zero()
                && health.is_healthy()
                && state.attached_at.get(&i.id).is_some_and(|at| now < *at + initial);
            if in_initial && state.serving.contains(&i.id) {
                health = Health::Unknown;
            } else if health.is_healthy() && flap > 0.0 && state.random() < flap {
                health = Health::Unhealthy("failed one health check (simulated blip)".into());
                let streak = state.blips.entry(i.id.clone()).or_default();
                *streak += 1;
                if *streak == 2 {
                    state.out_of_band_applied += 1;
                }
            } else if !state.blips.is_empty() {
                state.blips.remove(&i.id);
            }
            out.push(health);
        }
        Ok(out)
    }
}

/// The change feed of a [`SimProvider`] ([`crate::feed::ChangeFeed`]). Each call costs the API
/// latency and can be throttled, like any call; it answers from what changed by a call (or out
/// of band) and from the instants at which time changes an answer (an instance running,
/// turning healthy, becoming visible, gone, past the balancer's initial period), and lists the
/// instances that changed from a record of which instance changed when: a call costs
/// O(changes), not O(N). Health blips are drawn per check and cannot be foretold: with a flap
/// rate, the feed cannot tell.
#[derive(Debug, Clone)]
pub struct SimFeed {
    shared: Arc<Shared>,
}

impl SimFeed {
    /// Whether a change at `at` is one that a read gone out at `since` may have missed. Every
    /// call answers after its latency, so a read that went out at `since` saw what changed at
    /// `since` itself: only later changes count. Without latency it may not have.
    fn after(&self, since: Instant, at: Instant) -> bool {
        let lat = self.shared.latencies;
        if lat.api.is_zero() || lat.jitter >= 1.0 { at >= since } else { at > since }
    }
}

#[async_trait]
impl crate::feed::ChangeFeed for SimFeed {
    async fn changed_since(&self, since: Instant) -> Result<Option<bool>> {
        if self.shared.faults.flap_rate > 0.0 {
            return Ok(None);
        }
        let state = self.shared.call(|c| c.changes += 1).await?;
        let now = Instant::now();
        let called = state.changed_at.is_some_and(|at| self.after(since, at));
        let timed = since <= now && state.transitions.range(since..=now).any(|&at| self.after(since, at));
        Ok(Some(called || timed))
    }

    async fn changes_since(&self, since: Instant, query: &Query) -> Result<Option<Vec<crate::feed::Changed>>> {
        if self.shared.faults.flap_rate > 0.0 {
            return Ok(None);
        }
        let mut state = self.shared.call(|c| c.deltas += 1).await?;
        let now = Instant::now();
        if since > now {
            return Ok(Some(Vec::new()));
        }
        let mut slots: Vec<usize> = state
            .touched
            .range(since..=now)
            .filter(|(at, _)| self.after(since, **at))
            .flat_map(|(_, slots)| slots.iter().copied())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let mut out = Vec::with_capacity(slots.len());
        for idx in slots {
            let s = &state.instances[idx];
            let shown = s.visible_at <= now && (query.include_terminated || s.holds_quota(now));
            let instance = shown.then(|| state.snapshot(idx, now)).filter(|i| query.matches(i));
            let id = s.instance.id.clone();
            let serving = state.serving.contains(&id);
            out.push(crate::feed::Changed { id, instance, serving });
        }
        state.calls.delta_instances += out.len() as u64;
        Ok(Some(out))
    }
}
