//! What a picture shows, whatever it was made from: samples of capacity, the limits, waves,
//! markers, a summary and the events. [`crate::plan`] and [`crate::recorded`] build one; [`crate::svg`]
//! and [`crate::html`] draw it.

/// Whether a timeline predicts a deployment or records one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A dry-run's prediction: times are predicted under stated latencies.
    Plan,
    /// A deployment as its journal recorded it: times are measured.
    Recorded,
}

/// Capacity as observed (or predicted) from a moment on, until the next sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds since the deployment began.
    pub at_ms: u64,
    /// Serving and healthy instances.
    pub serving_healthy: usize,
    /// Live instances.
    pub total: usize,
}

/// The floor and ceiling in force from a moment on (they change when a rollback begins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsAt {
    /// Milliseconds since the deployment began.
    pub at_ms: u64,
    /// Serving-healthy instances must never go below it.
    pub floor: usize,
    /// Live instances must never go above it.
    pub ceiling: usize,
}

/// One launch wave: from its launch to the next wave's launch (or the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaveBand {
    /// Wave number, from 1.
    pub wave: u32,
    /// When it was launched.
    pub from_ms: u64,
    /// When the next wave was launched, or the timeline ended.
    pub to_ms: u64,
    /// How many instances it launched.
    pub launched: usize,
    /// Whether it relaunched the previous release during a rollback.
    pub rollback: bool,
}

/// What a marker marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MarkerKind {
    /// Instances were launched.
    Launch,
    /// Traffic moved from the old instances to the new ones in one step.
    Switch,
    /// Instances started serving.
    Attach,
    /// Instances stopped serving and drained.
    Detach,
    /// Instances were terminated.
    Terminate,
    /// The deployment started rolling back.
    Rollback,
    /// An analysis measurement was taken (canary or pre- and post-promotion checks).
    Measurement {
        /// Whether it passed.
        passed: bool,
    },
    /// An action failed.
    Failed,
    /// The record ends without an end: the deployment was interrupted there.
    Interrupted,
}

impl MarkerKind {
    /// The class of its SVG element (`marker <name>`), and its name in the legend's key.
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::Launch => "launch",
            MarkerKind::Switch => "switch",
            MarkerKind::Attach => "attach",
            MarkerKind::Detach => "detach",
            MarkerKind::Terminate => "terminate",
            MarkerKind::Rollback => "rollback",
            MarkerKind::Measurement { passed: true } => "measurement-passed",
            MarkerKind::Measurement { passed: false } => "measurement-failed",
            MarkerKind::Failed => "failed",
            MarkerKind::Interrupted => "interrupted",
        }
    }

    /// What the legend says of it.
    pub fn legend(self) -> &'static str {
        match self {
            MarkerKind::Launch => "new instances launched",
            MarkerKind::Switch => "traffic switched to the new release",
            MarkerKind::Attach => "instances start serving",
            MarkerKind::Detach => "instances stop serving",
            MarkerKind::Terminate => "old instances terminated",
            MarkerKind::Rollback => "rollback began",
            MarkerKind::Measurement { passed: true } => "analysis measurement passed",
            MarkerKind::Measurement { passed: false } => "analysis measurement failed",
            MarkerKind::Failed => "an action failed",
            MarkerKind::Interrupted => "the record stops here (interrupted)",
        }
    }

    /// All kinds, in the legend's order.
    pub fn all() -> [MarkerKind; 10] {
        [
            MarkerKind::Launch,
            MarkerKind::Attach,
            MarkerKind::Switch,
            MarkerKind::Detach,
            MarkerKind::Terminate,
            MarkerKind::Measurement { passed: true },
            MarkerKind::Measurement { passed: false },
            MarkerKind::Rollback,
            MarkerKind::Failed,
            MarkerKind::Interrupted,
        ]
    }
}

/// Something that happened at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// Milliseconds since the deployment began.
    pub at_ms: u64,
    /// What.
    pub kind: MarkerKind,
    /// For people (the element's tooltip).
    pub label: String,
}

/// One row of the events table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Milliseconds since the deployment began.
    pub at_ms: u64,
    /// A word for what happened.
    pub what: String,
    /// The details.
    pub detail: String,
}

/// Everything a picture and a report show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The picture's caption.
    pub title: String,
    /// Predicted or recorded.
    pub source: Source,
    /// Capacity, in time order.
    pub samples: Vec<Sample>,
    /// The limits, in time order; the first applies from the start.
    pub limits: Vec<LimitsAt>,
    /// The launch waves.
    pub waves: Vec<WaveBand>,
    /// Launches, switches, terminations, rollbacks, measurements.
    pub markers: Vec<Marker>,
    /// Where the time axis ends (the end, or the last record).
    pub end_ms: u64,
    /// Name and value pairs for the report's summary.
    pub summary: Vec<(String, String)>,
    /// The events, in order.
    pub events: Vec<Row>,
}

impl Timeline {
    /// The largest instance count the picture must show: the ceiling, or more if it was crossed.
    pub fn y_max(&self) -> usize {
        let limits = self.limits.iter().map(|l| l.ceiling.max(l.floor));
        let samples = self.samples.iter().map(|s| s.total.max(s.serving_healthy));
        limits.chain(samples).max().unwrap_or(0).max(1)
    }

    /// The samples with repeats dropped: only the moments a count changed.
    pub fn changes(&self) -> Vec<Sample> {
        let mut out: Vec<Sample> = Vec::with_capacity(self.samples.len());
        for s in &self.samples {
            match out.last() {
                Some(l) if l.serving_healthy == s.serving_healthy && l.total == s.total => {}
                _ => out.push(*s),
            }
        }
        out
    }
}

/// Milliseconds as people read them: `850 ms`, `12.5 s`, `3 min 20 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => {
            let s = ms as f64 / 1000.0;
            if ms.is_multiple_of(1000) { format!("{s:.0} s") } else { format!("{s:.1} s") }
        }
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}
