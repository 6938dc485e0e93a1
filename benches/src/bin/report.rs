//! Prints the figures of immut as one JSON object:
//! `cargo run --release -p immut-bench --bin report`.
//!
//! Every figure is measured in three modes (see the crate docs): `oracle` (the simulator
//! promises its next change), `polled` (the engine polls every 2 s, as against a real cloud)
//! and `polled_jittered` (polled, latencies jittered by ±20 %).
//!
//! - `makespan_ratio`: measured deployment duration over the analytic lower bound, per
//!   strategy, at N = 1000, in virtual time. With jitter the bound takes every latency at its
//!   fastest draw (a true but loose bound), so `makespan_vs_oracle_same_seed` also compares
//!   the jittered polled run with the oracle on the same jittered simulator.
//! - `cpu_us_per_instance`: thread CPU time of a full rolling replacement of N = 10 000 on the
//!   simulator, divided by N (the best of three runs).
//! - `observation_calls_per_wave`: describe, serving-set, health and change-feed calls per
//!   wave (every run observes through the simulator's change feed: a poll asks whether anything
//!   changed, and an observation patches the fleet with the instances that changed; see the
//!   crate docs).
//! - `mutating_calls_per_wave`: launch, terminate, attach, detach and switch calls per wave;
//!   `mutating_calls_per_wave_batch_100`: the same at N = 1000 on a provider that launches at
//!   most 100 instances per call.

use std::time::Duration;

use immut_bench::{Mode, Scenario, blue_green_with, canary_with, fastest, latencies, rolling, rolling_with, run_mode};
use serde_json::{Map, Value, json};

fn main() {
    const N: usize = 1000;
    const CPU_N: usize = 10_000;
    let mut report = Map::new();
    // The oracle's makespan on the jittered simulator, per strategy: what the jittered polled
    // run is also compared with (the same seed gives every launch the same latencies).
    let mut jittered_oracle = Map::new();
    for Scenario { name, strategy, .. } in [rolling(N), immut_bench::blue_green(), immut_bench::canary(N)] {
        let (outcome, _) = immut_bench::run_jittered_oracle(strategy, N);
        jittered_oracle.insert(name.into(), json!(outcome.elapsed.as_secs_f64()));
    }
    for mode in [Mode::Oracle, Mode::Polled, Mode::PolledJittered] {
        let bound_latencies = fastest(&latencies(), mode.jitter());
        let mut ratio = Map::new();
        let mut vs_oracle = Map::new();
        let mut observation = Map::new();
        let mut mutating = Map::new();
        let mut batched = Map::new();
        let mut detail = Map::new();
        for Scenario { name, strategy, lower_bound } in
            [rolling_with(N, &bound_latencies), blue_green_with(&bound_latencies), canary_with(N, &bound_latencies)]
        {
            let (outcome, calls) = run_mode(strategy.clone(), N, mode, None);
            let waves = f64::from(outcome.waves);
            let per_wave = |n: u64| json!(round(n as f64 / waves, 2));
            ratio.insert(name.into(), json!(round(outcome.elapsed.as_secs_f64() / lower_bound.as_secs_f64(), 4)));
            if mode == Mode::PolledJittered {
                let oracle = jittered_oracle[name].as_f64().unwrap_or(f64::NAN);
                vs_oracle.insert(name.into(), json!(round(outcome.elapsed.as_secs_f64() / oracle, 4)));
            }
            observation.insert(
                name.into(),
                per_wave(calls.describe + calls.serving + calls.health + calls.changes + calls.deltas),
            );
            mutating.insert(name.into(), per_wave(calls.fleet_mutations() + calls.traffic_mutations()));
            let (b_outcome, b_calls) = run_mode(strategy, N, mode, Some(100));
            batched.insert(
                name.into(),
                json!(round(
                    (b_calls.fleet_mutations() + b_calls.traffic_mutations()) as f64 / f64::from(b_outcome.waves),
                    2
                )),
            );
            detail.insert(
                name.into(),
                json!({
                    "makespan_s": round(outcome.elapsed.as_secs_f64(), 2),
                    "lower_bound_s": round(lower_bound.as_secs_f64(), 2),
                    "waves": outcome.waves,
                    "steps": outcome.steps,
                    "calls": calls,
                }),
            );
        }
        let cpu = (0..3)
            .map(|_| {
                let scenario = rolling(CPU_N);
                let start = cpu_time::ThreadTime::now();
                run_mode(scenario.strategy, CPU_N, mode, None);
                start.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO);
        report.insert(
            mode.name().into(),
            json!({
                "makespan_ratio": ratio,
                "makespan_vs_oracle_same_seed": vs_oracle,
                "cpu_us_per_instance": round(cpu.as_secs_f64() * 1e6 / CPU_N as f64, 2),
                "observation_calls_per_wave": observation,
                "mutating_calls_per_wave": mutating,
                "mutating_calls_per_wave_batch_100": batched,
                "detail": detail,
            }),
        );
    }
    let l = latencies();
    report.insert("n".into(), json!(N));
    report.insert("cpu_n".into(), json!(CPU_N));
    report.insert("poll_interval_ms".into(), json!(2000));
    report.insert(
        "latencies_ms".into(),
        json!({
            "api": l.api.as_millis() as u64,
            "launch_to_running": l.launch_to_running.as_millis() as u64,
            "boot_to_healthy": l.boot_to_healthy.as_millis() as u64,
            "drain": l.drain.as_millis() as u64,
            "min_ready": immut_bench::MIN_READY.as_millis() as u64,
        }),
    );
    println!("{}", serde_json::to_string_pretty(&Value::Object(report)).expect("serializes"));
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
