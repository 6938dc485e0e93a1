//! A fake Azure Resource Manager, for tests and for trying immut without an Azure subscription.
//!
//! It speaks ARM's wire format as the public REST reference gives it
//! (`/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/...` and
//! `.../Microsoft.Network/...`, the JSON of `azure-rest-api-specs` and its examples, ARM's error
//! bodies) for what immut uses, and enough around it that other ARM clients can create, get,
//! list and delete VMs and update load balancers:
//!
//! | Resource | Operations (the reference's operationIds) |
//! |---|---|
//! | virtualMachines | `CreateOrUpdate` (`If-None-Match: *`, `If-Match`), `Get` (`$expand=instanceView`), `List` (`$expand`, `nextLink`), `ListAll`, `Update` (PATCH; of `osProfile` only `allowExtensionOperations` changes), `Delete`, `InstanceView`, `Deallocate` |
//! | virtualMachines/extensions | `CreateOrUpdate` (refused while `osProfile.allowExtensionOperations` is false), `Get`, `List`; a VM reports them in its `resources` |
//! | operations | the `Azure-AsyncOperation` status resource and the `Location` operation result, for Compute and Network |
//! | disks, networkInterfaces | `Get`, `List` (the OS disk and NIC each VM gets, so that leaks are visible) |
//! | galleries/images/versions | `Get`, `CreateOrUpdate` (`publishingProfile.endOfLifeDate`, `excludeFromLatest`), `Delete` |
//! | usages (Compute, per location) | `List`: `cores`, `virtualMachines`, ... with the limit and the subscription's VMs' usage (reported, not enforced) |
//! | virtualMachineImages (marketplace) | `Get`, `List` |
//! | loadBalancers | `CreateOrUpdate` (etags, `If-Match`, `If-None-Match`), `Get`, `List`, `Delete`; `LoadBalancerBackendAddressPools_Get`; `LoadBalancerLoadBalancingRules_Health` |
//! | the Instance Metadata Service, per VM ([`FakeArm::metadata_server`]) | `Instances_GetMetadata` (`/metadata/instance`, and any part of it under a longer path, `format=text` for a leaf; `Metadata: true` and a known `api-version` required, IMDS's error bodies) |
//!
//! Every request needs an `api-version` the resource type serves (400
//! `MissingApiVersionParameter` or `NoRegisteredProviderFound` otherwise) and a bearer token
//! (401 `AuthenticationFailed`; [`Settings::token`] pins which). A VM PUT answers 201 with
//! `provisioningState: Creating`, an `Azure-AsyncOperation` URL and `Retry-After`, and is
//! `Succeeded` after [`Settings::create_ms`]; its power state goes `starting -> running`. The
//! VM's NIC (named after its inline configuration) and OS disk are made with it and deleted
//! with it when their `deleteOption` is `Delete`; otherwise they stay, detached, and the state
//! dump shows them. A DELETE answers 202 with `Location` and `Azure-AsyncOperation`, and a
//! missing VM 204. Lists page by `$skiptoken` with absolute, self-referencing `nextLink`s. Load
//! balancers keep one etag that every child resource reports; a rule's health is `Up` for
//! pool members (IP-based pools) that have run for [`Settings::healthy_after_ms`], and only
//! pools a rule uses are probed at all. Subnets are accepted by the shape of their id.
//!
//! Two switches give the other answers ARM's contract allows, which a client must follow too:
//! [`Settings::async_operation_header`] off leaves out `Azure-AsyncOperation` (a PUT then tells
//! its progress only by `provisioningState`, a DELETE or POST by its `Location`), and
//! [`Settings::rule_health_ms`] makes a rule's health a 202 whose `Location` answers the result
//! once it is computed (`final-state-via: location` in the reference), after its
//! `Azure-AsyncOperation` says `Succeeded` when that header is on.
//!
//! Faults come through [`FakeArm::inject`] or `POST /_fake/faults` (see [`immut_fake`]), by
//! operationId: `VirtualMachines_CreateOrUpdate`, `ComputeOperations_Get`, ... A
//! [`Fault::OperationError`] on `VirtualMachines_CreateOrUpdate` (target: a substring of the VM
//! name) makes the create end `Failed` with that code (`AllocationFailed`,
//! `ZonalAllocationFailed`, ...), leaving the VM in `Failed`, as Azure does; a
//! [`Fault::SlowOperation`] makes it (or a delete) slower; a [`Fault::Unhealthy`] rule with a
//! target (a substring of the VM name or of its image) keeps matching VMs `Down`;
//! [`Fault::RateLimited`] answers ARM's 429 with `Retry-After`.

mod error;
mod gallery;
mod guest;
mod model;
mod usage;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use error::ArmError;
pub use immut_fake::guest::GuestServer;
pub use immut_fake::{Fault, FaultRule, Recorded};
pub use model::{MARKETPLACE, SIZES, Settings};

use immut_fake::FakeServer;
#[cfg(test)]
pub(crate) use model::valid_vm_name;
use wire::ArmApi;
pub(crate) use wire::operation_id;

/// A running fake ARM on 127.0.0.1. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeArm {
    server: FakeServer,
    api: ArmApi,
}

impl FakeArm {
    /// Starts on a free port of 127.0.0.1 with the default timings.
    pub async fn start() -> std::io::Result<FakeArm> {
        FakeArm::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Settings::default()).await
    }

    /// Starts on `addr` with these timings.
    pub async fn start_with(addr: SocketAddr, settings: Settings) -> std::io::Result<FakeArm> {
        let api = ArmApi::new(settings);
        let server = FakeServer::start(api.clone(), addr).await?;
        Ok(FakeArm { server, api })
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the client.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Adds a fault rule.
    pub fn inject(&self, rule: FaultRule) {
        self.server.faults().add(rule);
    }

    /// How often faults fired, by `operationId:fault`.
    pub fn faults_fired(&self) -> BTreeMap<String, u64> {
        self.server.faults().fired()
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.server.faults().clear();
    }

    /// Requests served, by operationId.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.server.recorder().counts()
    }

    /// The most recent requests.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.recorder().log()
    }

    /// Moves the model's clock forward.
    pub fn advance(&self, by: Duration) {
        self.server.clock().advance(by);
    }

    /// Publishes an image version: a gallery image version id
    /// (`/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/galleries/GAL/images/IMG/versions/V`)
    /// or a marketplace `publisher:offer:sku:version`, as an image pipeline would.
    pub fn publish_image(&self, id: &str, location: &str) {
        wire::publish(&self.api.model, id, location);
    }

    /// Starts the Instance Metadata Service that the VM `name` sees: `GET
    /// /metadata/instance?api-version=...` with `Metadata: true` answers its compute metadata
    /// (`storageProfile.imageReference` names the image it was made from) and network metadata.
    /// One server per VM, because on loopback the caller's address cannot say which VM asks.
    pub async fn metadata_server(&self, subscription: &str, group: &str, name: &str) -> std::io::Result<GuestServer> {
        let key = model::Key::new(subscription, group, name);
        GuestServer::start(guest::GuestApi { model: self.api.model.clone(), key }).await
    }

    /// Sets a compute usage's limit in a location (`cores`, `virtualMachines`, ...), as a
    /// subscription's quota would be lowered or raised.
    pub fn set_usage_limit(&self, location: &str, name: &str, limit: i64) {
        let mut m = self.api.model.lock().expect("model poisoned");
        m.usage_limits.insert((location.to_ascii_lowercase(), name.to_owned()), limit);
    }

    /// The model as JSON (what `GET /_fake/state` answers).
    pub fn state(&self) -> serde_json::Value {
        use immut_fake::Api;
        let env = immut_fake::Env {
            clock: self.server.clock().clone(),
            faults: self.server.faults().clone(),
            base_url: self.url().to_owned(),
        };
        self.api.state(&env)
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl immut_fake::standalone::Standalone for FakeArm {
    type Settings = Settings;

    async fn start(addr: SocketAddr, settings: Settings) -> std::io::Result<Self> {
        FakeArm::start_with(addr, settings).await
    }

    fn url(&self) -> &str {
        FakeArm::url(self)
    }

    async fn stop(self) {
        self.shutdown().await
    }
}
