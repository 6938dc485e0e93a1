//! Where measurements come from.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{DeploymentId, InstanceId, ReleaseId};

/// What a provider is asked about: the deployment, and the instances under analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnalysisContext {
    /// The gate the measurement is for (`canary-step-1`, `promote`, `bake`).
    pub gate: String,
    /// The service.
    pub service: String,
    /// The release being deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseId>,
    /// Its artifact version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentId>,
    /// The new release's instances under analysis (serving ones at a canary step and during the
    /// bake, the idle set before a blue/green switch).
    pub instances: Vec<InstanceId>,
    /// Their addresses (`host:port`), where the caller knows them.
    pub addresses: Vec<String>,
    /// The stable release (the one serving when the deployment began), for a comparative judge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_release: Option<ReleaseId>,
    /// Its artifact version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The stable release's instances: those serving beside a canary, or, once nothing old
    /// serves (the bake), the idle ones kept for a switch back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stable_instances: Vec<InstanceId>,
    /// Their addresses, where the caller knows them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stable_addresses: Vec<String>,
}

/// What a provider read.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A value, judged by the metric's conditions.
    Value(f64),
    /// Nothing to judge: an empty result, or no traffic to compute a rate from. Never
    /// `successful`: the measurement is `inconclusive`.
    Empty,
    /// Nothing the provider could decide, saying why (a judge with too few samples). Never
    /// `successful`: the measurement is `inconclusive`.
    Undecided(String),
    /// The provider passed it by itself (a webhook's 2xx).
    Passed,
    /// The provider refused it by itself (a webhook's clear refusal), saying why.
    Refused(String),
}

/// A source of measurements (a Prometheus query, the instances' own `/metrics`, a webhook).
#[async_trait]
pub trait MetricProvider: Send + Sync + Debug {
    /// Takes one measurement. An error (unreachable, timed out, malformed) is an `error`
    /// measurement, which counts against `consecutive_error_limit`.
    async fn measure(&self, context: &AnalysisContext) -> Result<Reading, String>;

    /// Whether the provider passes and refuses by itself ([`Reading::Passed`],
    /// [`Reading::Refused`]), so that the metric needs no success or failure condition: a
    /// webhook, the comparative judge. Default `false`: the metric's conditions judge values.
    fn decides(&self) -> bool {
        false
    }
}
