//! The direct-scrape provider: the instances' own `/metrics`, for users with no Prometheus
//! server. It measures an error ratio from request counters between two scrapes.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::provider::{AnalysisContext, MetricProvider, Reading};

/// Whether the ratio is taken over all instances or per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// Bad requests over all requests, summed over the instances.
    #[default]
    Summed,
    /// The worst instance's ratio (an instance with no requests is left out).
    WorstInstance,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    bad: f64,
    total: f64,
}

/// Reads a request counter (by default `sample_http_requests_total`) from each instance's
/// `/metrics` and measures the share of requests whose status label starts with `5`, as
/// counter deltas since this provider's previous scrape of the instance. An instance scraped for
/// the first time counts from its start (counters begin at zero with the process). No requests
/// in between is [`Reading::Empty`] (inconclusive); an instance that cannot be scraped is an
/// error.
#[derive(Debug)]
pub struct ScrapeProvider {
    client: reqwest::Client,
    path: String,
    counter: String,
    status_label: String,
    bad_prefix: String,
    aggregation: Aggregation,
    previous: tokio::sync::Mutex<HashMap<String, Counts>>,
}

impl ScrapeProvider {
    /// Scrapes `/metrics` for `sample_http_requests_total{status}`, with a 2 s timeout.
    pub fn new() -> Self {
        ScrapeProvider::with_timeout(Duration::from_secs(2))
    }

    /// As [`ScrapeProvider::new`] with another timeout per scrape.
    pub fn with_timeout(timeout: Duration) -> Self {
        let client =
            reqwest::Client::builder().timeout(timeout).no_proxy().build().expect("a plain HTTP client always builds");
        ScrapeProvider {
            client,
            path: "/metrics".into(),
            counter: "sample_http_requests_total".into(),
            status_label: "status".into(),
            bad_prefix: "5".into(),
            aggregation: Aggregation::Summed,
            previous: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The counter to read, and its label holding the status code.
    pub fn counter(mut self, name: impl Into<String>, status_label: impl Into<String>) -> Self {
        self.counter = name.into();
        self.status_label = status_label.into();
        self
    }

    /// Statuses that count as bad start with this (default `5`: `status=~"5.."`).
    pub fn bad_status_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.bad_prefix = prefix.into();
        self
    }

    /// How the instances' counts are combined.
    pub fn aggregation(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = aggregation;
        self
    }

    /// The path of the metrics endpoint (default `/metrics`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    async fn scrape(&self, address: &str) -> Result<Counts, String> {
        let url = format!("http://{address}{}", self.path);
        let answer = self.client.get(&url).send().await.map_err(|e| format!("scraping {url}: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("scraping {url}: HTTP {}", answer.status()));
        }
        let text = answer.text().await.map_err(|e| format!("reading {url}: {e}"))?;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .map_err(|e| format!("parsing {url}: {e}"))?;
        let mut counts = Counts::default();
        for sample in scrape.samples.iter().filter(|s| s.metric == self.counter) {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => return Err(format!("{url}: {} is not a counter", self.counter)),
            };
            counts.total += value;
            if sample.labels.get(&self.status_label).is_some_and(|s| s.starts_with(&self.bad_prefix)) {
                counts.bad += value;
            }
        }
        Ok(counts)
    }
}

impl Default for ScrapeProvider {
    fn default() -> Self {
        ScrapeProvider::new()
    }
}

#[async_trait]
impl MetricProvider for ScrapeProvider {
    async fn measure(&self, context: &AnalysisContext) -> Result<Reading, String> {
        if context.addresses.is_empty() {
            return Err(format!("no address is known for the {} instances under analysis", context.instances.len()));
        }
        let mut now = Vec::new();
        for address in &context.addresses {
            now.push((address.clone(), self.scrape(address).await?));
        }
        let mut previous = self.previous.lock().await;
        let mut deltas = Vec::new();
        for (address, counts) in now {
            let before = previous.get(&address).copied().unwrap_or_default();
            // A counter that went down was reset (the process restarted): count from zero.
            let before =
                if counts.total < before.total || counts.bad < before.bad { Counts::default() } else { before };
            deltas.push(Counts { bad: counts.bad - before.bad, total: counts.total - before.total });
            previous.insert(address, counts);
        }
        let with_traffic: Vec<Counts> = deltas.into_iter().filter(|d| d.total > 0.0).collect();
        if with_traffic.is_empty() {
            return Ok(Reading::Empty);
        }
        Ok(Reading::Value(match self.aggregation {
            Aggregation::Summed => {
                with_traffic.iter().map(|d| d.bad).sum::<f64>() / with_traffic.iter().map(|d| d.total).sum::<f64>()
            }
            Aggregation::WorstInstance => with_traffic.iter().map(|d| d.bad / d.total).fold(0.0, f64::max),
        }))
    }
}
