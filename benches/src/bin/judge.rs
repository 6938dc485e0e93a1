//! Measures the comparative judge (`immut_core::analysis::Judge`, Mann-Whitney U) over many
//! seeded runs and prints one JSON object:
//! `cargo run --release -p immut-bench --bin judge`.
//!
//! Each run draws the error ratios of `SAMPLES` intervals a side (as a `query_range` over
//! a window gives them), each interval serving `requests` requests on each side, every request
//! failing independently: the stable release at `BASELINE`, the canary at a higher rate (a
//! regression) or at the same one (identical releases). The judge uses its default settings
//! (significance 0.01, ten percent tolerated, at least ten samples a side).
//!
//! `by_traffic` has one row per traffic level (`requests_per_sample`):
//! - `detection`: per canary error rate, the share of runs the judge failed (its power against
//!   that regression);
//! - `false_alarm`: the share of runs of identical releases it failed.
//!
//! `inconclusive` lists cells with runs too thin to judge: none here (every run has enough
//! samples), reported to show it.

use immut_core::analysis::{Judge, JudgeVerdict};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, json};

/// Intervals a side: a 2-minute window at a 10 s step, less the first.
const SAMPLES: usize = 12;
/// The stable release's error rate.
const BASELINE: f64 = 0.005;
/// Runs per cell.
const RUNS: usize = 1000;
/// Requests a side per interval: at a 10 s interval, 2, 10, 50 and 200 requests a second.
const TRAFFIC: [u32; 4] = [20, 100, 500, 2000];
/// The canary's error rates: the baseline times 1.5, 2, 3, 5 and 10.
const CANARY: [f64; 5] = [0.0075, 0.01, 0.015, 0.025, 0.05];

fn ratios(rng: &mut ChaCha8Rng, requests: u32, rate: f64) -> Vec<f64> {
    (0..SAMPLES).map(|_| (0..requests).filter(|_| rng.random_bool(rate)).count() as f64 / f64::from(requests)).collect()
}

/// Shares of `RUNS` runs (seeded by `seed`) that the judge failed and left inconclusive.
fn failed_share(judge: &Judge, seed: u64, requests: u32, canary: f64) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut failed, mut inconclusive) = (0, 0);
    for _ in 0..RUNS {
        let stable = ratios(&mut rng, requests, BASELINE);
        let candidate = ratios(&mut rng, requests, canary);
        match judge.judge(&candidate, &stable).verdict {
            JudgeVerdict::Fail => failed += 1,
            JudgeVerdict::Inconclusive => inconclusive += 1,
            JudgeVerdict::Pass => {}
        }
    }
    (failed as f64 / RUNS as f64, inconclusive as f64 / RUNS as f64)
}

fn main() {
    let judge = Judge::default();
    let mut rows = Vec::new();
    let mut inconclusive = Map::new();
    for (t, requests) in TRAFFIC.into_iter().enumerate() {
        let mut power = Map::new();
        for (c, rate) in CANARY.into_iter().enumerate() {
            let (failed, undecided) = failed_share(&judge, 1000 * t as u64 + c as u64, requests, rate);
            power.insert(format!("{}%", rate * 100.0), json!(failed));
            if undecided > 0.0 {
                inconclusive.insert(format!("{requests}/{}%", rate * 100.0), json!(undecided));
            }
        }
        let (false_alarm, _) = failed_share(&judge, 1000 * t as u64 + 999, requests, BASELINE);
        rows.push(json!({ "requests_per_sample": requests, "false_alarm": false_alarm, "detection": power }));
    }
    let report = json!({
        "judge": {
            "test": "Mann-Whitney U, one-sided, normal approximation with tie and continuity corrections",
            "significance": judge.significance,
            "tolerance": judge.tolerance,
            "min_samples": judge.min_samples,
        },
        "samples_per_side": SAMPLES,
        "baseline_error_rate": BASELINE,
        "runs_per_cell": RUNS,
        "by_traffic": rows,
        "inconclusive": inconclusive,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
}
