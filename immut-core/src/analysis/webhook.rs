//! The webhook provider (Flagger's confirm hooks): the deployment asks another program.

use std::time::Duration;

use async_trait::async_trait;

use super::provider::{AnalysisContext, MetricProvider, Reading};

/// POSTs the deployment context as JSON to a URL. A 2xx answer passes; a clear refusal (a 4xx
/// with a body, which is the reason) fails; anything else (a timeout, a refused connection, a
/// 5xx, a 4xx without a reason) is an error, which counts against `consecutive_error_limit`.
#[derive(Debug, Clone)]
pub struct WebhookProvider {
    client: reqwest::Client,
    url: String,
}

impl WebhookProvider {
    /// Calls `url` with a 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookProvider::with_timeout(url, Duration::from_secs(10))
    }

    /// Calls `url` with this timeout.
    pub fn with_timeout(url: impl Into<String>, timeout: Duration) -> Self {
        let client =
            reqwest::Client::builder().timeout(timeout).no_proxy().build().expect("a plain HTTP client always builds");
        WebhookProvider { client, url: url.into() }
    }
}

#[async_trait]
impl MetricProvider for WebhookProvider {
    fn decides(&self) -> bool {
        true
    }

    async fn measure(&self, context: &AnalysisContext) -> Result<Reading, String> {
        let body = serde_json::to_vec(context).map_err(|e| format!("encoding the context: {e}"))?;
        let answer = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("webhook {} timed out", self.url)
                } else {
                    format!("webhook {}: {e}", self.url)
                }
            })?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        let text = text.trim();
        if status.is_success() {
            Ok(Reading::Passed)
        } else if status.is_client_error() && !text.is_empty() {
            Ok(Reading::Refused(format!("HTTP {status}: {}", text.chars().take(500).collect::<String>())))
        } else {
            Err(format!("webhook {} answered HTTP {status} without a reason", self.url))
        }
    }
}
