//! The settings of an analysis and the record of one measurement.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a measured value is compared with a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// value < threshold
    Below,
    /// value <= threshold
    AtMost,
    /// value > threshold
    Above,
    /// value >= threshold
    AtLeast,
}

/// A condition on the measured value: `value <op> threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// The comparison.
    pub op: Comparison,
    /// The threshold.
    pub value: f64,
}

impl Threshold {
    /// `value < threshold`.
    pub fn below(value: f64) -> Self {
        Threshold { op: Comparison::Below, value }
    }

    /// `value <= threshold`.
    pub fn at_most(value: f64) -> Self {
        Threshold { op: Comparison::AtMost, value }
    }

    /// `value > threshold`.
    pub fn above(value: f64) -> Self {
        Threshold { op: Comparison::Above, value }
    }

    /// `value >= threshold`.
    pub fn at_least(value: f64) -> Self {
        Threshold { op: Comparison::AtLeast, value }
    }

    /// Whether `value` meets the condition. NaN meets none.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Comparison::Below => value < self.value,
            Comparison::AtMost => value <= self.value,
            Comparison::Above => value > self.value,
            Comparison::AtLeast => value >= self.value,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
        };
        write!(f, "{op} {}", self.value)
    }
}

/// One named metric: what is measured, how often, and what counts as good or bad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name, unique within the analysis (it names the provider too).
    pub name: String,
    /// Time between measurements; the first is taken one interval after the run starts, so
    /// that the release has served for a while before it is judged.
    pub interval: Duration,
    /// How many measurements complete the metric.
    pub count: u32,
    /// A measurement that meets this is `successful`.
    pub success: Option<Threshold>,
    /// A measurement that meets this is `failed`.
    pub failure: Option<Threshold>,
    /// The metric fails when more than this many measurements failed (Argo's default: 0).
    pub failure_limit: u32,
    /// The metric is inconclusive when more than this many measurements were (default: 0).
    pub inconclusive_limit: u32,
    /// The metric fails when more than this many measurements in a row were errors (default: 4).
    pub consecutive_error_limit: u32,
}

impl Metric {
    /// A metric measured `count` times, `interval` apart, with Argo's default limits and no
    /// conditions yet.
    pub fn new(name: impl Into<String>, interval: Duration, count: u32) -> Self {
        Metric {
            name: name.into(),
            interval,
            count,
            success: None,
            failure: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
        }
    }

    /// Sets the success condition.
    pub fn success(mut self, condition: Threshold) -> Self {
        self.success = Some(condition);
        self
    }

    /// Sets the failure condition.
    pub fn failure(mut self, condition: Threshold) -> Self {
        self.failure = Some(condition);
        self
    }

    /// Sets `failure_limit`.
    pub fn failure_limit(mut self, limit: u32) -> Self {
        self.failure_limit = limit;
        self
    }

    /// Sets `inconclusive_limit`.
    pub fn inconclusive_limit(mut self, limit: u32) -> Self {
        self.inconclusive_limit = limit;
        self
    }

    /// Sets `consecutive_error_limit`.
    pub fn consecutive_error_limit(mut self, limit: u32) -> Self {
        self.consecutive_error_limit = limit;
        self
    }

    /// The least time the metric takes to complete: its count times its interval.
    pub fn min_duration(&self) -> Duration {
        self.interval * self.count
    }
}

/// An analysis: metrics measured side by side. Every metric must complete for the run to pass.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Analysis {
    /// The metrics.
    pub metrics: Vec<Metric>,
}

impl Analysis {
    /// An analysis of these metrics.
    pub fn new(metrics: impl IntoIterator<Item = Metric>) -> Self {
        Analysis { metrics: metrics.into_iter().collect() }
    }

    /// The least time a run takes: its slowest metric's count times interval.
    pub fn min_duration(&self) -> Duration {
        self.metrics.iter().map(Metric::min_duration).max().unwrap_or_default()
    }

    /// Checks the settings against the deployment's progress deadline; the error names the field
    /// and the fix.
    pub fn validate(&self, progress_deadline: Duration) -> Result<(), String> {
        if self.metrics.is_empty() {
            return Err("analysis.metrics: an analysis needs at least one metric".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let field = format!("analysis.metrics[{i}]");
            if m.name.trim().is_empty() {
                return Err(format!("{field}.name: a metric needs a name"));
            }
            if !names.insert(m.name.as_str()) {
                return Err(format!("{field}.name: {:?} is used twice; give each metric its own name", m.name));
            }
            if m.count == 0 {
                return Err(format!("{field}.count ({}): must be at least 1", m.name));
            }
            if m.interval.is_zero() {
                return Err(format!("{field}.interval ({}): must be longer than zero", m.name));
            }
            if m.interval > progress_deadline {
                return Err(format!(
                    "{field}.interval ({}): {}s is longer than the progress deadline ({}s), which would expire \
                     between two measurements; shorten the interval or lengthen the deadline",
                    m.name,
                    m.interval.as_secs_f64(),
                    progress_deadline.as_secs_f64()
                ));
            }
            for (which, t) in [("success", m.success), ("failure", m.failure)] {
                if let Some(t) = t
                    && !t.value.is_finite()
                {
                    return Err(format!("{field}.{which} ({}): the threshold must be a finite number", m.name));
                }
            }
        }
        Ok(())
    }
}

/// What a measurement showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasurementPhase {
    /// The success condition held (or the failure condition did not, when only it is set).
    Successful,
    /// The failure condition held (or the success condition did not, when only it is set).
    Failed,
    /// Neither condition decided, or there was nothing to measure (no data, no traffic).
    Inconclusive,
    /// The provider could not be asked (unreachable, timed out, malformed answer).
    Error,
}

impl std::fmt::Display for MeasurementPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeasurementPhase::Successful => "successful",
            MeasurementPhase::Failed => "failed",
            MeasurementPhase::Inconclusive => "inconclusive",
            MeasurementPhase::Error => "error",
        })
    }
}

/// One measurement of one metric, as journaled and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The gate (and so the run) it belongs to: `canary-step-1`, `promote`, `bake`.
    pub gate: String,
    /// The metric.
    pub metric: String,
    /// Its number within the metric's run, from 1.
    pub index: u32,
    /// What it showed.
    pub phase: MeasurementPhase,
    /// The measured value, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why (the condition it met, the error, or what was missing).
    pub message: String,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunVerdict {
    /// Measurements are still due.
    Running(String),
    /// Every metric completed within its limits.
    Successful,
    /// A limit was crossed.
    Failed(String),
    /// Too many measurements decided nothing; as in Argo, the deployment waits (here until
    /// its progress deadline rolls it back).
    Inconclusive(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Metric {
        Metric::new("error-ratio", Duration::from_secs(30), 4).success(Threshold::below(0.01))
    }

    #[test]
    fn settings_are_validated_naming_the_field() {
        let deadline = Duration::from_secs(60);
        let cases: Vec<(Analysis, Option<&str>)> = vec![
            (Analysis::new([good()]), None),
            (Analysis::default(), Some("analysis.metrics:")),
            (Analysis::new([Metric { name: " ".into(), ..good() }]), Some("analysis.metrics[0].name")),
            (Analysis::new([good(), good()]), Some("analysis.metrics[1].name")),
            (Analysis::new([Metric { count: 0, ..good() }]), Some("analysis.metrics[0].count")),
            (Analysis::new([Metric { interval: Duration::ZERO, ..good() }]), Some("analysis.metrics[0].interval")),
            (
                Analysis::new([Metric { interval: Duration::from_secs(61), ..good() }]),
                Some("analysis.metrics[0].interval (error-ratio): 61s is longer than the progress deadline (60s)"),
            ),
            // Whether a metric needs a condition depends on its provider: the gate checks it.
            (Analysis::new([Metric { success: None, ..good() }]), None),
            (Analysis::new([good().failure(Threshold::above(f64::INFINITY))]), Some("analysis.metrics[0].failure")),
        ];
        for (analysis, expected) in cases {
            match (analysis.validate(deadline), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(field)) => assert!(e.starts_with(field), "{e} should start with {field}"),
                (got, want) => panic!("{analysis:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_least_duration_is_count_times_interval_of_the_slowest_metric() {
        let fast = Metric::new("fast", Duration::from_secs(5), 10).success(Threshold::below(1.0));
        assert_eq!(Analysis::new([good(), fast]).min_duration(), Duration::from_secs(120));
    }

    #[test]
    fn a_measurement_round_trips_as_json() {
        let m = Measurement {
            gate: "canary-step-1".into(),
            metric: "error-ratio".into(),
            index: 2,
            phase: MeasurementPhase::Failed,
            value: Some(0.05),
            message: "0.05 misses the success condition < 0.01".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""phase":"failed""#), "{json}");
        assert_eq!(serde_json::from_str::<Measurement>(&json).unwrap(), m);
    }
}
