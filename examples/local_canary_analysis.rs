//! A canary judged by its metrics, on this machine: a bad release is rolled back by what it
//! does, a good one is promoted. No Prometheus server: the analysis scrapes the canary's own
//! `/metrics`.
//!
//! ```text
//! cargo run --example local_canary_analysis
//! ```
//!
//! 1. Deploys 1.0.0 of the sample service (3 processes behind the balancer) and starts 8
//!    clients sending requests through the balancer for the whole run.
//! 2. Deploys 2.0.0 as a canary (one instance, then all), whose baseline sets
//!    `SAMPLE_ERROR_SHARE=5%`: it answers `/healthz`, and fails 5 % of what it serves. At the
//!    first step the analysis scrapes the canary's `/metrics` every 2 s, 3 times, and wants an
//!    error ratio (`status=~"5.."` over all, between two scrapes) below 1 %. The first
//!    measurement fails; the deployment rolls back at once.
//! 3. Deploys 2.0.1 (no fault) the same way: every measurement passes, and it is promoted.
//!
//! Each measurement is printed as it is taken (`measure` lines). Exits 0 only when the bad release was rolled
//! back by a failed measurement and the good one promoted.

mod common;

use std::time::Duration;

use common::{Demo, Load, Printer};
use immut::analysis::{Analysis, AnalysisGate, MeasurementPhase, Metric, ScrapeProvider, Threshold};
use immut::engine::Event;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_canary_analysis").await?;
        let v1 = demo.release(Version::new(1, 0, 0), true)?;
        let bad =
            demo.release_with_env(Version::new(2, 0, 0), "sample-5pct-errors", &[("SAMPLE_ERROR_SHARE", "5%")])?;
        let good = demo.release(Version::new(2, 0, 1), true)?;
        let analysed = || {
            let metric = Metric::new("error-ratio", Duration::from_secs(2), 3).success(Threshold::below(0.01));
            let gate = AnalysisGate::new(Analysis::new([metric])).provider("error-ratio", ScrapeProvider::new());
            demo.builder(3, Canary::new([Count::Count(1)])).gate(gate).build()
        };
        println!("\n== deploying {v1}");
        let first = demo.deploy(&demo.deployer(3, BlueGreen::new())?, v1.clone(), None).await;
        if !first.succeeded() {
            demo.finish().await?;
            return Err(format!("the first deployment failed: {}", first.summary()).into());
        }
        let load = Load::start(demo.balancer.addr(), 8);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut verdicts = Vec::new();
        for (release, title) in [(&bad, "a canary failing 5 % of its requests"), (&good, "a good canary")] {
            println!("\n== {title}: {release}, under load");
            let mut printer = Printer::default();
            let mut failed = 0;
            let outcome = analysed()?
                .deploy(release.clone())
                .with_previous(v1.clone())
                .run_with(|e| {
                    if let Event::Measured { measurement } = e {
                        failed += (measurement.phase == MeasurementPhase::Failed) as usize;
                    }
                    printer.print(e);
                })
                .await;
            verdicts.push((outcome.succeeded(), failed));
        }
        let stats = load.stop().await;
        println!("\nclients: {} requests, {} failed (the canary's injected 500s among them)", stats.sent, stats.failed);
        demo.finish().await?;
        let expected =
            verdicts.len() == 2 && !verdicts[0].0 && verdicts[0].1 > 0 && verdicts[1].0 && verdicts[1].1 == 0;
        Ok(expected)
    })
}
