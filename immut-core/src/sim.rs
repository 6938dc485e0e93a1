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

use std::collections::BTreeSet;

use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, HealthCheck};
use crate::model::{
    DeploymentId, Instance, InstanceId, InstanceState, LabelCharset, LaunchToken, Observed, Provenance, Release,
    ReleaseId,
};
use crate::provider::{Adopt, Capabilities, LaunchRequest, Provider, Query};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Latencies {
    /// Every API call (launch, describe, terminate, serving, attach, detach, switch).
    pub api: Duration,
    /// From the end of a launch call to the instance running.
    pub launch_to_running: Duration,
    /// From running to passing health checks.
    pub boot_to_healthy: Duration,
    /// How long a detach drains in-flight requests.
    pub drain: Duration,
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
}

/// Calls the simulator received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SimCalls {
    /// Launch calls.
    pub launch: u64,
    /// Describe calls.
    pub describe: u64,
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

    /// Builds the simulator. Must be called inside a tokio runtime (it reads the tokio clock).
    pub fn build(self) -> Result<SimProvider> {
        for (field, rate) in [
            ("faults.launch_failure_rate", self.faults.launch_failure_rate),
            ("faults.throttle_rate", self.faults.throttle_rate),
            ("faults.never_healthy_rate", self.faults.never_healthy_rate),
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
        let epoch = Instant::now();
        let mut oob: Vec<(Instant, usize)> = self.faults.out_of_band.iter().map(|o| (epoch + o.at, o.count)).collect();
        oob.sort();
        let caps = Capabilities { max_launch_batch: self.max_launch_batch.unwrap_or(1000), ..Capabilities::default() };
        Ok(SimProvider {
            shared: Arc::new(Shared {
                latencies: self.latencies,
                faults: self.faults,
                caps,
                state: Mutex::new(SimState { rng: self.seed ^ 0x9e37_79b9_7f4a_7c15, oob, ..SimState::default() }),
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
    oob: Vec<(Instant, usize)>,
    launches_by_release: HashMap<ReleaseId, u64>,
}

#[derive(Debug)]
struct SimInstance {
    instance: Instance,
    running_at: Instant,
    healthy_at: Option<Instant>,
    terminated: bool,
}

impl SimInstance {
    fn state(&self, now: Instant) -> InstanceState {
        if self.terminated {
            InstanceState::Terminated
        } else if now >= self.running_at {
            InstanceState::Running
        } else {
            InstanceState::Pending
        }
    }
}

impl SimState {
    fn random(&mut self) -> f64 {
        // splitmix64: small, fast and reproducible.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn apply_out_of_band(&mut self, now: Instant) {
        while self.oob.first().is_some_and(|(at, _)| *at <= now) {
            let (_, count) = self.oob.remove(0);
            let mut live: Vec<usize> = (0..self.instances.len()).filter(|&i| !self.instances[i].terminated).collect();
            for _ in 0..count.min(live.len()) {
                let pick = (self.random() * live.len() as f64) as usize % live.len();
                let idx = live.swap_remove(pick);
                self.instances[idx].terminated = true;
                let id = self.instances[idx].instance.id.clone();
                self.serving.remove(&id);
            }
        }
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

    /// A deployer builder wired to this simulated cloud: its provider, traffic and health.
    pub fn deployer(&self) -> crate::DeployerBuilder {
        crate::Deployer::builder().provider(self.clone()).traffic(self.traffic()).health(self.health())
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

    /// The live instances and the serving set, read directly: no latency, no faults, not
    /// counted. For assertions about the simulated fleet.
    pub fn inspect(&self) -> (Vec<Instance>, Vec<InstanceId>) {
        let now = Instant::now();
        let state = self.lock();
        let live = (0..state.instances.len())
            .filter(|&i| !state.instances[i].terminated)
            .map(|i| state.snapshot(i, now))
            .collect();
        (live, state.serving.iter().cloned().collect())
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
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let idx = state.instances.len();
            let instance = Instance {
                id: InstanceId::new(format!("hand-{idx:07}")),
                state: InstanceState::Running,
                provenance: None,
                labels: Arc::default(),
                observed: Arc::new(Observed { image: Some(image.to_owned()), machine_type: None }),
                address: None,
            };
            state.index.insert(instance.id.clone(), idx);
            if serving {
                state.serving.insert(instance.id.clone());
            }
            state.instances.push(SimInstance {
                instance: instance.clone(),
                running_at: now,
                healthy_at: Some(now),
                terminated: false,
            });
            out.push(instance);
        }
        out
    }

    /// Edits one label of an instance in place, as someone with console access could; the
    /// provenance is read again from the labels. Returns false for an unknown id.
    pub fn edit_label(&self, id: &InstanceId, key: &str, value: &str) -> bool {
        let mut state = self.lock();
        let Some(&idx) = state.index.get(id) else { return false };
        let instance = &mut state.instances[idx].instance;
        let mut labels = (*instance.labels).clone();
        labels.insert(key.to_owned(), value.to_owned());
        instance.provenance = Provenance::from_labels(&labels, LabelCharset::Any).map(Arc::new);
        instance.labels = Arc::new(labels);
        true
    }

    /// Changes what the provider observes of an instance's machine type, as an in-place resize
    /// would. Returns false for an unknown id.
    pub fn resize(&self, id: &InstanceId, machine_type: &str) -> bool {
        let mut state = self.lock();
        let Some(&idx) = state.index.get(id) else { return false };
        let instance = &mut state.instances[idx].instance;
        instance.observed =
            Arc::new(Observed { machine_type: Some(machine_type.to_owned()), ..(*instance.observed).clone() });
        true
    }

    /// Puts existing instances in place, keeping their ids and provenance (the dry-run seeds
    /// the simulator from a live fleet this way). Live ones are running and healthy.
    pub fn seed_instances(&self, instances: &[Instance], serving: &[InstanceId]) {
        let now = Instant::now();
        let mut state = self.lock();
        for instance in instances {
            let idx = state.instances.len();
            state.index.insert(instance.id.clone(), idx);
            state.instances.push(SimInstance {
                instance: instance.clone(),
                running_at: now,
                healthy_at: Some(now),
                terminated: !instance.state.is_live(),
            });
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
        if !self.latencies.api.is_zero() {
            tokio::time::sleep(self.latencies.api).await;
        }
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

fn insert(state: &mut SimState, request: &LaunchRequest, running_at: Instant, healthy_from: Instant) -> Vec<Instance> {
    let labels = Arc::new(request.labels(LabelCharset::Any));
    let provenance = Some(Arc::new(request.provenance.clone()));
    let observed = Arc::new(Observed {
        image: Some(request.release.artifact().image.clone()),
        machine_type: request.release.baseline().spec.machine_type.clone(),
    });
    let mut out = Vec::with_capacity(request.count);
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
        state.instances.push(SimInstance {
            instance: instance.clone(),
            running_at,
            healthy_at: Some(healthy_from),
            terminated: false,
        });
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
        let running_at = now + self.shared.latencies.launch_to_running;
        let healthy_at = running_at + self.shared.latencies.boot_to_healthy;
        let launched = insert(&mut state, request, running_at, healthy_at);
        let never_release = faults.never_healthy_releases.contains(request.release.id());
        let first = state.instances.len() - launched.len();
        for idx in first..state.instances.len() {
            if never_release || (faults.never_healthy_rate > 0.0 && state.random() < faults.never_healthy_rate) {
                state.instances[idx].healthy_at = None;
            }
        }
        state.transitions.insert(running_at);
        state.transitions.insert(healthy_at);
        Ok(launched)
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let state = self.call(|c| c.describe += 1).await?;
        let now = Instant::now();
        let mut out = Vec::new();
        match &query.ids {
            Some(ids) => {
                for id in ids {
                    if let Some(&idx) = state.index.get(id) {
                        let instance = state.snapshot(idx, now);
                        if query.matches(&instance) {
                            out.push(instance);
                        }
                    }
                }
            }
            None => {
                for idx in 0..state.instances.len() {
                    if !query.include_terminated && state.instances[idx].terminated {
                        continue;
                    }
                    let instance = state.snapshot(idx, now);
                    if query.matches(&instance) {
                        out.push(instance);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let mut state = self.call(|c| c.terminate += 1).await?;
        for id in ids {
            if let Some(&idx) = state.index.get(id) {
                state.instances[idx].terminated = true;
                state.serving.remove(id);
            }
        }
        Ok(())
    }

    fn next_change(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        while state.transitions.first().is_some_and(|t| *t <= now) {
            state.transitions.pop_first();
        }
        let oob = state.oob.first().map(|(at, _)| *at);
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
        let mut out = Vec::new();
        for id in ids {
            let Some(&idx) = state.index.get(id) else {
                return Err(Error::new(ErrorKind::NotFound, "cannot adopt an unknown instance").with_ids([id.clone()]));
            };
            let labels = provenance.signed_labels(LabelCharset::Any, signature);
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
        state.serving.extend(instances.iter().map(|i| i.id.clone()));
        Ok(())
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        {
            let mut state = self.shared.call(|c| c.detach += 1).await?;
            for id in ids {
                state.serving.remove(id);
            }
        }
        tokio::time::sleep(self.shared.latencies.drain).await;
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        {
            let mut state = self.shared.call(|c| c.switch += 1).await?;
            Self::check_known(&state, attach)?;
            state.serving.extend(attach.iter().map(|i| i.id.clone()));
            for id in detach {
                state.serving.remove(id);
            }
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
    fn judge(state: &SimState, id: &InstanceId, now: Instant) -> Health {
        let Some(&idx) = state.index.get(id) else {
            return Health::Unhealthy("unknown instance".into());
        };
        let s = &state.instances[idx];
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
        let state = self.shared.state.lock().expect("simulator state lock poisoned");
        Ok(Self::judge(&state, &instance.id, Instant::now()))
    }

    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        let mut state = self.shared.state.lock().expect("simulator state lock poisoned");
        state.calls.health += 1;
        let now = Instant::now();
        Ok(instances.iter().map(|i| Self::judge(&state, &i.id, now)).collect())
    }
}
