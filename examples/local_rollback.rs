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
//! terminated. A load generator (8 clients, 4 of them on keep-alive connections) runs the whole
//! time.
//!
//! Exits 0 only when the deployment rolled back, 1.0.0 still serves, no request failed and no
//! process of 2.0.0 is left.

mod common;

use common::Demo;
use immut::Phase;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_rollback").await?;
        let v1 = demo.release(Version::new(1, 0, 0), true)?;
        let broken = demo.release(Version::new(2, 0, 0), false)?;
        let deployer = demo.deployer(3, BlueGreen::new())?;
        let upgrade =
            demo.upgrade_under_load(&deployer, &v1, &broken, "trying a release whose health check fails").await?;
        let rolled_back = matches!(upgrade.outcome.phase, Phase::RolledBack { .. });
        let only_v1 = upgrade.stats.by_version.keys().all(|v| v == "1.0.0");
        println!("only 1.0.0 served   {only_v1}");
        demo.finish().await?;
        Ok(rolled_back && only_v1 && upgrade.stats.failed == 0 && upgrade.stats.sent > 0 && upgrade.orphans.is_empty())
    })
}
