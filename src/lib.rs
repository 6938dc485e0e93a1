//! # immut
//!
//! Immutable infrastructure for Rust: a release is an immutable artifact plus a versioned
//! baseline, and going from one release to the next replaces instances, never patches them.
//!
//! This facade re-exports [`immut_core`] and, per cargo feature, the providers.

pub use immut_core::*;

/// The embedded local provider: real processes behind a TCP balancer.
#[cfg(feature = "local")]
pub use immut_local as local;

/// EC2 instances and ELBv2 traffic.
#[cfg(feature = "aws")]
pub use immut_aws as aws;
