//! # immut
//!
//! Immutable infrastructure for Rust: a release is an immutable artifact plus a versioned
//! baseline, and going from one release to the next replaces instances, never patches them.
//!
//! This facade re-exports [`immut_core`] and, per cargo feature, the providers:
//!
//! | feature | what it adds |
//! |---|---|
//! | `local` (default) | `immut::local`: real local processes behind a balancer; implies `http` |
//! | `aws` | `immut::aws`: EC2 instances and ELBv2 traffic (needs Rust 1.94.1, like the AWS SDK) |
//! | `gcp` | `immut::gcp`: Compute Engine instances behind a backend service, and a fake Compute API (Rust 1.91) |
//! | `azure` | `immut::azure`: Azure VMs behind Standard Load Balancer backend pools, and a fake ARM |
//! | `http` | `immut::HttpProbe`, the HTTP health probe |
//! | `state-s3`, `state-gcs`, `state-azure` | the shared state ([`state`]) on S3, GCS or Azure Blob by URL |
//! | `conformance` | `immut::conformance`, the suite every provider runs, and `immut::test_tools` |
//! | `report` | `immut::report`: pictures (SVG) and self-contained HTML reports of plans and deployments |
//!
//! (Modules behind a feature are named in plain text here, so the docs build with any feature
//! set.) The re-exports are an explicit list, so that a module added to the core can never collide
//! with a provider's name here (`immut::aws`, `immut::local`, ...).

pub use immut_core::{
    Adopt, AllOf, Artifact, ArtifactSpec, Baseline, BaselineSpec, BlueGreen, Canary, CancelHandle, Capabilities,
    ChangeFeed, Count, Decision, Deployer, DeployerBuilder, Deployment, DeploymentId, Error, ErrorKind, Event,
    FleetView, FnCheck, Health, HealthCheck, Instance, InstanceId, InstanceState, LaunchRequest, LaunchSpec,
    LaunchToken, Outcome, PacingStats, Phase, Provenance, Provider, ProviderExt, ProviderStatus, Query, Readiness,
    Release, ReleaseId, ReplacementStrategy, Result, Rolling, SigningKey, Traffic,
};
pub use immut_core::{
    analysis, audit, checker, dry_run, engine, error, feed, guardrails, health, journal, ledger, model, outcome,
    policy, prelude, process, provider, semver, sim, state, strategy, traffic, watch,
};

#[cfg(feature = "http")]
pub use immut_core::{HttpProbe, VersionCheck};

#[cfg(feature = "conformance")]
pub use immut_core::{conformance, conformance_tests, test_tools};

/// Pictures of plans and deployments: capacity over time against the floor and ceiling.
#[cfg(feature = "report")]
pub use immut_report as report;

/// The embedded local provider: real processes behind a TCP balancer.
#[cfg(feature = "local")]
pub use immut_local as local;

/// EC2 instances and ELBv2 traffic.
#[cfg(feature = "aws")]
pub use immut_aws as aws;

/// Compute Engine instances behind a backend service, and the fake Compute API.
#[cfg(feature = "gcp")]
pub use immut_gcp as gcp;

/// Azure virtual machines behind Standard Load Balancer backend pools, and the fake ARM.
#[cfg(feature = "azure")]
pub use immut_azure as azure;
