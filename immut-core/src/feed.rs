//! An optional change feed: a cheap answer to "has anything the engine observes changed since
//! then?". Without one, every poll reads the whole fleet (describe, the serving set, health),
//! which costs O(N) however little changed. With one, a poll on an unchanged fleet costs one
//! feed call, and the engine reads in full only when something changed, when its own clock says
//! a decision is due (a strategy's wait, an instance deadline, a consistency window), and at
//! least every [`DeployerBuilder::full_read_every`](crate::DeployerBuilder::full_read_every).
//!
//! The simulator implements it ([`crate::sim::SimProvider::feed`], wired by
//! [`crate::sim::SimProvider::deployer`]). A real backend may, from what it already offers: a
//! watch with a resource version, an event stream of state changes, a last-modified stamp.

use std::fmt::Debug;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::Result;

/// Tells whether the fleet, as the engine observes it, may have changed.
#[async_trait]
pub trait ChangeFeed: Send + Sync + Debug {
    /// Whether anything that describe, the serving set or a health check would now answer
    /// differently changed at or after `since` (the instant the engine's last full read went
    /// out). `Some(false)` is a promise: the engine skips the read on it. When unsure, answer
    /// `Some(true)`; `None` says the feed cannot tell at all (the engine then reads in full).
    /// An error is treated as `Some(true)`.
    async fn changed_since(&self, since: Instant) -> Result<Option<bool>>;
}
