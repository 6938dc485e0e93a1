//! Prints the figures of immut as one JSON object:
//! `cargo run --release -p immut-bench --bin report`.
//!
//! - `makespan_ratio`: measured deployment duration over the analytic lower bound (see the
//!   crate docs for the formulas), per strategy, at N = 1000, in virtual time.
//! - `cpu_us_per_instance`: thread CPU time of a full rolling replacement of N = 10 000 on the
//!   simulator, divided by N (the best of three runs).
//! - `mutating_calls_per_wave`: launch and terminate calls per wave, per strategy.

use std::time::Duration;

use immut_bench::{Scenario, blue_green, canary, latencies, rolling, run};
use serde_json::{Map, json};

fn main() {
    const N: usize = 1000;
    const CPU_N: usize = 10_000;
    let mut ratio = Map::new();
    let mut mutating = Map::new();
    let mut traffic = Map::new();
    let mut detail = Map::new();
    for Scenario { name, strategy, lower_bound } in [rolling(N), blue_green(), canary(N)] {
        let (outcome, calls) = run(strategy, N);
        let waves = f64::from(outcome.waves);
        ratio.insert(name.into(), json!(round(outcome.elapsed.as_secs_f64() / lower_bound.as_secs_f64(), 4)));
        mutating.insert(name.into(), json!(round(calls.fleet_mutations() as f64 / waves, 2)));
        traffic.insert(name.into(), json!(round(calls.traffic_mutations() as f64 / waves, 2)));
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
            run(scenario.strategy, CPU_N);
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::ZERO);
    let l = latencies();
    let report = json!({
        "makespan_ratio": ratio,
        "cpu_us_per_instance": round(cpu.as_secs_f64() * 1e6 / CPU_N as f64, 2),
        "mutating_calls_per_wave": mutating,
        "traffic_calls_per_wave": traffic,
        "n": N,
        "cpu_n": CPU_N,
        "latencies_ms": {
            "api": l.api.as_millis() as u64,
            "launch_to_running": l.launch_to_running.as_millis() as u64,
            "boot_to_healthy": l.boot_to_healthy.as_millis() as u64,
            "drain": l.drain.as_millis() as u64,
            "min_ready": immut_bench::MIN_READY.as_millis() as u64,
        },
        "detail": detail,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
