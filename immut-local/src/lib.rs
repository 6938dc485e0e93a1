//! # immut-local
//!
//! The embedded provider: a small cloud on one machine. Every instance is a real OS process
//! group on 127.0.0.1 with its own port, and traffic goes through a balancer that is a process
//! of its own per service, like a cloud load balancer. It needs no cloud account, so the whole
//! blue/green, rolling and canary machinery runs on a fresh machine.
//!
//! - [`LocalProvider`]: launches, describes and terminates processes, recording each in a
//!   state directory (default `.immut/`) before it starts and for as long as it may run. The
//!   artifact is an executable file (or a script) whose sha256 is verified before every launch
//!   ([`artifact`] computes it).
//! - [`LocalBalancer`]: the [`Traffic`](immut_core::Traffic) side. An HTTP reverse proxy by
//!   default (keep-alive on both sides; a drain never closes a client's connection), or a TCP
//!   relay. It outlives every deployer, keeps its address, and is steered through a Unix
//!   socket in the state directory.
//! - [`LocalProvider::inventory`] and [`LocalProvider::repair`]: what runs, whatever the state
//!   files say, and the repair of state files that cannot be read.
//! - [`sample`]: the tiny HTTP service the examples deploy.
//!
//! A program that uses the local provider calls [`serve_if_requested`] first thing in `main`:
//! the balancer process (and the sample service of the examples) is this same executable,
//! started again with a hidden flag, so that it works for `cargo run --example` and
//! `cargo install` users alike.
//!
//! The baseline's launch spec gives the process its `args` (`{port}` is replaced by the
//! instance's port), its `env`, and two parameters: `port`, `auto` (default), a fixed port, or
//! a range such as `20000-20099`; and `port_hold`, `until-listening` (default: the port stays
//! reserved until the process listens on it, which needs the process to bind with
//! `SO_REUSEADDR`, as Rust's std and tokio, Go, Node and most servers do) or `none`. Every
//! process also gets `PORT` and the `IMMUT_*` variables of [`env`](mod@env).
//! `sealed` is accepted and means nothing here: a process has no login key, console or agent
//! to close, so the provider reports no access settings and the audit flags none.
//!
//! Linux only: process identity is read from `/proc`. Elsewhere the builders fail with
//! `Unsupported`.

#[cfg(not(unix))]
compile_error!(
    "immut-local runs on Linux only: it identifies processes by pid and start time in /proc and signals process groups"
);

mod balancer;
mod builder;
mod client;
mod config;
mod inventory;
mod provider;
pub mod sample;
#[cfg(feature = "test_tools")]
pub mod test_tools;

use std::path::Path;

use immut_core::semver::Version;
use immut_core::{ArtifactSpec, Result};

pub use balancer::{BalancerInfo, BalancerStatus, LocalBalancer, Protocol};
pub use builder::{BalancerBuilder, LocalBuilder, SpawnCrash};
pub use config::LocalConfig;
pub use inventory::{CorruptFile, Inventory, InventoryBalancer, InventoryInstance, InventoryProcess, Repair};
pub use provider::{LocalProvider, env};

/// The first argument that turns a program into a balancer process (see
/// [`serve_if_requested`]). Tests look for it to prove no balancer was left running.
pub const BALANCER_FLAG: &str = balancer::daemon::FLAG;

/// Call this first thing in `main` of any program that uses the local provider: if this
/// process was started as a balancer ([`BALANCER_FLAG`]) or as the sample service
/// ([`sample::SAMPLE_FLAG`]), it serves until stopped and exits; otherwise it returns at once.
pub fn serve_if_requested() {
    match std::env::args().nth(1).as_deref() {
        Some(balancer::daemon::FLAG) => std::process::exit(balancer::daemon::main()),
        Some(sample::SAMPLE_FLAG) => std::process::exit(sample::main()),
        _ => {}
    }
}

/// An artifact for an executable file: its absolute path and its sha256 digest, computed now.
/// Fails with `InvalidInput` naming `artifact.image` if the file is missing or not executable.
pub fn artifact(name: &str, version: Version, path: impl AsRef<Path>) -> Result<ArtifactSpec> {
    let path = path.as_ref();
    client::check_executable(path)?;
    let absolute = std::fs::canonicalize(path).map_err(|e| {
        immut_core::Error::invalid("artifact.image", format!("{}: {e}", path.display()))
            .with_provider("local")
            .with_source(e)
    })?;
    let digest = client::sha256_file(&absolute)?;
    Ok(ArtifactSpec::new(name, version, absolute.display().to_string()).with_digest(digest))
}
