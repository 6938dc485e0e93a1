//! An analysis as a gate: it holds while measurements are due.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::time::Instant;

use super::model::{Analysis, Measurement, RunVerdict};
use super::provider::{AnalysisContext, MetricProvider};
use super::run::AnalysisRun;
use crate::engine::{Gate, GateContext, GateVerdict};
use crate::strategy::FleetView;

/// Runs an analysis at every gate it is asked: each canary step (`canary-step-N`), before the
/// blue/green switch (`promote`, against the idle set) and during the bake after it (`bake`).
/// Each gate gets its own run; the measurements it takes are handed to the engine, which
/// journals them as events, so a resumed deployment continues the same run.
#[derive(Debug)]
pub struct AnalysisGate {
    analysis: Analysis,
    providers: BTreeMap<String, Arc<dyn MetricProvider>>,
    context: AnalysisContext,
    runs: tokio::sync::Mutex<BTreeMap<String, AnalysisRun>>,
    restored: Mutex<Vec<Measurement>>,
    taken: Mutex<Vec<Measurement>>,
    #[cfg(feature = "http")]
    smoke: Option<(super::smoke::SmokeLoad, reqwest::Client)>,
}

impl AnalysisGate {
    /// A gate running `analysis`; every metric needs a provider (see [`AnalysisGate::provider`]).
    pub fn new(analysis: Analysis) -> Self {
        AnalysisGate {
            analysis,
            providers: BTreeMap::new(),
            context: AnalysisContext::default(),
            runs: tokio::sync::Mutex::new(BTreeMap::new()),
            restored: Mutex::new(Vec::new()),
            taken: Mutex::new(Vec::new()),
            #[cfg(feature = "http")]
            smoke: None,
        }
    }

    /// Before each pre-promotion measurement (the `promote` gate), sends this load to the idle
    /// instances, which serve no users yet.
    #[cfg(feature = "http")]
    pub fn smoke_load(mut self, load: super::smoke::SmokeLoad) -> Self {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        self.smoke = Some((load, client));
        self
    }

    /// Measures metric `metric` with `provider`.
    pub fn provider(self, metric: impl Into<String>, provider: impl MetricProvider + 'static) -> Self {
        self.provider_arc(metric, Arc::new(provider))
    }

    /// Measures metric `metric` with a shared `provider`.
    pub fn provider_arc(mut self, metric: impl Into<String>, provider: Arc<dyn MetricProvider>) -> Self {
        self.providers.insert(metric.into(), provider);
        self
    }

    /// What measurements are told of the deployment where the engine does not say it (the
    /// engine fills in the service, release, version, deployment id and addresses).
    pub fn context(mut self, context: AnalysisContext) -> Self {
        self.context = context;
        self
    }

    /// The analysis.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    fn check(&self, progress_deadline: std::time::Duration) -> Result<(), String> {
        self.analysis.validate(progress_deadline)?;
        #[cfg(feature = "http")]
        if let Some((load, _)) = &self.smoke {
            let shortest = self.analysis.metrics.iter().map(|m| m.interval).min().unwrap_or_default();
            load.validate(shortest)?;
        }
        for (i, m) in self.analysis.metrics.iter().enumerate() {
            let Some(provider) = self.providers.get(&m.name) else {
                return Err(format!(
                    "analysis.metrics[{i}].provider ({}): no provider measures this metric; add one with \
                     AnalysisGate::provider({:?}, ...)",
                    m.name, m.name
                ));
            };
            if m.success.is_none() && m.failure.is_none() && !provider.decides() {
                return Err(format!(
                    "analysis.metrics[{i}].success ({}): set a success or a failure condition; its provider \
                     measures values and does not decide by itself",
                    m.name
                ));
            }
        }
        Ok(())
    }

    fn instances(name: &str, view: &FleetView) -> Vec<crate::model::InstanceId> {
        if name == crate::strategy::PROMOTE_GATE { view.ready.clone() } else { view.new_serving_healthy.clone() }
    }
}

#[async_trait]
impl Gate for AnalysisGate {
    async fn evaluate(&self, name: &str, view: &FleetView) -> GateVerdict {
        self.evaluate_in(name, view, &GateContext::default()).await
    }

    async fn evaluate_in(&self, name: &str, view: &FleetView, engine: &GateContext) -> GateVerdict {
        let now = Instant::now();
        let mut runs = self.runs.lock().await;
        let run = runs.entry(name.to_owned()).or_insert_with(|| {
            let restored = std::mem::take(&mut *self.restored.lock().expect("analysis lock poisoned"));
            let (mine, others): (Vec<_>, Vec<_>) = restored.into_iter().partition(|m| m.gate == name);
            *self.restored.lock().expect("analysis lock poisoned") = others;
            AnalysisRun::restore(name, self.analysis.clone(), mine, now)
        });
        let instances = Self::instances(name, view);
        let addresses = instances.iter().filter_map(|id| engine.addresses.get(id).cloned()).collect();
        let stable_instances =
            if view.old_serving_healthy.is_empty() { view.old_idle.clone() } else { view.old_serving_healthy.clone() };
        let stable_addresses = stable_instances.iter().filter_map(|id| engine.addresses.get(id).cloned()).collect();
        let base = &self.context;
        let context = AnalysisContext {
            gate: name.to_owned(),
            service: if engine.service.is_empty() { base.service.clone() } else { engine.service.clone() },
            release: engine.release.clone().or_else(|| base.release.clone()),
            version: engine.version.clone().or_else(|| base.version.clone()),
            deployment: engine.deployment.clone().or_else(|| base.deployment.clone()),
            instances,
            addresses,
            stable_release: engine.stable_release.clone().or_else(|| base.stable_release.clone()),
            stable_version: engine.stable_version.clone().or_else(|| base.stable_version.clone()),
            stable_instances,
            stable_addresses,
        };
        let due = run.due(now);
        #[cfg(feature = "http")]
        if let Some((load, client)) = &self.smoke
            && name == crate::strategy::PROMOTE_GATE
            && !due.is_empty()
        {
            let answered = load.send(client, &context.addresses).await;
            tracing::info!(gate = name, answered, instances = context.addresses.len(), "smoke load sent");
        }
        for index in due {
            let metric = &self.analysis.metrics[index];
            let reading = match self.providers.get(&metric.name) {
                Some(p) => p.measure(&context).await,
                None => Err(format!("no provider measures metric {:?}", metric.name)),
            };
            let measurement = run.record(index, reading, Instant::now());
            tracing::info!(gate = name, metric = %measurement.metric, index = measurement.index,
                phase = %measurement.phase, "analysis measurement: {}", measurement.message);
            self.taken.lock().expect("analysis lock poisoned").push(measurement);
        }
        match run.verdict() {
            RunVerdict::Successful => GateVerdict::Pass,
            RunVerdict::Failed(why) => GateVerdict::Fail(format!("analysis failed: {why}")),
            RunVerdict::Inconclusive(why) => GateVerdict::Hold(format!("analysis inconclusive: {why}")),
            RunVerdict::Running(why) => GateVerdict::Hold(format!("analysis running: {why}")),
        }
    }

    fn validate(&self, progress_deadline: std::time::Duration) -> Result<(), String> {
        self.check(progress_deadline)
    }

    fn analysis_duration(&self, name: &str) -> Option<std::time::Duration> {
        let _ = name;
        Some(self.analysis.min_duration())
    }

    fn take_measurements(&self) -> Vec<Measurement> {
        std::mem::take(&mut *self.taken.lock().expect("analysis lock poisoned"))
    }

    fn restore_measurements(&self, measurements: Vec<Measurement>) {
        self.restored.lock().expect("analysis lock poisoned").extend(measurements);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analysis::{Metric, Reading, Threshold};

    #[derive(Debug)]
    struct Fixed(bool);

    #[async_trait]
    impl MetricProvider for Fixed {
        async fn measure(&self, _: &AnalysisContext) -> Result<Reading, String> {
            Ok(Reading::Value(0.0))
        }
        fn decides(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn a_metric_needs_a_condition_unless_its_provider_decides() {
        let bare = Analysis::new([Metric::new("m", Duration::from_secs(1), 1)]);
        let deadline = Duration::from_secs(60);
        let e = AnalysisGate::new(bare.clone()).provider("m", Fixed(false)).check(deadline).unwrap_err();
        assert!(e.starts_with("analysis.metrics[0].success (m): set a success or a failure condition"), "{e}");
        assert!(AnalysisGate::new(bare).provider("m", Fixed(true)).check(deadline).is_ok());
        let judged = Analysis::new([Metric::new("m", Duration::from_secs(1), 1).success(Threshold::below(1.0))]);
        assert!(AnalysisGate::new(judged).provider("m", Fixed(false)).check(deadline).is_ok());
    }
}
