//! A fake Compute Engine API, for tests and for trying immut without a Google account.
//!
//! It speaks the public Compute API's wire format (`/compute/v1/projects/{p}/...`, the JSON
//! Google's clients send and expect, Google's error bodies) for what immut uses, and enough
//! around it that other Compute clients can list, describe, create and delete instances:
//!
//! | Resource | Methods |
//! |---|---|
//! | instances | `list` (filter, `maxResults`/`pageToken`, `orderBy`), `aggregatedList`, `get`, `insert`, `bulkInsert` (`count`, `minCount`, `namePattern`, `perInstanceProperties`), `delete`, `stop`, `start`, `setLabels`, `setMetadata` (fingerprint-checked: a stale one is `412 conditionNotMet`) |
//! | disks | `get` (the boot disk each instance gets, with its `sourceImage`) |
//! | images | `list`, `get`, `getFromFamily`, `insert`, `deprecate` (`deprecated.state`) |
//! | regions | `get`, with `quotas` (`CPUS`, `INSTANCES`, `DISKS_TOTAL_GB`, `IN_USE_ADDRESSES`: the limit, and the usage of the project's instances; reported, not enforced) |
//! | instanceGroups (unmanaged, zonal) | `list`, `get`, `insert`, `delete`, `addInstances`, `removeInstances`, `listInstances` |
//! | backendServices (global) | `list`, `get`, `insert`, `patch`, `update` (fingerprints), `delete`, `getHealth` |
//! | zoneOperations, globalOperations | `get`, `wait`, `list` |
//! | the metadata server, per instance ([`FakeGce::metadata_server`]) | `/computeMetadata/v1/instance/image`, `instance/{id,name,hostname,zone,machine-type}`, `instance/attributes/KEY`, `project/project-id` (`Metadata-Flavor: Google` required) |
//!
//! Behaviour over time: operations go `PENDING -> RUNNING -> DONE` and their effects apply at
//! `DONE`; instances go `PROVISIONING -> STAGING -> RUNNING` (and `STOPPING -> TERMINATED`
//! after a stop; a deleted instance is `STOPPING` until its operation is done, then gone and
//! out of its groups). A `requestId` (a UUID) returns the operation it first started and
//! creates nothing new. int64 fields are accepted as numbers or strings. `getHealth` reports
//! only the groups the backend service serves, `capacityScaler` 0 included (probed, no
//! traffic): an instance is `HEALTHY` once it has run for
//! [`Settings::healthy_after_ms`]. Every project exists on first use; the public project
//! `debian-cloud` holds the `debian-12` and `debian-11` families.
//!
//! Faults come through [`FakeGce::inject`] or `POST /_fake/faults` (see [`immut_fake`]), by
//! the API's method names: `compute.instances.bulkInsert`, `compute.zoneOperations.get`, ...
//! An [`Fault::OperationError`] makes the operation the call starts end with that error code;
//! an [`Fault::Unhealthy`] rule with a target (a substring of the instance name or of its
//! image path) keeps matching instances `UNHEALTHY`.

mod error;
pub mod filter;
mod guest;
mod metadata;
mod model;
mod region;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use error::GceError;
pub use immut_fake::guest::GuestServer;
pub use immut_fake::{Fault, FaultRule, Recorded};
pub use model::{PUBLIC_PROJECT, Settings};
pub use wire::int64;

use immut_fake::FakeServer;
use wire::GceApi;

/// A running fake Compute API on 127.0.0.1. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeGce {
    server: FakeServer,
    api: GceApi,
}

impl FakeGce {
    /// Starts on a free port of 127.0.0.1 with the default (fast) timings.
    pub async fn start() -> std::io::Result<FakeGce> {
        FakeGce::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Settings::default()).await
    }

    /// Starts on `addr` with these timings.
    pub async fn start_with(addr: SocketAddr, settings: Settings) -> std::io::Result<FakeGce> {
        let api = GceApi::new(settings);
        let server = FakeServer::start(api.clone(), addr).await?;
        Ok(FakeGce { server, api })
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the client.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Adds a fault rule.
    pub fn inject(&self, rule: FaultRule) {
        self.server.faults().add(rule);
    }

    /// How often faults fired, by `method:fault`.
    pub fn faults_fired(&self) -> BTreeMap<String, u64> {
        self.server.faults().fired()
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.server.faults().clear();
    }

    /// Requests served, by API method.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.server.recorder().counts()
    }

    /// The most recent requests.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.recorder().log()
    }

    /// Moves the model's clock forward (operations and instances progress at once).
    pub fn advance(&self, by: Duration) {
        self.server.clock().advance(by);
    }

    /// Adds a ready image to a project, as an image pipeline would publish it.
    pub fn add_image(&self, project: &str, name: &str, family: Option<&str>) {
        let mut m = self.api.model.lock().expect("model poisoned");
        let id = m.id();
        let created = self.server.clock().now();
        m.project(project).images.insert(
            name.to_owned(),
            model::Image {
                id,
                name: name.to_owned(),
                family: family.map(str::to_owned),
                created,
                deprecation: None,
                replacement: None,
                labels: BTreeMap::new(),
                disk_size_gb: 10,
                description: String::new(),
            },
        );
    }

    /// Starts the metadata server that the instance `name` in `zone` sees (its
    /// `GCE_METADATA_HOST`): `GET /computeMetadata/v1/instance/image` answers the image its
    /// boot disk was made from, `instance/name`, `instance/id`, `instance/zone`,
    /// `instance/attributes/KEY` and `project/project-id` the rest. One server per instance,
    /// because on loopback the caller's address cannot say which instance asks.
    pub async fn metadata_server(&self, project: &str, zone: &str, name: &str) -> std::io::Result<GuestServer> {
        GuestServer::start(guest::GuestApi {
            model: self.api.model.clone(),
            project: project.to_owned(),
            zone: zone.to_owned(),
            name: name.to_owned(),
        })
        .await
    }

    /// Sets a regional quota's limit (`CPUS`, `INSTANCES`, `DISKS_TOTAL_GB`,
    /// `IN_USE_ADDRESSES`), as a project's quota would be lowered or raised.
    pub fn set_quota(&self, project: &str, region: &str, metric: &str, limit: f64) {
        let mut m = self.api.model.lock().expect("model poisoned");
        m.quota_limits.insert((project.to_owned(), region.to_owned(), metric.to_owned()), limit);
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

impl immut_fake::standalone::Standalone for FakeGce {
    type Settings = Settings;

    async fn start(addr: SocketAddr, settings: Settings) -> std::io::Result<Self> {
        FakeGce::start_with(addr, settings).await
    }

    fn url(&self) -> &str {
        FakeGce::url(self)
    }

    async fn stop(self) {
        self.shutdown().await
    }
}
