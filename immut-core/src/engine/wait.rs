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
        // The engine's own clocks: a new instance's deadline, and the end of a consistency
        // window, change what it decides even when the provider changes nothing.
        if let Some(at) = self.memory.next_timer(self.inner.settings.instance_deadline, now) {
            wake = wake.min(at);
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
