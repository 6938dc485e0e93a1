//! The `[analysis]` section: the metrics that decide a canary's steps and a blue/green
//! switch and bake when `strategy.promotion = "analysis"`.
//!
//! ```toml
//! [analysis]
//! smoke_load = { rate = 20, duration = "1s", path = "/" }   # blue/green: load the idle set first
//!
//! [[analysis.metrics]]
//! name = "error-ratio"
//! provider = "scrape"             # scrape (the instances' /metrics), webhook, prometheus, judge or cloudwatch
//! interval = "2s"
//! count = 3
//! success = "< 0.01"              # <, <=, > or >= and a number
//! # failure = ">= 0.05"
//! # failure_limit = 0, inconclusive_limit = 0, consecutive_error_limit = 4
//! ```

use std::sync::Arc;
use std::time::Duration;

use immut::analysis::{
    Aggregation, Analysis, AnalysisGate, ComparativeProvider, Comparison, Judge, Metric, MetricProvider,
    PrometheusProvider, Samples, ScrapeProvider, SmokeLoad, Threshold, WebhookProvider,
};
use serde::Deserialize;
use toml::Spanned;

use super::Checker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    #[serde(default)]
    smoke_load: Option<Spanned<RawSmokeLoad>>,
    #[serde(default)]
    metrics: Option<Spanned<Vec<Spanned<RawMetric>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmokeLoad {
    rate: Spanned<i64>,
    duration: Spanned<String>,
    #[serde(default)]
    path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: Spanned<String>,
    provider: Spanned<String>,
    interval: Spanned<String>,
    count: Spanned<i64>,
    #[serde(default)]
    success: Option<Spanned<String>>,
    #[serde(default)]
    failure: Option<Spanned<String>>,
    #[serde(default)]
    failure_limit: Option<Spanned<i64>>,
    #[serde(default)]
    inconclusive_limit: Option<Spanned<i64>>,
    #[serde(default)]
    consecutive_error_limit: Option<Spanned<i64>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    // scrape
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    counter: Option<Spanned<String>>,
    #[serde(default)]
    status_label: Option<Spanned<String>>,
    #[serde(default)]
    bad_status_prefix: Option<Spanned<String>>,
    #[serde(default)]
    aggregation: Option<Spanned<String>>,
    // webhook, prometheus, judge
    #[serde(default)]
    url: Option<Spanned<String>>,
    // prometheus, judge
    #[serde(default)]
    query: Option<Spanned<String>>,
    #[serde(default)]
    bearer_token_env: Option<Spanned<String>>,
    // judge
    #[serde(default)]
    significance: Option<Spanned<f64>>,
    #[serde(default)]
    tolerance: Option<Spanned<f64>>,
    #[serde(default)]
    min_samples: Option<Spanned<i64>>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    step: Option<Spanned<String>>,
    // cloudwatch
    #[serde(default)]
    alarms: Option<Spanned<Vec<String>>>,
}

/// Where one metric's measurements come from.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricSource {
    /// The instances' own `/metrics` ([`ScrapeProvider`]): the share of requests with a bad status.
    Scrape {
        /// The metrics path (default `/metrics`).
        path: String,
        /// The request counter (default `sample_http_requests_total`).
        counter: String,
        /// Its label holding the status code (default `status`).
        status_label: String,
        /// Statuses that count as bad start with this (default `5`).
        bad_status_prefix: String,
        /// Summed over the instances, or the worst instance.
        worst_instance: bool,
        /// Per scrape (default 2 s).
        timeout: Duration,
    },
    /// A POST of the deployment context ([`WebhookProvider`]): 2xx passes, a refusal fails.
    Webhook {
        /// Where to POST.
        url: String,
        /// Per call (default 10 s).
        timeout: Duration,
    },
    /// An instant query to a Prometheus server ([`PrometheusProvider`]), judged by the
    /// metric's conditions.
    Prometheus(PrometheusSource),
    /// The same query for the canary and the stable release, judged by their difference
    /// ([`ComparativeProvider`]): a significant increase fails.
    Judge {
        /// The query and the server.
        prometheus: PrometheusSource,
        /// The judge's settings.
        judge: Judge,
        /// Per series of an instant query (no window), or per step over a window.
        samples: Samples,
    },
    /// CloudWatch alarms (`immut::aws::CloudWatchAlarms`, the `aws` feature): a measurement
    /// fails while any is in `ALARM`, passes when all are `OK`, and is inconclusive otherwise.
    CloudWatch {
        /// The alarms' names.
        alarms: Vec<String>,
    },
}

/// A factory of CloudWatch alarm providers: the command's AWS connection (see
/// `providers::connect`), given the alarm names of a `cloudwatch` metric.
pub type Alarms<'a> = &'a MakeAlarms;

/// What makes the provider of a `cloudwatch` metric from its alarm names.
pub type MakeAlarms = dyn Fn(&[String]) -> immut::Result<Arc<dyn MetricProvider>> + Send + Sync;

/// The settings check's stand-in for a `cloudwatch` metric's provider: the library checks
/// the gate's settings there and measures nothing, so no AWS connection is opened before a
/// command needs one.
#[derive(Debug)]
struct Unconnected;

#[async_trait::async_trait]
impl MetricProvider for Unconnected {
    async fn measure(&self, _: &immut::analysis::AnalysisContext) -> Result<immut::analysis::Reading, String> {
        Err("the settings check measures nothing".into())
    }

    fn decides(&self) -> bool {
        true
    }
}

/// [`Alarms`] for the settings check (see [`Unconnected`]).
pub fn unconnected(_: &[String]) -> immut::Result<Arc<dyn MetricProvider>> {
    Ok(Arc::new(Unconnected))
}

/// Where a Prometheus query goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusSource {
    /// The server (`http://host:9090`).
    pub url: String,
    /// The query, with `{{service}}`, `{{release}}`, `{{version}}`, `{{deployment}}` and
    /// `{{instances}}` filled in.
    pub query: String,
    /// Per query (default 10 s).
    pub timeout: Duration,
    /// The environment variable holding a bearer token, read when the provider is built.
    pub bearer_token_env: Option<String>,
}

impl PrometheusSource {
    fn build(&self) -> immut::Result<PrometheusProvider> {
        let mut b = PrometheusProvider::builder(self.url.clone(), self.query.clone()).timeout(self.timeout);
        if let Some(name) = &self.bearer_token_env {
            let token = std::env::var(name).map_err(|_| {
                immut::Error::invalid(
                    "bearer_token_env",
                    format!("{name} is not set; export the token in {name}, or remove bearer_token_env"),
                )
            })?;
            b = b.bearer_token(token);
        }
        b.build()
    }
}

impl MetricSource {
    /// The provider. Its settings were checked when the spec was read; what can still fail is
    /// the environment (a bearer token's variable unset since).
    fn provider(&self, alarms: Alarms<'_>) -> immut::Result<Arc<dyn MetricProvider>> {
        Ok(match self {
            MetricSource::CloudWatch { alarms: names } => alarms(names)?,
            MetricSource::Scrape { path, counter, status_label, bad_status_prefix, worst_instance, timeout } => {
                Arc::new(
                    ScrapeProvider::with_timeout(*timeout)
                        .path(path.clone())
                        .counter(counter.clone(), status_label.clone())
                        .bad_status_prefix(bad_status_prefix.clone())
                        .aggregation(if *worst_instance { Aggregation::WorstInstance } else { Aggregation::Summed }),
                )
            }
            MetricSource::Webhook { url, timeout } => Arc::new(WebhookProvider::with_timeout(url.clone(), *timeout)),
            MetricSource::Prometheus(p) => Arc::new(p.build()?),
            MetricSource::Judge { prometheus, judge, samples } => {
                Arc::new(ComparativeProvider::new(prometheus.build()?, *judge, *samples)?)
            }
        })
    }
}

/// The checked `[analysis]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSettings {
    /// The metrics and their limits.
    pub analysis: Analysis,
    /// Each metric's source, by metric name, in the spec's order.
    pub sources: Vec<(String, MetricSource)>,
    /// Load sent to the idle set before each pre-promotion measurement.
    pub smoke_load: Option<SmokeLoad>,
}

impl AnalysisSettings {
    /// Whether a metric reads CloudWatch alarms (the command then needs an AWS connection).
    pub fn reads_cloudwatch(&self) -> bool {
        self.sources.iter().any(|(_, s)| matches!(s, MetricSource::CloudWatch { .. }))
    }

    /// The gate that runs this analysis at every gate of the strategy; `alarms` makes the
    /// providers of `cloudwatch` metrics.
    pub fn gate(&self, alarms: Alarms<'_>) -> immut::Result<AnalysisGate> {
        let mut gate = AnalysisGate::new(self.analysis.clone());
        for (i, (name, source)) in self.sources.iter().enumerate() {
            let provider = source.provider(alarms).map_err(|e| {
                immut::Error::invalid(&format!("analysis.metrics[{i}].{}", field_of(&e)), e.message().to_owned())
            })?;
            gate = gate.provider_arc(name.clone(), provider);
        }
        if let Some(load) = &self.smoke_load {
            gate = gate.smoke_load(load.clone());
        }
        Ok(gate)
    }
}

/// The spec key a provider's error is about: `prometheus.url` is the metric's `url`.
fn field_of(e: &immut::Error) -> String {
    let field = e.message().split_once(": ").map_or("", |(f, _)| f);
    field.rsplit('.').next().filter(|f| !f.is_empty() && !f.contains(' ')).unwrap_or("provider").to_owned()
}

const PROVIDERS: &[&str] = &["scrape", "webhook", "prometheus", "judge", "cloudwatch"];
const SCRAPE_KEYS: &[&str] = &["path", "counter", "status_label", "bad_status_prefix", "aggregation", "timeout"];
const WEBHOOK_KEYS: &[&str] = &["url", "timeout"];
const PROMETHEUS_KEYS: &[&str] = &["url", "query", "timeout", "bearer_token_env"];
const CLOUDWATCH_KEYS: &[&str] = &["alarms"];
const JUDGE_KEYS: &[&str] =
    &["url", "query", "timeout", "bearer_token_env", "significance", "tolerance", "min_samples", "window", "step"];

impl Checker<'_> {
    pub(super) fn analysis(&mut self, raw: &Spanned<RawAnalysis>) -> AnalysisSettings {
        self.note("analysis", raw);
        let a = raw.get_ref();
        let mut metrics = Vec::new();
        let mut sources = Vec::new();
        match &a.metrics {
            Some(list) if !list.get_ref().is_empty() => {
                self.note("analysis.metrics", list);
                for (i, m) in list.get_ref().iter().enumerate() {
                    if let Some((metric, source)) = self.metric(i, m) {
                        sources.push((metric.name.clone(), source));
                        metrics.push(metric);
                    }
                }
            }
            Some(list) => self.err(list, "analysis.metrics: is empty; add at least one [[analysis.metrics]] table"),
            None => self.err(
                raw,
                "analysis.metrics: an analysis needs at least one metric; add an [[analysis.metrics]] table (`immut init` shows one)",
            ),
        }
        let smoke_load = a.smoke_load.as_ref().map(|s| {
            self.note("analysis.smoke_load", s);
            let s = s.get_ref();
            let rate = self.positive("analysis.smoke_load.rate", &s.rate, 1).clamp(1, u32::MAX as i64) as u32;
            let duration = self.duration("analysis.smoke_load.duration", Some(&s.duration), Duration::from_secs(1));
            let mut load = SmokeLoad::new(rate, duration);
            if let Some(path) = &s.path {
                load = load.path(self.url_path("analysis.smoke_load.path", path));
            }
            load
        });
        AnalysisSettings { analysis: Analysis::new(metrics), sources, smoke_load }
    }

    fn metric(&mut self, i: usize, raw: &Spanned<RawMetric>) -> Option<(Metric, MetricSource)> {
        let field = format!("analysis.metrics[{i}]");
        self.note(&field, raw);
        let m = raw.get_ref();
        self.note(&format!("{field}.name"), &m.name);
        let name = m.name.get_ref().clone();
        let interval = self.duration(&format!("{field}.interval"), Some(&m.interval), Duration::from_secs(1));
        let count = self.positive(&format!("{field}.count"), &m.count, 1).clamp(1, u32::MAX as i64) as u32;
        let mut metric = Metric::new(name, interval, count);
        metric.success = m.success.as_ref().and_then(|c| self.condition(&format!("{field}.success"), c));
        metric.failure = m.failure.as_ref().and_then(|c| self.condition(&format!("{field}.failure"), c));
        let limit = |this: &mut Self, key: &str, v: &Option<Spanned<i64>>, default: u32| {
            v.as_ref()
                .map_or(default, |v| this.positive(&format!("{field}.{key}"), v, 0).clamp(0, u32::MAX as i64) as u32)
        };
        metric.failure_limit = limit(self, "failure_limit", &m.failure_limit, metric.failure_limit);
        metric.inconclusive_limit = limit(self, "inconclusive_limit", &m.inconclusive_limit, metric.inconclusive_limit);
        metric.consecutive_error_limit =
            limit(self, "consecutive_error_limit", &m.consecutive_error_limit, metric.consecutive_error_limit);

        self.note(&format!("{field}.provider"), &m.provider);
        let kind = m.provider.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "scrape" => SCRAPE_KEYS,
            "webhook" => WEBHOOK_KEYS,
            "prometheus" => PROMETHEUS_KEYS,
            "judge" => JUDGE_KEYS,
            "cloudwatch" => CLOUDWATCH_KEYS,
            other => {
                self.err(
                    &m.provider,
                    format!(
                        "{field}.provider: {other:?} is not a metric provider; use one of {}",
                        PROVIDERS.join(", ")
                    ),
                );
                return None;
            }
        };
        let present = [
            ("timeout", m.timeout.as_ref().map(Spanned::span)),
            ("path", m.path.as_ref().map(Spanned::span)),
            ("counter", m.counter.as_ref().map(Spanned::span)),
            ("status_label", m.status_label.as_ref().map(Spanned::span)),
            ("bad_status_prefix", m.bad_status_prefix.as_ref().map(Spanned::span)),
            ("aggregation", m.aggregation.as_ref().map(Spanned::span)),
            ("url", m.url.as_ref().map(Spanned::span)),
            ("query", m.query.as_ref().map(Spanned::span)),
            ("bearer_token_env", m.bearer_token_env.as_ref().map(Spanned::span)),
            ("significance", m.significance.as_ref().map(Spanned::span)),
            ("tolerance", m.tolerance.as_ref().map(Spanned::span)),
            ("min_samples", m.min_samples.as_ref().map(Spanned::span)),
            ("window", m.window.as_ref().map(Spanned::span)),
            ("step", m.step.as_ref().map(Spanned::span)),
            ("alarms", m.alarms.as_ref().map(Spanned::span)),
        ];
        self.only(
            &present,
            |key| allowed.contains(&key),
            |key| format!("{field}.{key}: is not a setting of the {kind} provider; it takes {}", allowed.join(", ")),
        );
        let text =
            |v: &Option<Spanned<String>>, default: &str| v.as_ref().map_or(default.to_owned(), |v| v.get_ref().clone());
        let source = match kind {
            "scrape" => MetricSource::Scrape {
                path: m.path.as_ref().map_or("/metrics".to_owned(), |p| self.url_path(&format!("{field}.path"), p)),
                counter: text(&m.counter, "sample_http_requests_total"),
                status_label: text(&m.status_label, "status"),
                bad_status_prefix: text(&m.bad_status_prefix, "5"),
                worst_instance: match m.aggregation.as_ref().map(|a| (a, a.get_ref().as_str())) {
                    None | Some((_, "summed")) => false,
                    Some((_, "worst_instance")) => true,
                    Some((a, other)) => {
                        self.err(
                            a,
                            format!(
                                "{field}.aggregation: {other:?}; use \"summed\" (over all instances) or \"worst_instance\""
                            ),
                        );
                        false
                    }
                },
                timeout: self.duration(&format!("{field}.timeout"), m.timeout.as_ref(), Duration::from_secs(2)),
            },
            "prometheus" => MetricSource::Prometheus(self.prometheus(&field, m)?),
            "cloudwatch" => MetricSource::CloudWatch { alarms: self.alarms(&field, m)? },
            "judge" => {
                let prometheus = self.prometheus(&field, m)?;
                let mut judge = Judge::new();
                if let Some(v) = &m.significance {
                    self.note(&format!("{field}.significance"), v);
                    judge = judge.significance(*v.get_ref());
                }
                if let Some(v) = &m.tolerance {
                    self.note(&format!("{field}.tolerance"), v);
                    judge = judge.tolerance(*v.get_ref());
                }
                if let Some(v) = &m.min_samples {
                    judge = judge.min_samples(self.positive(&format!("{field}.min_samples"), v, 1).max(1) as usize);
                }
                if let Err(e) = judge.validate() {
                    let key = e.split_once(": ").map_or("", |(f, _)| f).rsplit('.').next().unwrap_or("");
                    let span = match key {
                        "significance" => m.significance.as_ref().map(Spanned::span),
                        "tolerance" => m.tolerance.as_ref().map(Spanned::span),
                        _ => m.min_samples.as_ref().map(Spanned::span),
                    };
                    let message = format!("{field}.{}", e.strip_prefix("judge.").unwrap_or(&e));
                    self.errors.push(self.locator.error(span.or(Some(m.provider.span())), message));
                    return None;
                }
                let samples = match (&m.window, &m.step) {
                    (None, None) => Samples::PerSeries,
                    (Some(w), Some(st)) => Samples::PerStep {
                        window: self.duration(&format!("{field}.window"), Some(w), Duration::from_secs(120)),
                        step: self.duration(&format!("{field}.step"), Some(st), Duration::from_secs(10)),
                    },
                    (Some(w), None) | (None, Some(w)) => {
                        self.err(w, format!("{field}.window: give window and step together (one sample per step over the window), or neither (one sample per series)"));
                        return None;
                    }
                };
                if m.success.is_some() || m.failure.is_some() {
                    let c = m.success.as_ref().or(m.failure.as_ref()).expect("one is set");
                    self.err(c, format!("{field}: the judge decides by comparing the canary with the stable release; a judge metric takes no success or failure condition"));
                }
                match prometheus.build().and_then(|built| ComparativeProvider::new(built, judge, samples)) {
                    Ok(_) => MetricSource::Judge { prometheus, judge, samples },
                    Err(e) => {
                        let span =
                            m.window.as_ref().or(m.step.as_ref()).map(Spanned::span).unwrap_or(m.provider.span());
                        let message = format!("{field}.{}", e.message().strip_prefix("judge.").unwrap_or(e.message()));
                        self.errors.push(self.locator.error(Some(span), message));
                        return None;
                    }
                }
            }
            _ => MetricSource::Webhook {
                url: match &m.url {
                    Some(url) => {
                        self.note(&format!("{field}.url"), url);
                        let u = url.get_ref();
                        if !(u.starts_with("http://") || u.starts_with("https://")) {
                            self.err(url, format!("{field}.url: {u:?} is not an http:// or https:// URL"));
                        }
                        u.clone()
                    }
                    None => {
                        self.err(&m.provider, format!("{field}.url: the webhook provider needs the URL to POST to"));
                        String::new()
                    }
                },
                timeout: self.duration(&format!("{field}.timeout"), m.timeout.as_ref(), Duration::from_secs(10)),
            },
        };
        Some((metric, source))
    }

    /// The Prometheus settings of a `prometheus` or `judge` metric, checked by building the
    /// provider (the bearer token's variable must be set).
    fn prometheus(&mut self, field: &str, m: &RawMetric) -> Option<PrometheusSource> {
        let required = |this: &mut Self, key: &str, v: &Option<Spanned<String>>, what: &str| match v {
            Some(v) => {
                this.note(&format!("{field}.{key}"), v);
                Some(v.get_ref().clone())
            }
            None => {
                this.err(&m.provider, format!("{field}.{key}: the {} provider needs {what}", m.provider.get_ref()));
                None
            }
        };
        let url = required(self, "url", &m.url, "the server's URL, such as \"http://127.0.0.1:9090\"");
        let query = required(self, "query", &m.query, "a PromQL query");
        let timeout = self.duration(&format!("{field}.timeout"), m.timeout.as_ref(), Duration::from_secs(10));
        let bearer_token_env = m.bearer_token_env.as_ref().map(|v| {
            self.note(&format!("{field}.bearer_token_env"), v);
            v.get_ref().clone()
        });
        let source = PrometheusSource { url: url?, query: query?, timeout, bearer_token_env };
        if let Err(e) = source.build() {
            let key = field_of(&e);
            let span = match key.as_str() {
                "url" => m.url.as_ref(),
                "query" => m.query.as_ref(),
                "timeout" => m.timeout.as_ref(),
                "bearer_token_env" => m.bearer_token_env.as_ref(),
                _ => None,
            }
            .map_or(m.provider.span(), Spanned::span);
            let problem = e.message().split_once(": ").map_or(e.message(), |(_, p)| p);
            self.errors.push(self.locator.error(Some(span), format!("{field}.{key}: {problem}")));
            return None;
        }
        Some(source)
    }

    /// The alarm names of a `cloudwatch` metric: at least one, none empty; the alarms decide,
    /// so the metric takes no condition.
    fn alarms(&mut self, field: &str, m: &RawMetric) -> Option<Vec<String>> {
        if let Some(c) = m.success.as_ref().or(m.failure.as_ref()) {
            self.err(c, format!("{field}: CloudWatch alarms decide by their state (ALARM fails, OK passes); a cloudwatch metric takes no success or failure condition"));
        }
        let Some(alarms) = &m.alarms else {
            self.err(
                &m.provider,
                format!(
                    "{field}.alarms: the cloudwatch provider needs the alarms' names, such as alarms = [\"web-5xx\"]"
                ),
            );
            return None;
        };
        self.note(&format!("{field}.alarms"), alarms);
        let names = alarms.get_ref();
        if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
            self.err(alarms, format!("{field}.alarms: name at least one alarm, and no empty name"));
            return None;
        }
        Some(names.clone())
    }

    /// A condition such as `"< 0.01"` or `">= 5"`.
    fn condition(&mut self, field: &str, raw: &Spanned<String>) -> Option<Threshold> {
        self.note(field, raw);
        let text = raw.get_ref().trim();
        let (op, rest) = [
            ("<=", Comparison::AtMost),
            (">=", Comparison::AtLeast),
            ("<", Comparison::Below),
            (">", Comparison::Above),
        ]
        .into_iter()
        .find_map(|(sign, op)| text.strip_prefix(sign).map(|rest| (op, rest)))
        .unzip();
        match (op, rest.map(|r| r.trim().parse::<f64>())) {
            (Some(op), Some(Ok(value))) if value.is_finite() => Some(Threshold { op, value }),
            _ => {
                self.err(
                    raw,
                    format!("{field}: {text:?} is not a condition; write a comparison and a number, such as \"< 0.01\" or \">= 5\""),
                );
                None
            }
        }
    }

    fn url_path(&mut self, field: &str, raw: &Spanned<String>) -> String {
        self.note(field, raw);
        if !raw.get_ref().starts_with('/') {
            self.err(
                raw,
                format!("{field}: {:?} is not a path; it starts with '/', such as \"/metrics\"", raw.get_ref()),
            );
        }
        raw.get_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Spec, SpecErrors, parse};
    use super::*;

    const CANARY: &str = r#"service = "web"
desired = 3

[provider]
kind = "sim"

[artifact]
name = "web"
version = "1.0.0"
image = "img-1"

[baseline]
name = "base"
version = "1.0.0"

[strategy]
kind = "canary"
steps = [1]
promotion = "analysis"

[rollout]
progress_deadline = "30s"

[analysis]
smoke_load = { rate = 10, duration = "1s" }

[[analysis.metrics]]
name = "error-ratio"
provider = "scrape"
interval = "2s"
count = 3
success = "< 0.01"
failure = ">= 0.05"
failure_limit = 1

[[analysis.metrics]]
name = "confirm"
provider = "webhook"
url = "http://127.0.0.1:9/confirm"
interval = "5s"
count = 1
success = ">= 1"
"#;

    fn spec(text: &str, overrides: &[&str]) -> Result<Spec, SpecErrors> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        parse(text, Path::new("immut.toml"), Path::new("/srv"), &overrides)
    }

    fn error(text: &str, overrides: &[&str]) -> String {
        spec(text, overrides).expect_err("the spec is refused").to_string()
    }

    #[test]
    fn the_section_reads_into_the_library_analysis() {
        let s = spec(CANARY, &[]).unwrap();
        let a = s.analysis.expect("an analysis");
        let m = &a.analysis.metrics[0];
        assert_eq!((m.name.as_str(), m.interval, m.count), ("error-ratio", Duration::from_secs(2), 3));
        assert_eq!(m.success, Some(Threshold::below(0.01)));
        assert_eq!(m.failure, Some(Threshold::at_least(0.05)));
        assert_eq!((m.failure_limit, m.inconclusive_limit, m.consecutive_error_limit), (1, 0, 4));
        assert!(
            matches!(&a.sources[0].1, MetricSource::Scrape { path, worst_instance: false, .. } if path == "/metrics")
        );
        assert!(matches!(&a.sources[1].1, MetricSource::Webhook { url, .. } if url.ends_with("/confirm")));
        assert_eq!(a.smoke_load, Some(SmokeLoad::new(10, Duration::from_secs(1))));
        assert_eq!(s.promotion, immut::strategy::Promotion::Analysis);
    }

    const PROMETHEUS: &str = r#"
[[analysis.metrics]]
name = "p99"
provider = "prometheus"
url = "http://127.0.0.1:9090"
query = 'histogram_quantile(0.99, sum by (le) (rate(sample_http_request_duration_seconds_bucket{instance=~"{{instances}}"}[1m])))'
interval = "2s"
count = 2
success = "< 0.25"

[[analysis.metrics]]
name = "errors-vs-stable"
provider = "judge"
url = "http://127.0.0.1:9090"
query = 'sum(rate(sample_http_requests_total{status=~"5..",instance=~"{{instances}}"}[10s]))'
interval = "10s"
count = 1
window = "2m"
step = "10s"
significance = 0.05
"#;

    #[test]
    fn prometheus_and_judge_metrics_read_into_their_providers() {
        let text = format!("{CANARY}{PROMETHEUS}");
        let a = spec(&text, &[]).unwrap().analysis.unwrap();
        assert!(matches!(&a.sources[2].1, MetricSource::Prometheus(p) if p.query.contains("{{instances}}")));
        let MetricSource::Judge { judge, samples, .. } = &a.sources[3].1 else { panic!("{:?}", a.sources[3]) };
        assert_eq!(*samples, Samples::PerStep { window: Duration::from_secs(120), step: Duration::from_secs(10) });
        assert_eq!(*judge, Judge::new().significance(0.05));
        assert_eq!(a.gate(&unconnected).unwrap().analysis().metrics.len(), 4);
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        let no_section = CANARY.split("\n[analysis]").next().unwrap();
        let cases: Vec<(String, Vec<&str>, &str)> = vec![
            (no_section.into(), vec![], "strategy.promotion: \"analysis\" needs an [analysis] section"),
            (CANARY.into(), vec!["strategy.promotion=auto"], "analysis: is set but strategy.promotion is not"),
            (
                CANARY.replace("< 0.01", "under 0.01"),
                vec![],
                "analysis.metrics[0].success: \"under 0.01\" is not a condition",
            ),
            (
                CANARY.replace("\"scrape\"", "\"statsd\""),
                vec![],
                "analysis.metrics[0].provider: \"statsd\" is not a metric provider",
            ),
            (
                CANARY.replace("url = ", "counter = \"x\"\nurl = "),
                vec![],
                "analysis.metrics[1].counter: is not a setting of the webhook provider",
            ),
            (
                CANARY.replace("url = \"http://127.0.0.1:9/confirm\"\n", ""),
                vec![],
                "analysis.metrics[1].url: the webhook provider needs",
            ),
            (CANARY.replace("count = 3", "count = 0"), vec![], "analysis.metrics[0].count: 0 is below 1"),
            (
                CANARY.into(),
                vec!["rollout.progress_deadline=1s"],
                "analysis.metrics[0].interval (error-ratio): 2s is longer than the progress deadline",
            ),
            (CANARY.replace("duration = \"1s\"", "duration = \"3s\""), vec![], "analysis.smoke_load.duration"),
        ];
        let with = |from: &str, to: &str| format!("{CANARY}{}", PROMETHEUS.replacen(from, to, 1));
        let more: Vec<(String, Vec<&str>, &str)> = vec![
            (
                with("url = \"http://127.0.0.1:9090\"", "url = \"https://prom:9090\""),
                vec![],
                "analysis.metrics[2].url: \"https://prom:9090/\": only http://",
            ),
            (
                with("query = 'histogram", "# query = 'histogram"),
                vec![],
                "analysis.metrics[2].query: the prometheus provider needs a PromQL query",
            ),
            (with("{{instances}}", "{{pod}}"), vec![], "analysis.metrics[2].query"),
            (
                with("url = \"http", "bearer_token_env = \"IMMUT_TEST_UNSET_TOKEN\"\nurl = \"http"),
                vec![],
                "IMMUT_TEST_UNSET_TOKEN is not set",
            ),
            (
                with("significance = 0.05", "significance = 0.7"),
                vec![],
                "analysis.metrics[3].significance: 0.7 must be above 0 and below 0.5",
            ),
            (with("step = \"10s\"\n", ""), vec![], "analysis.metrics[3].window: give window and step together"),
            (
                with("step = \"10s\"", "step = \"1m\""),
                vec![],
                "gives at most 3 samples a series, fewer than min_samples (10)",
            ),
            (
                with("significance = 0.05", "success = \"< 1\""),
                vec![],
                "a judge metric takes no success or failure condition",
            ),
            (
                format!("{CANARY}{}", PROMETHEUS.replace("success = \"< 0.25\"\n", "")),
                vec![],
                "analysis.metrics[2].success (p99): set a success or a failure condition",
            ),
        ];
        for (text, overrides, expected) in cases.into_iter().chain(more) {
            let e = error(&text, &overrides);
            assert!(e.contains(expected), "{e}\nshould say: {expected}");
        }
        // A library error about a metric points at that metric's line.
        let e = error(CANARY, &["rollout.progress_deadline=1s"]);
        let line = CANARY.lines().position(|l| l.starts_with("interval = \"2s\"")).unwrap() + 1;
        assert!(e.contains(&format!("immut.toml:{line}:")), "{e}");
    }
}
