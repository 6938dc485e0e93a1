//! Analysis: judging a release by what it does, with the semantics of Argo Rollouts' analysis
//! runs. Named metrics are measured at an interval, a number of times; each measurement is
//! `successful`, `failed`, `inconclusive` or `error`, and limits on those counts decide the run.
//!
//! [`AnalysisGate`] runs an analysis as a [`Gate`](crate::engine::Gate): it holds while
//! measurements are due, passes when every metric completed, and fails (which rolls the
//! deployment back) as soon as a limit is crossed.

#[cfg(feature = "http")]
mod compare;
mod evaluate;
mod gate;
mod judge;
mod model;
#[cfg(feature = "http")]
mod prometheus;
mod provider;
mod run;
#[cfg(feature = "http")]
mod scrape;
#[cfg(feature = "http")]
mod smoke;
#[cfg(feature = "http")]
mod template;
#[cfg(feature = "http")]
mod webhook;

#[cfg(feature = "http")]
pub use compare::{ComparativeProvider, Samples};
pub use evaluate::{classify, verdict};
pub use gate::AnalysisGate;
pub use judge::{Judge, JudgeVerdict, Judgement, MannWhitney, mann_whitney};
pub use model::{Analysis, Comparison, Measurement, MeasurementPhase, Metric, RunVerdict, Threshold};
#[cfg(feature = "http")]
pub use prometheus::{PrometheusBuilder, PrometheusProvider};
pub use provider::{AnalysisContext, MetricProvider, Reading};
pub use run::AnalysisRun;
#[cfg(feature = "http")]
pub use scrape::{Aggregation, ScrapeProvider};
#[cfg(feature = "http")]
pub use smoke::SmokeLoad;
#[cfg(feature = "http")]
pub use template::PLACEHOLDERS;
#[cfg(feature = "http")]
pub use webhook::WebhookProvider;
