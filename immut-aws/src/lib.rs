//! # immut-aws
//!
//! EC2 instances and ELBv2 traffic for immut.
//!
//! - [`AwsProvider`]: one RunInstances call per wave (MinCount = MaxCount = the wave), with the
//!   provenance as instance and volume tags and the engine's token as ClientToken; describe by
//!   tag filters with pagination; terminate in batches of 1000, already-gone ids are `Ok`. The
//!   AMI is checked with DescribeImages before launching: an unknown image is `InvalidInput`.
//!   Every call that carries an id list (describe by ids, DescribeInstanceStatus, the
//!   registration checks of attach and switch, RegisterTargets, DeregisterTargets, CreateTags)
//!   sends it in chunks of 200, EC2's limit of values per filter. Against an emulator that
//!   ignores ClientToken (moto), build with [`AwsBuilder::honours_client_token`]`(false)`.
//! - [`AwsTraffic`]: one target group (rolling, canary), or two behind a listener for
//!   blue/green, where a switch is one ModifyListener and a rollback is one switch back. Drain
//!   follows `Traffic::switch`: detach deregisters and waits while the targets drain; a
//!   listener switch keeps the old targets registered (for the switch back) and waits the
//!   configured drain time before it returns, since ELBv2 shows no drain state for them.
//! - Adoption ([`immut_core::Adopt`]): instances launched outside immut are tagged with a
//!   provenance by CreateTags, and nothing else about them changes.
//! - Health: [`Ec2StatusChecks`] and target health (`AwsTraffic` is a `HealthCheck` too),
//!   composable with the HTTP probe through `immut_core::AllOf`.
//!
//! Errors go through one mapping: `RequestLimitExceeded` is `RateLimited` (retried),
//! `InsufficientInstanceCapacity` and `InstanceLimitExceeded` are `QuotaExceeded` (the
//! deployment fails closed). **Retries**: the engine owns them (backoff with jitter); the SDK's
//! own retries are turned off, so a throttled call is never retried by two layers.
//! **Pacing**: client-side token buckets ([`Pacing`], governor) mirror EC2's: RunInstances
//! 5 burst / 2 per s, instances 1000 / 2 per s, describes 100 / 20 per s, mutations 100 / 5 per s.
//! Credentials come from the SDK's default chain or [`AwsBuilder::credentials`]; they never
//! appear in `Debug` output, logs, events or errors.

mod builder;
mod client;
mod config;
mod provider;
pub mod stack;

pub use builder::AwsBuilder;
pub use config::{AwsConfig, Bucket, Pacing, StaticCredentials};
pub use provider::{AwsProvider, AwsTraffic, Ec2StatusChecks};
