//! Waiting: until the strategy's time, the provider's next change or the poll interval, bounded
//! by the progress deadline and cut short by cancellation.

use super::*;

impl Deployment {
    pub(super) async fn wait(&mut self, reason: &str, until: Option<Duration>, polling_gate: bool) -> Result<()> {
        let now = Instant::now();
        let deadline = self.last_progress + self.inner.settings.progress_deadline;
        if now >= deadline {
            return Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "no progress for {}s (the progress deadline) while waiting: {reason}",
                    self.inner.settings.progress_deadline.as_secs()
                ),
            ));
        }
        // A gate can change its mind at any time, so gates are polled; otherwise a provider
        // that promises its next change lets the engine sleep until then.
        let promised = if polling_gate { None } else { self.inner.provider.next_change() };
        let mut wake = promised.unwrap_or(now + self.inner.settings.poll_interval).min(deadline);
        if let (Some(until), Some(started)) = (until, self.started) {
            wake = wake.min(started + until);
        }
        // The engine's own clock: a launching instance's deadline changes what it decides even
        // when the provider changes nothing.
        if let Some(at) = self.memory.next_deadline {
            wake = wake.min(at);
        }
        // Without a promise from the provider, the engine polls, and polls closely when a
        // launching instance is due to turn healthy (from how long the earlier ones took),
        // for one poll interval; otherwise at the interval. This keeps the delay between a
        // change and its observation short without polling fast all the time.
        if promised.is_none()
            && let Some(expected) = self.memory.next_expected
        {
            let interval = self.inner.settings.poll_interval;
            let close = (interval / 10).max(Duration::from_millis(100)).min(interval);
            if expected > now {
                wake = wake.min(expected);
            } else if now < expected + interval {
                wake = wake.min(now + close);
            }
        }
        let wake = wake.max(now + Duration::from_millis(1));
        tracing::debug!(reason, "waiting");
        let cancel = self.cancel.clone();
        let cancellable = matches!(self.phase, Phase::Deploying);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = cancel.notify.notified(), if cancellable => {}
        }
        Ok(())
    }
}
