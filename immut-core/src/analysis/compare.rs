//! The comparative judge on Prometheus: one query, asked for the canary and for the stable
//! release, and a [`Judge`] deciding on the difference.

use std::time::Duration;

use async_trait::async_trait;

use super::judge::{Judge, JudgeVerdict};
use super::prometheus::{PrometheusProvider, Series};
use super::provider::{AnalysisContext, MetricProvider, Reading};
use super::template::Side;
use crate::error::{Error, Result};

/// Where the samples of each side come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Samples {
    /// One sample per series of an instant query: per instance, with
    /// `sum by (instance) (...)`. A single canary instance gives a single sample, so this
    /// fits wide canaries.
    PerSeries,
    /// One sample per `step` over the last `window` (`GET /api/v1/query_range`), of every
    /// series. Make the query's own range (`rate(x[<range>])`) no longer than `step`, so that
    /// the samples do not overlap and stay independent.
    PerStep {
        /// How far back.
        window: Duration,
        /// The time between samples.
        step: Duration,
    },
}

/// A [`MetricProvider`] that asks Prometheus the same query for the canary (the release under
/// analysis, its instances) and for the stable release (the one serving when the deployment
/// began, its instances), and lets a [`Judge`] decide: a significant increase is a refusal
/// (`failed`), none is a pass (`successful`), fewer samples than the judge's `min_samples` on
/// a side is undecided (`inconclusive`). The placeholders name each side's own release, version
/// and instances (see [`PrometheusProvider`]). The metric's own success and failure conditions
/// never apply: the judge decides, as a webhook does.
#[derive(Debug)]
pub struct ComparativeProvider {
    prometheus: PrometheusProvider,
    judge: Judge,
    samples: Samples,
}

impl ComparativeProvider {
    /// Judges `prometheus`'s query with `judge` over `samples`; the error names the field.
    pub fn new(prometheus: PrometheusProvider, judge: Judge, samples: Samples) -> Result<Self> {
        judge.validate().map_err(|e| Error::invalid("judge", e))?;
        if let Samples::PerStep { window, step } = samples {
            if step.is_zero() || window < step {
                return Err(Error::invalid(
                    "judge.samples",
                    format!(
                        "step {}s must be above zero and within the window {}s",
                        step.as_secs_f64(),
                        window.as_secs_f64()
                    ),
                ));
            }
            let per_series = (window.as_secs_f64() / step.as_secs_f64()).floor() as usize + 1;
            if per_series < judge.min_samples {
                return Err(Error::invalid(
                    "judge.samples",
                    format!(
                        "a window of {}s at a step of {}s gives at most {per_series} samples a series, fewer than \
                         min_samples ({}); lengthen the window or shorten the step",
                        window.as_secs_f64(),
                        step.as_secs_f64(),
                        judge.min_samples
                    ),
                ));
            }
        }
        Ok(ComparativeProvider { prometheus, judge, samples })
    }

    /// The judge.
    pub fn judge(&self) -> &Judge {
        &self.judge
    }

    async fn side(&self, side: &Side<'_>) -> std::result::Result<Vec<f64>, String> {
        let query = self.prometheus.template.render(side)?;
        let series: Vec<Series> = match self.samples {
            Samples::PerSeries => self.prometheus.instant(&query).await?,
            Samples::PerStep { window, step } => self.prometheus.range(&query, window, step).await?,
        };
        Ok(series.into_iter().flat_map(|s| s.values).collect())
    }
}

#[async_trait]
impl MetricProvider for ComparativeProvider {
    fn decides(&self) -> bool {
        true
    }

    async fn measure(&self, context: &AnalysisContext) -> std::result::Result<Reading, String> {
        if context.stable_release.is_none() && context.stable_addresses.is_empty() {
            return Err("no stable release serves beside the canary, so there is nothing to compare it with".into());
        }
        let canary = self.side(&Side::canary(context)).await?;
        let stable = self.side(&Side::stable(context)).await?;
        let judgement = self.judge.judge(&canary, &stable);
        tracing::info!(gate = %context.gate, %judgement, "comparative judgement");
        Ok(match judgement.verdict {
            JudgeVerdict::Pass => Reading::Passed,
            JudgeVerdict::Fail => Reading::Refused(judgement.to_string()),
            JudgeVerdict::Inconclusive => Reading::Undecided(judgement.to_string()),
        })
    }
}
