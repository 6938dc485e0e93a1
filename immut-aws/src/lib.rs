//! # immut-aws
//!
//! EC2 instances and ELBv2 traffic for immut.
//!
//! - [`AwsProvider`]: one RunInstances call per wave (MinCount = MaxCount = the wave), with the
//!   provenance as instance and volume tags and the engine's token as ClientToken; describe by
//!   tag filters with pagination; terminate in batches of 1000, already-gone ids are `Ok`. The
//!   AMI is checked with DescribeImages before launching: an unknown image is `InvalidInput`.
//! - [`AwsTraffic`]: one target group (rolling, canary), or two behind a listener for
//!   blue/green, where a switch is one ModifyListener and a rollback is one switch back.
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
