use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::strategy::FleetView;

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
