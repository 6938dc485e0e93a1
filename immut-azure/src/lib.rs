//! # immut-azure
//!
//! Azure virtual machines behind Standard Load Balancer backend pools, for immut, through the
//! `azure_mgmt_compute` and `azure_mgmt_network` 0.21 crates (their models and single
//! requests); and [`fake`], a fake Azure Resource Manager the tests (and anyone without a
//! subscription) run against.
//!
//! - [`AzureProvider`]: one PUT per VM, concurrently within the pacing, each with
//!   `If-None-Match: *`, so a PUT can never update an existing VM in place: that is the
//!   immutability guarantee on Azure. VM names are derived from the launch token, so a retried
//!   PUT targets the same name; a name that exists is adopted when its tags carry the launch's
//!   token and is an error otherwise. The NIC is declared inline
//!   (`networkInterfaceConfigurations`, `networkApiVersion`) and the NIC and OS disk have
//!   `deleteOption: Delete`, so deleting a VM leaves nothing billable behind. The provenance
//!   goes in tags (50 tags, names up to 512 characters, values up to 256: see
//!   [`MAX_TAGS`]). The artifact is a Compute Gallery image version id or a marketplace URN
//!   with a pinned version, checked before the first launch. Describe lists the resource
//!   group's VMs with `$expand=instanceView`, following `nextLink`, and filters by tag;
//!   failed, stopped, deallocated and deleting VMs are still listed, counted and cleaned up.
//!   Terminate deletes each VM and polls the operation to its end; already gone is `Ok`.
//! - Rollback readiness ([`immut_core::Provider::readiness`]): the release's image version
//!   read afresh: a gallery image version that is gone or not `Succeeded` blocks, one past its
//!   `publishingProfile.endOfLifeDate` warns (`excludeFromLatest` does not matter to a pinned
//!   version); a marketplace version that is gone or `Deprecated` blocks, one
//!   `ScheduledForDeprecation` warns. The location's usages (`virtualMachines`, `cores`) give
//!   the room a relaunch has.
//! - Long-running operations are polled by this crate, never by the SDK (whose loop re-sends
//!   the PUT): the `Azure-AsyncOperation` status resource, else `Location`, else the
//!   resource's `provisioningState`, each wait honouring `Retry-After`. A `Failed` or
//!   `Canceled` operation carries its error.
//! - [`AzureTraffic`]: IP-based backend pools of a Standard Load Balancer. Rolling and canary
//!   add and remove VMs' addresses in one pool; blue/green uses two pools, the serving rule on
//!   one and a rule on a test port (same probe) on the other, so the idle pool is probed
//!   before the switch, and the switch points the rules at each other's pool in one update.
//!   Every change is a read-modify-write under `If-Match` (a 412 reads again). Health is the
//!   load balancer's own probe verdict per rule (`LoadBalancerLoadBalancingRules_Health`);
//!   a failed read is an error for the engine to retry, never a verdict.
//! - Errors go through one mapping from ARM's error body: 429 `RateLimited`, 5xx
//!   `Unavailable`, `OperationNotAllowed` / `SkuNotAvailable` / `AllocationFailed` /
//!   `ZonalAllocationFailed` `QuotaExceeded` (the deployment fails closed),
//!   `ResourceNotFound` `NotFound`, 412 `Conflict`, `InvalidParameter` `InvalidInput` naming
//!   the field. **Retries**: the engine owns them; the SDK's retry policy is off. **Pacing**:
//!   token buckets ([`Pacing`]) mirror ARM's per-subscription read, write and delete limits;
//!   the `x-ms-ratelimit-remaining-subscription-*` headers slow calls down before ARM says
//!   429, and a 429's `Retry-After` holds that kind of call until it has passed.
//! - Credentials: client-credentials sign-in from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!   `AZURE_CLIENT_SECRET` against `AZURE_AUTHORITY_HOST` (default Microsoft Entra ID), any
//!   `azure_core` credential, or a static token for the fake; tokens are cached until five
//!   minutes before expiry. Secrets and tokens never appear in `Debug` output, logs, events
//!   or errors.

pub mod access;
mod auth;
mod builder;
mod client;
mod config;
pub mod fake;
pub mod guardrails;
mod provider;
mod readiness;
pub mod stack;

pub use builder::AzureBuilder;
pub use config::{AzureConfig, Bucket, Pacing};
pub use provider::{AzureProvider, AzureTraffic, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_TAGS};
