//! A rolling replacement of 6 local instances, one at a time, never below 6 serving.
//!
//! ```text
//! cargo run --example local_rolling            # cleans up at the end
//! cargo run --example local_rolling -- --keep  # leaves v2 running
//! ```
//!
//! Deploys 1.0.0 of the sample service on 6 processes, then rolls to 2.0.0 with a max surge of
//! 1 and max unavailable of 0: each wave launches one new process, waits until it has passed
//! `GET /healthz` for a second, attaches it, detaches and drains one old process, and only then
//! terminates it. A load generator (8 clients, 4 of them on keep-alive connections) runs through
//! the whole rollout; the summary shows how the traffic moved from one version to the other
//! with 0 failed requests.
//!
//! Exits 0 only when the deployment succeeded, no request failed and no instance was left over.

mod common;

use common::Demo;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_rolling").await?;
        let (v1, v2) = (demo.release(Version::new(1, 0, 0), true)?, demo.release(Version::new(2, 0, 0), true)?);
        let strategy = Rolling::new().max_surge(Count::Count(1)).max_unavailable(Count::Count(0));
        let deployer = demo.deployer(6, strategy)?;
        let upgrade = demo.upgrade_under_load(&deployer, &v1, &v2, "rolling").await?;
        demo.finish().await?;
        Ok(upgrade.clean_success())
    })
}
