//! The simulator as a provider of the CLI, for tests and demos. The simulated fleet is kept
//! in a file (`[provider.sim] fleet`), written after every change, so separate commands see
//! the same fleet, and a deployment killed mid-way leaves the fleet as its last call did.
//! Time is not kept: instances read back from the file are running and healthy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use immut::model::{Instance, InstanceId, InstanceState, Provenance};
use immut::sim::{Faults, SimHealth, SimProvider, SimTraffic};
use immut::{
    Adopt, Capabilities, Error, ErrorKind, Health, HealthCheck, LaunchRequest, PacingStats, Provider, Query, Release,
    Result, Traffic,
};
use serde::{Deserialize, Serialize};

use super::Backend;
use crate::spec::SimSettings;

/// What the fleet file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimFleet {
    /// Instances ever created, so new ids never repeat old ones.
    pub created: usize,
    /// The instances that are not gone.
    pub instances: Vec<Instance>,
    /// The serving set.
    pub serving: Vec<InstanceId>,
}

impl SimFleet {
    /// Reads a fleet file; a missing file is an empty fleet.
    pub fn read(path: &Path) -> Result<SimFleet> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid("provider.sim.fleet", format!("{} is not a fleet file: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SimFleet::default()),
            Err(e) => Err(Error::new(ErrorKind::Unavailable, format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let io =
            |e: std::io::Error| Error::new(ErrorKind::Unavailable, format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("fleets serialize")).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// A simulator whose fleet is saved to a file after every change.
#[derive(Debug, Clone)]
struct Persistent {
    sim: SimProvider,
    traffic: SimTraffic,
    health: SimHealth,
    file: Arc<PathBuf>,
}

impl Persistent {
    fn save(&self) -> Result<()> {
        let (instances, serving) = self.sim.inspect();
        SimFleet { created: self.sim.instances_created(), instances, serving }.write(&self.file)
    }

    fn saved<T>(&self, result: Result<T>) -> Result<T> {
        // Save even after a failed call: a partial launch or a half-done detach is the fleet.
        let saved = self.save();
        let value = result?;
        saved.map(|_| value)
    }
}

pub(super) fn connect(s: &SimSettings, releases: &[&Release]) -> Result<Backend> {
    let fleet = SimFleet::read(&s.fleet)?;
    let never_healthy = releases
        .iter()
        .filter(|r| s.never_healthy_versions.contains(&r.artifact().version))
        .map(|r| r.id().clone())
        .collect();
    let faults = Faults {
        never_healthy_releases: never_healthy,
        failing_launch_calls: s.fail_launch_calls.clone(),
        failing_launch_kind: Some(s.fail_launch_kind),
        throttle_rate: s.throttle_rate,
        ..Faults::default()
    };
    let sim = SimProvider::builder().latencies(s.latencies).faults(faults).seed(s.seed).build()?;
    // Ids are numbered by creation: stand-ins for the instances that are gone keep new ids
    // from repeating old ones.
    let gone = fleet.created.saturating_sub(fleet.instances.len());
    let stand_ins: Vec<Instance> = (0..gone)
        .map(|n| Instance {
            id: InstanceId::new(format!("gone-{n}")),
            state: InstanceState::Terminated,
            provenance: None,
            labels: Arc::default(),
            observed: Arc::default(),
            address: None,
        })
        .collect();
    sim.seed_instances(&stand_ins, &[]);
    sim.seed_instances(&fleet.instances, &fleet.serving);
    let p = Persistent { traffic: sim.traffic(), health: sim.health(), sim, file: Arc::new(s.fleet.clone()) };
    let shared = Arc::new(p);
    Ok(Backend {
        provider: shared.clone(),
        traffic: shared.clone(),
        health: shared.clone(),
        adopt: Some(shared),
        alarms: None,
    })
}

#[async_trait]
impl Provider for Persistent {
    fn name(&self) -> &str {
        "sim"
    }
    fn capabilities(&self) -> Capabilities {
        self.sim.capabilities()
    }
    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        let r = self.sim.launch(request).await;
        self.saved(r)
    }
    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        self.sim.describe(query).await
    }
    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let r = self.sim.terminate(ids).await;
        self.saved(r)
    }
    fn next_change(&self) -> Option<tokio::time::Instant> {
        self.sim.next_change()
    }
    async fn readiness(&self, release: &immut::Release) -> Result<immut::Readiness> {
        self.sim.readiness(release).await
    }
    fn pacing(&self) -> PacingStats {
        self.sim.pacing()
    }
}

#[async_trait]
impl Traffic for Persistent {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        self.traffic.serving().await
    }
    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        let r = self.traffic.attach(instances).await;
        self.saved(r)
    }
    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let r = self.traffic.detach(ids).await;
        self.saved(r)
    }
    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        self.traffic.prepare(instances).await
    }
    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let r = self.traffic.switch(attach, detach).await;
        self.saved(r)
    }
}

#[async_trait]
impl HealthCheck for Persistent {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        self.health.check(instance).await
    }
    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        self.health.check_many(instances).await
    }
}

#[async_trait]
impl Adopt for Persistent {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let r = self.sim.adopt(ids, provenance, signature).await;
        self.saved(r)
    }
}
