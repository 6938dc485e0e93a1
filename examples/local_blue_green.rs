//! A zero-downtime blue/green deployment on this machine, with no cloud account.
//!
//! ```text
//! cargo run --example local_blue_green            # cleans up at the end
//! cargo run --example local_blue_green -- --keep  # leaves v2 and its balancer running
//! ```
//!
//! 1. Starts the local provider (state in `.immut/local_blue_green`) and the service's HTTP
//!    balancer, a process of its own (this executable, started again with a hidden flag) that
//!    keeps its address in the state directory.
//! 2. Deploys release 1.0.0 of the sample service: 3 real processes behind the balancer.
//! 3. Starts a load generator: 8 clients sending requests through the balancer for the whole
//!    run, 4 of them on keep-alive connections, 4 on a new connection per request.
//! 4. Deploys 2.0.0 blue/green: 3 new processes start beside the old ones, must pass
//!    `GET /healthz` for a second, then all traffic switches in one step, the old processes
//!    drain (their in-flight requests finish; the clients' keep-alive connections stay, since
//!    they end at the balancer), and only then are they terminated.
//! 5. Prints what the clients saw: requests sent, failed (must be 0, resets included), served
//!    by each version.
//!
//! At the end it terminates the instances and stops the balancer; with `--keep` both stay, and
//! the next run finds the same balancer on the same address.
//!
//! The artifact is this example's own executable: started with the sample flag, it serves HTTP
//! instead of deploying. Its sha256 is verified before every launch.
//!
//! Exits 0 only when the deployment succeeded, no request failed and no instance was left over.

mod common;

use common::Demo;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_blue_green").await?;
        let (v1, v2) = (demo.release(Version::new(1, 0, 0), true)?, demo.release(Version::new(2, 0, 0), true)?);
        let deployer = demo.deployer(3, BlueGreen::new().bake(std::time::Duration::from_secs(2)))?;
        let upgrade = demo.upgrade_under_load(&deployer, &v1, &v2, "blue/green").await?;
        demo.finish().await?;
        Ok(upgrade.clean_success())
    })
}
