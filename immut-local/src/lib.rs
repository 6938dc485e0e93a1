//! # immut-local
//!
//! The embedded provider: every instance is a real OS process on 127.0.0.1 with its own port,
//! and traffic goes through a built-in TCP load balancer. It needs no cloud account, so the
//! whole blue/green, rolling and canary machinery runs on a fresh machine.
//!
//! - [`LocalProvider`]: launches, describes and terminates processes, recording each in a
//!   state directory (default `.immut/`) for as long as it may run. The artifact is an
//!   executable file whose sha256 is verified before every launch ([`artifact`] computes it).
//! - [`LocalBalancer`]: the [`Traffic`](immut_core::Traffic) side, with draining detaches.
//! - [`sample`]: the tiny HTTP service the examples deploy.
//!
//! The baseline's launch spec gives the process its `args` (`{port}` is replaced by the
//! instance's port), its `env`, and a `port` parameter: `auto` (default), a fixed port, or a
//! range such as `20000-20099`. Every process also gets `PORT` and the `IMMUT_*` variables of
//! [`env`](mod@env).
//!
//! Linux only: process identity is read from `/proc`.

mod balancer;
mod builder;
mod client;
mod config;
mod provider;
pub mod sample;

use std::path::Path;

use immut_core::semver::Version;
use immut_core::{ArtifactSpec, Result};

pub use balancer::LocalBalancer;
pub use builder::{BalancerBuilder, LocalBuilder};
pub use config::LocalConfig;
pub use provider::{LocalProvider, env};

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
