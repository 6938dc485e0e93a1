use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::analysis::Measurement;
use crate::model::{DeploymentId, InstanceId, ReleaseId};
use crate::strategy::FleetView;

/// What the engine tells a gate of the deployment besides the fleet view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateContext {
    /// The service.
    pub service: String,
    /// The release being deployed.
    pub release: Option<ReleaseId>,
    /// Its artifact version.
    pub version: Option<String>,
    /// The deployment.
    pub deployment: Option<DeploymentId>,
    /// Every observed instance's address, where the provider knows it.
    pub addresses: BTreeMap<InstanceId, String>,
    /// The stable release (the one serving when the deployment began), which a comparative
    /// judge measures beside the new one.
    pub stable_release: Option<ReleaseId>,
    /// The stable release's artifact version.
    pub stable_version: Option<String>,
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Go on.
    Pass,
    /// Not yet; the engine waits (bounded by the progress deadline) and asks again.
    Hold(String),
    /// Stop and roll back.
    Fail(String),
}

/// Decides named gates: manual promotion (`promote`) and canary analysis (`canary-step-N`).
#[async_trait]
pub trait Gate: Send + Sync + Debug {
    /// Judges gate `name` for the observed fleet.
    async fn evaluate(&self, name: &str, view: &FleetView) -> GateVerdict;

    /// Judges gate `name` knowing the deployment; the engine calls this one. By default the
    /// context is not needed and [`Gate::evaluate`] decides.
    async fn evaluate_in(&self, name: &str, view: &FleetView, context: &GateContext) -> GateVerdict {
        let _ = context;
        self.evaluate(name, view).await
    }

    /// The analysis measurements taken since the last call, for the engine to journal and
    /// report (each counts as progress). Gates that measure nothing have none.
    fn take_measurements(&self) -> Vec<Measurement> {
        Vec::new()
    }

    /// Checks the gate's settings against the deployment's progress deadline when the deployer
    /// is built; the error names the field and the fix.
    fn validate(&self, progress_deadline: std::time::Duration) -> Result<(), String> {
        let _ = progress_deadline;
        Ok(())
    }

    /// The least time gate `name` takes to decide, when it runs an analysis there, for the
    /// plan; `None` for a gate that decides at once or by hand.
    fn analysis_duration(&self, name: &str) -> Option<std::time::Duration> {
        let _ = name;
        None
    }

    /// Measurements a resumed deployment had journaled, so that a gate's run continues.
    fn restore_measurements(&self, measurements: Vec<Measurement>) {
        let _ = measurements;
    }
}

/// Passes every gate.
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoApprove;

#[async_trait]
impl Gate for AutoApprove {
    async fn evaluate(&self, _name: &str, _view: &FleetView) -> GateVerdict {
        GateVerdict::Pass
    }
}

/// Gates decided by a person (or another program) through a shared handle.
#[derive(Debug, Clone, Default)]
pub struct ManualGate {
    verdicts: Arc<Mutex<BTreeMap<String, GateVerdict>>>,
}

impl ManualGate {
    /// A gate that holds until told otherwise.
    pub fn new() -> Self {
        ManualGate::default()
    }

    /// Lets gate `name` pass.
    pub fn approve(&self, name: &str) {
        self.set(name, GateVerdict::Pass);
    }

    /// Fails gate `name`, which rolls the deployment back.
    pub fn reject(&self, name: &str, reason: impl Into<String>) {
        self.set(name, GateVerdict::Fail(reason.into()));
    }

    fn set(&self, name: &str, verdict: GateVerdict) {
        self.verdicts.lock().expect("gate lock poisoned").insert(name.to_owned(), verdict);
    }
}

#[async_trait]
impl Gate for ManualGate {
    async fn evaluate(&self, name: &str, _view: &FleetView) -> GateVerdict {
        let verdicts = self.verdicts.lock().expect("gate lock poisoned");
        verdicts
            .get(name)
            .cloned()
            .unwrap_or_else(|| GateVerdict::Hold(format!("waiting for gate {name:?} to be approved")))
    }
}
