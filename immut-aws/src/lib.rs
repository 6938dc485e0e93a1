//! # immut-aws
//!
//! EC2 instances and ELBv2 traffic for immut.
//!
//! - [`AwsProvider`]: one RunInstances call per wave (MinCount = MaxCount = the wave), or one
//!   per subnet when the wave is spread across zones; a zone without capacity
//!   (`InsufficientInstanceCapacity`, no free addresses) passes its share to the next subnet,
//!   and is left out of the split for that instance type for ten minutes (kept as the last
//!   resort), so a rollback's relaunch does not hit it again. Provenance goes on instances and volumes as tags; the engine's token is the
//!   ClientToken. Launch options (a launch template whose image the artifact's AMI overrides,
//!   security groups, an instance profile, IMDSv2 required by default, the root EBS volume,
//!   Spot) come from [`AwsConfig::launch`] and the baseline's `LaunchSpec.params`
//!   ([`LAUNCH_PARAMS`]; an unknown key is an error). Describe uses tag filters and pages;
//!   instances without provenance are looked for only within an [`UnmanagedScope`] (a VPC,
//!   subnets or a tag key), never in the whole region. Terminate takes instances out of the
//!   provider's target groups (honouring each group's deregistration delay), then sends
//!   batches of 1000; already-gone ids are `Ok`. Every id list is sent in chunks of 200, EC2's
//!   limit of values per filter. Against an emulator that ignores ClientToken (moto), build with
//!   [`AwsBuilder::honours_client_token`]`(false)`.
//! - [`AwsTraffic`]: one target group (rolling, canary), or two behind a listener's weighted
//!   forward (blue/green): the idle group sits at weight 0, so ELB health-checks it; new
//!   instances are staged there and the switch moves the weights only once ELB reports them
//!   `healthy`. The switch states its end (new group full, old group 0), so a retry after a lost
//!   answer converges. With both groups serving, weights follow instance counts, which gives a
//!   canary through the listener its real share of requests. See the `traffic` module docs.
//! - Adoption ([`immut_core::Adopt`]): instances launched outside immut are tagged with a
//!   provenance by CreateTags, and nothing else about them changes.
//! - Analysis: [`CloudWatchAlarms`] ([`AwsProvider::alarms`]) fails a gate while any named
//!   CloudWatch alarm is in `ALARM`, as EC2 instance refresh does; all `OK` passes, and
//!   `INSUFFICIENT_DATA` is inconclusive.
//! - Health: [`Ec2StatusChecks`] and ELB target health (`AwsTraffic` is a `HealthCheck` too:
//!   `initial` is unknown, `unhealthy` and `unused` are unhealthy with ELB's reason),
//!   composable with the HTTP probe through `immut_core::AllOf`.
//!
//! **Lean reads.** An answer of DescribeInstances or DescribeTargetHealth is reused for at most
//! [`AwsConfig::read_ttl`] (2 s), never across a wait of the engine, and never once a call of
//! this provider changed what it shows. So one read per engine step serves the serving set, the
//! health check, the registration checks and the terminate check, and a step that follows an
//! action at once reads only what the action changed. Status checks that passed are trusted
//! for a minute (EC2 runs them once a minute); the listener's weights are read once and then
//! kept up to date by the provider's own ModifyListener.
//!
//! Errors go through one mapping: every throttling code of the AWS SDKs (`RequestLimitExceeded`,
//! `EC2ThrottledException`, `PriorRequestNotComplete`, `Throttling`, ...) is `RateLimited`
//! (retried); capacity and quota codes (`InsufficientInstanceCapacity`,
//! `InsufficientFreeAddressesInSubnet`, `InstanceLimitExceeded`, ...) are `QuotaExceeded` (the
//! deployment fails closed); a credential that cannot be found or is refused is
//! `PermissionDenied` naming what is missing (not retried). **Retries**: the engine owns them
//! (backoff with jitter); the SDK's own are turned off, so a throttled call is never retried by
//! two layers. Calls outside the engine go through [`retried`]. **Timeouts**: connect 5 s,
//! attempt 30 s, operation 60 s ([`Timeouts`]). **Pacing**: client-side token buckets
//! ([`Pacing`], governor) mirror EC2's: RunInstances 5 burst / 2 per s, instances 1000 / 2 per s,
//! describes 100 / 20 per s, mutations 100 / 5 per s.
//!
//! Credentials come from the SDK's full default chain (environment, profiles with SSO,
//! `credential_process` or assume-role, web identity, container and instance roles),
//! [`AwsBuilder::credentials`] or [`AwsBuilder::credentials_provider`]; they never appear in
//! `Debug` output, logs, events, errors or a serialized [`AwsConfig`].
//!
//! Files: `config.rs` (settings, launch options), `builder.rs`, `provider.rs` (the provider,
//! adoption, status checks), `traffic.rs` (ELBv2 traffic and target health), `client.rs` (SDK
//! calls and the error mapping), `reads.rs` (what is reused), `access.rs` (what a sealed
//! instance keeps closed, read back), `alarms.rs` (CloudWatch alarms for analysis), `stack.rs`
//! (a demo stack).

mod access;
mod alarms;
mod builder;
mod client;
mod config;
pub mod guardrails;
mod provider;
mod reads;
pub mod stack;
mod traffic;

pub use alarms::CloudWatchAlarms;
pub use builder::AwsBuilder;
pub use client::retried;
pub use config::{
    AwsConfig, Bucket, Ebs, Imds, LAUNCH_PARAMS, LaunchOptions, LaunchTemplate, Pacing, Spot, StaticCredentials,
    Timeouts, UnmanagedScope,
};
pub use provider::{AwsProvider, Ec2StatusChecks};
pub use traffic::AwsTraffic;
