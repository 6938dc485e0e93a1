//! # immut-gcp
//!
//! Compute Engine instances behind a backend service, for immut, through Google's official
//! client (`google-cloud-compute-v1`); and [`fake`], a fake Compute API the tests (and anyone
//! without a Google account) run against.
//!
//! - [`GcpProvider`]: one `instances.bulkInsert` per wave (count = minCount = the wave), named
//!   by a pattern derived from the launch token and sent with a `requestId` (a UUID v5 of the
//!   token), so GCE deduplicates a retried call; the engine still adopts by token first. The
//!   provenance is written as labels (encoded for GCE's `[a-z0-9_-]`, 63 characters) and in full
//!   to the instance metadata. Waves are spread over the zones; a zone out of capacity is
//!   `QuotaExceeded`, or the next zone is tried with [`GcpBuilder::zone_fallback`]. Describe is
//!   `instances.list` per zone with label filters, following `nextPageToken`; stopped and
//!   suspended instances are still listed, counted and cleaned up. Terminate deletes each
//!   instance, concurrently within the pacing; already gone is `Ok`. The artifact is an image
//!   (`projects/P/global/images/NAME` or a family), checked before its first launch.
//! - Rollback readiness ([`immut_core::Provider::readiness`]): a fresh `images.get` (or
//!   `images.getFromFamily`) of the release's image: `OBSOLETE`, `DELETED`, `FAILED` or gone
//!   blocks, `DEPRECATED` warns; `regions.get` of the zones' regions gives the room a
//!   relaunch has under the `INSTANCES`, `CPUS` and the machine family's CPU quotas.
//! - Every long-running operation is polled to `DONE` and its `error` checked: the official
//!   poller returns `Ok` for an operation that failed, and that is never read as success.
//! - [`GcpTraffic`]: a backend service with unmanaged instance groups (one per zone, and per
//!   colour). Rolling and canary add and remove whole waves on one group; blue/green stages new
//!   instances in the idle colour (`capacityScaler` 0: probed, no traffic) and switches with one
//!   `backendServices.patch`. Health comes from `backendServices.getHealth`; a failed read is an
//!   error for the engine to retry, never a verdict.
//! - Errors go through one mapping, by HTTP status: 429 and 403 `rateLimitExceeded` /
//!   `userRateLimitExceeded` are `RateLimited`, 5xx `Unavailable` (both retried);
//!   `QUOTA_EXCEEDED` and `ZONE_RESOURCE_POOL_EXHAUSTED*` are `QuotaExceeded` (the deployment
//!   fails closed); 404 `NotFound`; 400 `InvalidInput` naming the field. **Retries**: the engine
//!   owns them; the client's are turned off. **Pacing**: token buckets ([`Pacing`]) mirror the
//!   Compute API's per-project rate quotas. Credentials (Application Default Credentials, or
//!   [`GcpBuilder::credentials`]) never appear in `Debug` output, logs, events or errors.

pub mod access;
mod builder;
mod client;
mod config;
pub mod fake;
pub mod guardrails;
mod provider;
mod readiness;
pub mod stack;

pub use builder::GcpBuilder;
pub use config::{Bucket, GcpConfig, Pacing};
pub use provider::{GcpProvider, GcpTraffic, metadata_keys};
