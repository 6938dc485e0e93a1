//! Benchmark scenarios and the analytic bounds the figures report compares against.
//!
//! # Latencies
//!
//! All figures use [`latencies`]: API call `A` = 100 ms, launch to running `R` = 40 s, running
//! to healthy `H` = 20 s, drain `D` = 15 s, and a min-ready time `M` = 10 s.
//!
//! # Lower bounds
//!
//! A wave is the chain no orchestrator can shorten under the surge ceiling and the healthy
//! floor: launch (`A`), boot (`R + H`), prove (`M`), attach (`A`), detach and drain (`A + D`),
//! terminate (`A`). The next wave may launch only once the previous one's old instances are
//! gone, because the ceiling allows no more. So:
//!
//! - rolling with `w` waves: `w · (4A + R + H + M + D)`;
//! - canary with `w` steps and pause `P`: `w · (4A + R + H + M + D) + (w − 1) · P`;
//! - blue/green with bake `B` and keep-old window `K`: `A + R + H + M + (A + D) + B + K + A`
//!   (the switch is one call that attaches and detaches).
//!
//! Observing the fleet (describe and the serving set) is not in the bound: it is the engine's
//! overhead, and the ratio measures it.
//!
//! # Modes
//!
//! [`Mode::Oracle`]: the simulator promises its next change, so the engine never waits longer
//! than it must. [`Mode::Polled`]: no promise, the engine polls every 2 s (its default), as
//! against a real cloud; the bound is the same. [`Mode::PolledJittered`]: polled, and every
//! latency is drawn from `[0.8 d, 1.2 d]`; its bound takes every latency at `0.8 d`, which no
//! engine can beat, but which is loose: a wave waits for its slowest instance.
//!
//! Every run goes through `SimProvider::deployer`, which wires the simulator's change feed
//! (`immut_core::feed`): a polled run asks it at each poll whether anything changed, and
//! observes only when something did or when the engine's own clock makes a decision due. An
//! observation, polled or woken by the oracle's promise, asks the feed which instances changed
//! and patches the fleet it keeps with them, so it costs O(changes); the engine reads the fleet
//! in full at the start and every 60 s. Each feed call costs the API latency like any call,
//! and counts as an observation call.

use std::sync::Arc;
use std::time::Duration;

use immut_core::engine::Outcome;
use immut_core::semver::Version;
use immut_core::sim::{Latencies, SimCalls, SimProvider};
use immut_core::strategy::ReplacementStrategy;
use immut_core::{ArtifactSpec, BaselineSpec, BlueGreen, Canary, Count, LaunchSpec, Release, Rolling};

/// Min-ready time of every scenario.
pub const MIN_READY: Duration = Duration::from_secs(10);
/// Bake time of the blue/green scenario.
pub const BAKE: Duration = Duration::from_secs(60);
/// Keep-old window of the blue/green scenario.
pub const KEEP_OLD: Duration = Duration::from_secs(30);
/// Pause between canary steps.
pub const CANARY_PAUSE: Duration = Duration::from_secs(60);

/// The latencies of every scenario.
pub fn latencies() -> Latencies {
    Latencies {
        api: Duration::from_millis(100),
        launch_to_running: Duration::from_secs(40),
        boot_to_healthy: Duration::from_secs(20),
        drain: Duration::from_secs(15),
        ..Latencies::default()
    }
}

/// The latencies scaled to their lowest draw under `jitter`: what a true lower bound may assume.
pub fn fastest(l: &Latencies, jitter: f64) -> Latencies {
    let f = 1.0 - jitter;
    Latencies {
        api: l.api.mul_f64(f),
        launch_to_running: l.launch_to_running.mul_f64(f),
        boot_to_healthy: l.boot_to_healthy.mul_f64(f),
        drain: l.drain.mul_f64(f),
        ..*l
    }
}

fn wave_bound(l: &Latencies) -> Duration {
    4 * l.api + l.launch_to_running + l.boot_to_healthy + MIN_READY + l.drain
}

/// A named scenario: strategy plus the lower bound of its duration.
pub struct Scenario {
    /// Name in the report.
    pub name: &'static str,
    /// The strategy.
    pub strategy: Arc<dyn ReplacementStrategy>,
    /// Analytic lower bound of the deployment's duration.
    pub lower_bound: Duration,
}

/// Rolling with a surge of 10% and no unavailability: 10 waves.
pub fn rolling(desired: usize) -> Scenario {
    rolling_with(desired, &latencies())
}

/// [`rolling`], bounded under latencies `l`.
pub fn rolling_with(desired: usize, l: &Latencies) -> Scenario {
    let waves = desired.div_ceil(Count::Percent(10).resolve(desired)) as u32;
    Scenario {
        name: "rolling",
        strategy: Arc::new(Rolling::new().max_surge(Count::Percent(10)).max_unavailable(Count::Count(0))),
        lower_bound: waves * wave_bound(l),
    }
}

/// Blue/green with a bake and a keep-old window.
pub fn blue_green() -> Scenario {
    blue_green_with(&latencies())
}

/// [`blue_green`], bounded under latencies `l`.
pub fn blue_green_with(l: &Latencies) -> Scenario {
    Scenario {
        name: "blue_green",
        strategy: Arc::new(BlueGreen::new().bake(BAKE).keep_old(KEEP_OLD)),
        lower_bound: l.api
            + l.launch_to_running
            + l.boot_to_healthy
            + MIN_READY
            + (l.api + l.drain)
            + BAKE
            + KEEP_OLD
            + l.api,
    }
}

/// Canary through 1%, 10% and 50% to 100%, pausing at each step.
pub fn canary(desired: usize) -> Scenario {
    canary_with(desired, &latencies())
}

/// [`canary`], bounded under latencies `l`.
pub fn canary_with(desired: usize, l: &Latencies) -> Scenario {
    let strategy = Canary::new([Count::Percent(1), Count::Percent(10), Count::Percent(50)]).pause(CANARY_PAUSE);
    let steps = strategy.targets(desired).len() as u32;
    Scenario {
        name: "canary",
        strategy: Arc::new(strategy),
        lower_bound: steps * wave_bound(l) + (steps - 1) * CANARY_PAUSE,
    }
}

/// The release pair every scenario deploys.
pub fn releases() -> (Release, Release) {
    let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
    let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img-1"), &base).expect("valid");
    let v2 = Release::new("web", &ArtifactSpec::new("web", Version::new(2, 0, 0), "img-2"), &base).expect("valid");
    (v1, v2)
}

/// How the engine learns that something changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The simulator promises its next change and the engine sleeps until then: what no real
    /// cloud offers, and the best any engine could do.
    Oracle,
    /// No promise: the engine polls at its default interval (2 s), as against a real cloud.
    Polled,
    /// Polled, and every latency jittered by ±20 % (seeded), as a real cloud's are.
    PolledJittered,
}

impl Mode {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Oracle => "oracle",
            Mode::Polled => "polled",
            Mode::PolledJittered => "polled_jittered",
        }
    }

    /// The latency jitter of the mode.
    pub fn jitter(self) -> f64 {
        if self == Mode::PolledJittered { 0.2 } else { 0.0 }
    }
}

/// Runs `strategy` from `desired` old instances to the new release on the simulator, in
/// virtual time, on the current thread, with the oracle.
pub fn run(strategy: Arc<dyn ReplacementStrategy>, desired: usize) -> (Outcome, SimCalls) {
    run_mode(strategy, desired, Mode::Oracle, None)
}

/// The oracle on the jittered simulator of [`Mode::PolledJittered`] (same seed, same draws).
pub fn run_jittered_oracle(strategy: Arc<dyn ReplacementStrategy>, desired: usize) -> (Outcome, SimCalls) {
    run_with(strategy, desired, false, Mode::PolledJittered.jitter(), None)
}

/// Runs as [`run`] does, in `mode`, with an optional launch batch limit.
pub fn run_mode(
    strategy: Arc<dyn ReplacementStrategy>,
    desired: usize,
    mode: Mode,
    launch_batch: Option<usize>,
) -> (Outcome, SimCalls) {
    run_with(strategy, desired, mode != Mode::Oracle, mode.jitter(), launch_batch)
}

fn run_with(
    strategy: Arc<dyn ReplacementStrategy>,
    desired: usize,
    polled: bool,
    jitter: f64,
    launch_batch: Option<usize>,
) -> (Outcome, SimCalls) {
    immut_core::sim::run_in_virtual_time(async move {
        let faults = immut_core::sim::Faults { no_next_change: polled, ..Default::default() };
        let mut sim = SimProvider::builder().latencies(latencies()).jitter(jitter).faults(faults).seed(7);
        if let Some(batch) = launch_batch {
            sim = sim.max_launch_batch(batch);
        }
        let sim = sim.build().expect("valid sim");
        let (v1, v2) = releases();
        sim.seed(&v1, desired, true);
        let deployer = sim
            .deployer()
            .strategy_arc(strategy)
            .desired(desired)
            .min_ready(MIN_READY)
            .build()
            .expect("valid deployer");
        let outcome = deployer.deploy(v2).with_previous(v1).run().await;
        assert!(outcome.succeeded(), "{}", outcome.summary());
        (outcome, sim.calls())
    })
}
