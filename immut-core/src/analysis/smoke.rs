//! Smoke load for pre-promotion analysis: the idle set serves no users, so the analysis sends
//! its own requests to the idle instances directly before it measures them.

use std::time::Duration;

/// Requests sent to the instances under analysis before each pre-promotion measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeLoad {
    /// Requests per second, over all instances (round robin).
    pub rate: u32,
    /// How long to send them.
    pub duration: Duration,
    /// The path requested (default `/`).
    pub path: String,
}

impl SmokeLoad {
    /// `rate` requests a second for `duration`, to `/`.
    pub fn new(rate: u32, duration: Duration) -> Self {
        SmokeLoad { rate, duration, path: "/".into() }
    }

    /// Requests `path` instead.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub(super) fn validate(&self, shortest_interval: Duration) -> Result<(), String> {
        if self.rate == 0 {
            return Err("analysis.smoke_load.rate: must be at least 1 request a second".into());
        }
        if self.duration.is_zero() || self.duration > shortest_interval {
            return Err(format!(
                "analysis.smoke_load.duration: {}s must be above zero and within the shortest metric interval ({}s), \
                 or the load would delay the measurements",
                self.duration.as_secs_f64(),
                shortest_interval.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Sends the load to `addresses`; returns how many requests were answered (any status: a
    /// failing answer is what the analysis is there to see).
    pub(super) async fn send(&self, client: &reqwest::Client, addresses: &[String]) -> usize {
        if addresses.is_empty() {
            return 0;
        }
        let total = (self.rate as f64 * self.duration.as_secs_f64()).ceil().max(1.0) as usize;
        let gap = self.duration / total as u32;
        let mut ticks = tokio::time::interval(gap.max(Duration::from_micros(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests = Vec::with_capacity(total);
        for n in 0..total {
            ticks.tick().await;
            let url = format!("http://{}{}", addresses[n % addresses.len()], self.path);
            let client = client.clone();
            requests.push(tokio::spawn(async move { client.get(url).send().await.is_ok() }));
        }
        let mut answered = 0;
        for r in requests {
            if r.await.unwrap_or(false) {
                answered += 1;
            }
        }
        answered
    }
}
