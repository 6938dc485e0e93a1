//! # immut-core
//!
//! Never patch a server: replace it. This crate holds the release model, the contracts every
//! backend implements ([`Provider`], [`Traffic`], [`HealthCheck`]), the replacement strategies
//! ([`BlueGreen`], [`Rolling`], [`Canary`]), the [`Deployer`] engine, the [`sim`]ulator and the
//! dry-run.
//!
//! A blue/green deployment from release 1.0.0 to 1.1.0 on the simulator, start to finish, in
//! virtual time:
//!
//! ```
//! use std::time::Duration;
//! use immut_core::prelude::*;
//! use immut_core::sim::SimProvider;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> immut_core::Result<()> {
//! let sim = SimProvider::builder()
//!     .api_latency(Duration::from_millis(100))
//!     .launch_to_running(Duration::from_secs(30))
//!     .boot_to_healthy(Duration::from_secs(15))
//!     .build()?;
//! let baseline = BaselineSpec::new("web-base", Version::new(1, 0, 0), LaunchSpec {
//!     machine_type: Some("m5.large".into()),
//!     ..LaunchSpec::default()
//! });
//! let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "ami-v1"), &baseline)?;
//! let v2 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 1, 0), "ami-v2"), &baseline)?;
//! sim.seed(&v1, 4, true); // four instances of 1.0.0 serve already
//!
//! let deployer = Deployer::builder()
//!     .provider(sim.clone())
//!     .traffic(sim.traffic())
//!     .health(sim.health())
//!     .strategy(BlueGreen::new().bake(Duration::from_secs(60)))
//!     .desired(4)
//!     .min_ready(Duration::from_secs(10))
//!     .build()?;
//! let outcome = deployer.deploy(v2.clone()).with_previous(v1).run().await;
//!
//! assert!(outcome.succeeded(), "{}", outcome.summary());
//! let live = sim.describe(&Query::service("web")).await?;
//! assert_eq!(live.len(), 4);
//! assert!(live.iter().all(|i| i.release() == Some(v2.id())));
//! assert_eq!(outcome.waves, 1);
//! # Ok(())
//! # }
//! ```
//!
//! The engine checks its invariants at every step: serving-healthy instances never drop below
//! the strategy's floor by the engine's own action; live instances never exceed the surge
//! ceiling; only proven instances receive traffic and nothing serving is terminated; and at the
//! end nothing is left over. A violation is refused and rolls the deployment back.

pub mod analysis;
pub mod audit;
pub mod checker;
pub mod dry_run;
pub mod engine;
pub mod error;
pub mod feed;
pub mod guardrails;
pub mod health;
pub mod journal;
pub mod ledger;
pub mod model;
pub mod outcome;
pub mod policy;
pub mod process;
pub mod provider;
pub mod sim;
pub mod state;
pub mod strategy;
pub mod traffic;
pub mod watch;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod test_tools;

pub use engine::{CancelHandle, Deployer, DeployerBuilder, Deployment, Event, Outcome, Phase};
pub use error::{Error, ErrorKind, Result};
pub use feed::ChangeFeed;
pub use health::{AllOf, FnCheck, Health, HealthCheck, ProviderStatus};
#[cfg(feature = "http")]
pub use health::{HttpProbe, VersionCheck};
pub use model::{
    Artifact, ArtifactSpec, Baseline, BaselineSpec, DeploymentId, Instance, InstanceId, InstanceState, LaunchSpec,
    LaunchToken, Provenance, Release, ReleaseId, SigningKey,
};
pub use provider::{Adopt, Capabilities, LaunchRequest, PacingStats, Provider, ProviderExt, Query, Readiness};
pub use strategy::{BlueGreen, Canary, Count, Decision, FleetView, ReplacementStrategy, Rolling};
pub use traffic::Traffic;

/// The common imports.
pub mod prelude {
    pub use crate::engine::{Deployer, Event, Outcome, Phase};
    pub use crate::health::{Health, HealthCheck};
    pub use crate::model::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};
    pub use crate::provider::{Provider, ProviderExt, Query};
    pub use crate::strategy::{BlueGreen, Canary, Count, Rolling};
    pub use crate::traffic::Traffic;
    pub use semver::Version;
}

pub use semver;
