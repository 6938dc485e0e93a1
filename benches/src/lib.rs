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
    let l = latencies();
    let waves = desired.div_ceil(Count::Percent(10).resolve(desired)) as u32;
    Scenario {
        name: "rolling",
        strategy: Arc::new(Rolling::new().max_surge(Count::Percent(10)).max_unavailable(Count::Count(0))),
        lower_bound: waves * wave_bound(&l),
    }
}

/// Blue/green with a bake and a keep-old window.
pub fn blue_green() -> Scenario {
    let l = latencies();
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
    let strategy = Canary::new([Count::Percent(1), Count::Percent(10), Count::Percent(50)]).pause(CANARY_PAUSE);
    let steps = strategy.targets(desired).len() as u32;
    Scenario {
        name: "canary",
        strategy: Arc::new(strategy),
        lower_bound: steps * wave_bound(&latencies()) + (steps - 1) * CANARY_PAUSE,
    }
}

/// The release pair every scenario deploys.
pub fn releases() -> (Release, Release) {
    let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
    let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img-1"), &base).expect("valid");
    let v2 = Release::new("web", &ArtifactSpec::new("web", Version::new(2, 0, 0), "img-2"), &base).expect("valid");
    (v1, v2)
}

/// Runs `strategy` from `desired` old instances to the new release on the simulator, in
/// virtual time, on the current thread.
pub fn run(strategy: Arc<dyn ReplacementStrategy>, desired: usize) -> (Outcome, SimCalls) {
    immut_core::sim::run_in_virtual_time(async move {
        let sim = SimProvider::builder().latencies(latencies()).build().expect("valid sim");
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
