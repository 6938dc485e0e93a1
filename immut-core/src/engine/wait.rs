//! Waiting: until the strategy's time, the provider's next change or the poll interval, bounded
//! by the progress deadline and cut short by cancellation. With a change feed, a poll that
//! finds nothing changed waits on without reading the fleet.

use super::*;

impl Deployment {
    pub(super) async fn wait(&mut self, reason: &str, until: Option<Duration>, polling_gate: bool) -> Result<()> {
        // Close polls keep their cadence from one wake to the next, whatever the feed call in
        // between took.
        let mut woke = Instant::now();
        loop {
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
            // What the engine's own clock makes due, whatever the fleet does: the strategy's
            // time, a launching instance's deadline, the end of a consistency window.
            let mut due = [
                until.zip(self.started).map(|(until, started)| started + until),
                self.memory.next_deadline,
                self.memory.next_unseen_expiry,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = due {
                wake = wake.min(at);
            }
            // Without a promise from the provider, the engine polls, and polls closely while a
            // launching instance is due to turn healthy (see `Memory::next_expected`);
            // otherwise at the interval. This keeps the delay between a change and its
            // observation short without polling fast all the time.
            if promised.is_none()
                && let Some((from, to, close)) = self.memory.next_expected
            {
                if from > now {
                    wake = wake.min(from);
                } else if now < to {
                    wake = wake.min(woke + close);
                }
            }
            let wake = wake.max(now + Duration::from_millis(1));
            tracing::debug!(reason, "waiting");
            let cancel = self.cancel.clone();
            let cancellable = matches!(self.phase, Phase::Deploying);
            let mut cancelled = false;
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => woke = wake,
                _ = cancel.notify.notified(), if cancellable => cancelled = true,
            }
            if cancelled || promised.is_some() || polling_gate {
                return Ok(());
            }
            if let Some(read_at) = self.fleet.full_read_at {
                due = Some(due.map_or(read_at + self.inner.settings.full_read_every, |d| {
                    d.min(read_at + self.inner.settings.full_read_every)
                }));
            }
            if !self.unchanged(due).await {
                return Ok(());
            }
        }
    }

    /// Whether a poll may skip the read: a change feed says nothing changed since the last
    /// read, that read's verdicts were all in hand and settled, and nothing on the engine's
    /// clock (`due`) has come.
    async fn unchanged(&mut self, due: Option<Instant>) -> bool {
        let (Some(feed), Some(read_at)) = (self.inner.settings.feed.clone(), self.memory.read_at) else {
            return false;
        };
        if !self.memory.settled || due.is_some_and(|at| Instant::now() >= at) || self.cancel.is_cancelled() {
            return false;
        }
        let asked_at = Instant::now();
        let answer = feed.changed_since(read_at).await;
        match answer {
            Ok(Some(false)) => {
                self.calls.changes += 1;
                // Nothing had turned healthy by then: what the boot times are learned from.
                self.memory.previous_observation = Some(asked_at);
                true
            }
            Ok(None) => false,
            Ok(Some(true)) | Err(_) => {
                self.calls.changes += 1;
                false
            }
        }
    }
}
