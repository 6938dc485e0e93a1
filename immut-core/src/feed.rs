//! An optional change feed: a cheap answer to "has anything the engine observes changed since
//! then?", and, from a feed that can tell, "which instances changed?".
//!
//! Without a feed, every poll reads the whole fleet (describe, the serving set, health), which
//! costs O(N) however little changed. With one, a poll on an unchanged fleet costs one feed
//! call ([`ChangeFeed::changed_since`]). A feed that also lists what changed
//! ([`ChangeFeed::changes_since`]) makes an observation cost O(changes): the engine keeps the
//! fleet it observed from one observation to the next, patches it with the instances the feed
//! lists, and asks the health check only about those (and about instances whose run of
//! verdicts is still on its way to a threshold). Everything else keeps its last answer.
//!
//! The engine still reads in full: at its first observation; when the feed cannot tell or its
//! call fails; when the release it judges changes (a rollback); while it replaces named
//! instances; after a health check failed; and at least every
//! [`DeployerBuilder::full_read_every`](crate::DeployerBuilder::full_read_every), so a feed
//! that missed something is corrected within that time.
//!
//! The simulator implements both ([`crate::sim::SimProvider::feed`], wired by
//! [`crate::sim::SimProvider::deployer`]): it knows what each call changed and when time
//! changes an answer. A real backend may, from what it already offers: a watch with a
//! resource version, an event stream of state changes, a last-modified stamp.

use std::fmt::Debug;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::Result;
use crate::model::{Instance, InstanceId};
use crate::provider::Query;

/// One instance whose describe answer, serving membership or health may differ from what it
/// was at the instant a [`ChangeFeed::changes_since`] call asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// The instance.
    pub id: InstanceId,
    /// As describe with the same query would show it now; `None` when describe would not show
    /// it (gone, not visible yet, or no longer matching the query).
    pub instance: Option<Instance>,
    /// Whether it is in the serving set now.
    pub serving: bool,
}

/// Tells whether the fleet, as the engine observes it, may have changed.
#[async_trait]
pub trait ChangeFeed: Send + Sync + Debug {
    /// Whether anything that describe, the serving set or a health check would now answer
    /// differently changed at or after `since` (the instant the engine's last read went out).
    /// `Some(false)` is a promise: the engine skips the read on it. When unsure, answer
    /// `Some(true)`; `None` says the feed cannot tell at all (the engine then reads in full).
    /// An error is treated as `Some(true)`.
    async fn changed_since(&self, since: Instant) -> Result<Option<bool>>;

    /// Every instance whose answer to describe with `query`, whose serving membership or whose
    /// health verdict may differ now from what it was at `since` (the instant the engine's last
    /// read went out), as it is now. Listing an instance that did not change costs a little
    /// work; leaving out one that did is a broken promise: the engine keeps its last answer for
    /// every instance not listed, until its next full read. `None` (the default) says the feed
    /// cannot tell, and the engine reads in full; an error is treated the same way.
    async fn changes_since(&self, since: Instant, query: &Query) -> Result<Option<Vec<Changed>>> {
        let _ = (since, query);
        Ok(None)
    }
}
