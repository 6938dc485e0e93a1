//! One analysis run: the measurements taken so far and when the next ones are due.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::evaluate::{classify, verdict};
use super::model::{Analysis, Measurement, MeasurementPhase, RunVerdict};
use super::provider::Reading;

/// The run of an analysis for one gate. A run restored from journaled measurements continues
/// where it stood: what was taken counts, and the next measurement is one interval away.
#[derive(Debug, Clone)]
pub struct AnalysisRun {
    gate: String,
    analysis: Analysis,
    measurements: Vec<Measurement>,
    /// Per metric: when its last measurement was taken (or the run started).
    last: BTreeMap<String, Instant>,
}

impl AnalysisRun {
    /// A run starting `now`.
    pub fn new(gate: impl Into<String>, analysis: Analysis, now: Instant) -> Self {
        AnalysisRun::restore(gate, analysis, Vec::new(), now)
    }

    /// A run that already took `measurements` (of this gate; others are ignored), resumed `now`.
    pub fn restore(gate: impl Into<String>, analysis: Analysis, measurements: Vec<Measurement>, now: Instant) -> Self {
        let gate = gate.into();
        let measurements = measurements.into_iter().filter(|m| m.gate == gate).collect();
        let last = analysis.metrics.iter().map(|m| (m.name.clone(), now)).collect();
        AnalysisRun { gate, analysis, measurements, last }
    }

    /// The gate.
    pub fn gate(&self) -> &str {
        &self.gate
    }

    /// The analysis.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// Every measurement so far, in the order taken.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }

    fn phases(&self, metric: &str) -> Vec<MeasurementPhase> {
        self.measurements.iter().filter(|m| m.metric == metric).map(|m| m.phase).collect()
    }

    /// The metrics (by index) that are still running and due at `now`.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        self.analysis
            .metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(verdict(m, &self.phases(&m.name)), RunVerdict::Running(_)))
            .filter(|(_, m)| now >= self.last[&m.name] + m.interval)
            .map(|(i, _)| i)
            .collect()
    }

    /// When the next measurement is due, if any is.
    pub fn next_due(&self) -> Option<Instant> {
        self.analysis
            .metrics
            .iter()
            .filter(|m| matches!(verdict(m, &self.phases(&m.name)), RunVerdict::Running(_)))
            .map(|m| self.last[&m.name] + m.interval)
            .min()
    }

    /// Records what metric `index` read at `now`, and returns the measurement.
    pub fn record(&mut self, index: usize, reading: Result<Reading, String>, now: Instant) -> Measurement {
        let metric = &self.analysis.metrics[index];
        let (phase, message) = classify(metric, &reading);
        let measurement = Measurement {
            gate: self.gate.clone(),
            metric: metric.name.clone(),
            index: self.measurements.iter().filter(|m| m.metric == metric.name).count() as u32 + 1,
            phase,
            value: match reading {
                Ok(Reading::Value(v)) => Some(v),
                _ => None,
            },
            message,
        };
        self.last.insert(metric.name.clone(), now);
        self.measurements.push(measurement.clone());
        measurement
    }

    /// The run's standing: failed as soon as one metric failed, inconclusive when one is,
    /// successful when every metric completed, running otherwise.
    pub fn verdict(&self) -> RunVerdict {
        let verdicts: Vec<RunVerdict> =
            self.analysis.metrics.iter().map(|m| verdict(m, &self.phases(&m.name))).collect();
        if let Some(RunVerdict::Failed(why)) = verdicts.iter().find(|v| matches!(v, RunVerdict::Failed(_))) {
            return RunVerdict::Failed(why.clone());
        }
        if let Some(RunVerdict::Inconclusive(why)) = verdicts.iter().find(|v| matches!(v, RunVerdict::Inconclusive(_)))
        {
            return RunVerdict::Inconclusive(why.clone());
        }
        let running: Vec<String> = verdicts
            .into_iter()
            .filter_map(|v| match v {
                RunVerdict::Running(why) => Some(why),
                _ => None,
            })
            .collect();
        if running.is_empty() { RunVerdict::Successful } else { RunVerdict::Running(running.join("; ")) }
    }
}
