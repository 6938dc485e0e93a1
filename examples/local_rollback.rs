//! An automatic rollback: a release that never becomes healthy never receives traffic.
//!
//! ```text
//! cargo run --example local_rollback
//! ```
//!
//! Deploys 1.0.0 of the sample service on 3 processes, then tries 2.0.0 whose baseline makes
//! `GET /healthz` answer 503. Blue/green launches the 3 new processes beside the old ones; they
//! never pass the health check, so after the progress deadline (15 s without progress) the
//! engine rolls back: the old release keeps its traffic throughout, and the new processes are
//! terminated. A load generator runs the whole time.
//!
//! Exits 0 only when the deployment rolled back, 1.0.0 still serves, no request failed and no
//! process of 2.0.0 is left.

mod common;

use std::time::Duration;

use common::{Demo, Load, summary};
use immut::Phase;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_rollback").await?;
        let v1 = demo.release(Version::new(1, 0, 0), true)?;
        let broken = demo.release(Version::new(2, 0, 0), false)?;
        let deployer = demo.deployer(3, BlueGreen::new())?;

        println!("\n== deploying {v1}");
        let first = demo.deploy(&deployer, v1.clone(), None).await;
        if !first.succeeded() {
            demo.finish().await?;
            return Err(format!("the first deployment failed: {}", first.summary()).into());
        }

        println!("\n== trying {broken}, whose health check fails, under load");
        let load = Load::start(demo.balancer.addr(), 4);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcome = demo.deploy(&deployer, broken, Some(v1.clone())).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = load.stop().await;
        let orphans = demo.orphans(&v1).await?;

        summary("local rollback", &stats, &outcome, &orphans);
        let rolled_back = matches!(outcome.phase, Phase::RolledBack { .. });
        let only_v1 = stats.by_version.keys().all(|v| v == "1.0.0");
        println!("only 1.0.0 served   {only_v1}");
        demo.finish().await?;
        Ok(rolled_back && only_v1 && stats.failed == 0 && stats.sent > 0 && orphans.is_empty())
    })
}
