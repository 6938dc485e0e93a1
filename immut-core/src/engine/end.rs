//! The terminal transitions: success, rollback, refusal, and the records of how it ended. A
//! deployment that lost its lease stops at once: it neither rolls back nor records anything,
//! since the service is another deployer's now.

use super::*;

impl Deployment {
    pub(super) async fn finish(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Succeeded) {
            Phase::Deploying => Phase::Succeeded,
            Phase::RollingBack { reason } => Phase::RolledBack { reason },
            terminal => terminal,
        };
        self.conclude().await;
    }

    pub(super) async fn failed(&mut self, error: Error) {
        if let Some(lost) = self.lease_lost() {
            self.stop_lost(lost).await;
            return;
        }
        let message = error.to_string();
        match std::mem::replace(&mut self.phase, Phase::Succeeded) {
            Phase::Deploying => {
                tracing::warn!(deployment = %self.id, error = %message, "rolling back");
                self.phase = Phase::RollingBack { reason: message.clone() };
                if let Err(e) = self.write_ahead(JournalEntry::RollingBack { reason: message.clone() }).await {
                    tracing::error!(error = %e, "cannot journal the rollback; continuing it");
                }
                let limits = self.limits();
                self.pending.push_back(Event::RollbackStarted {
                    reason: message,
                    floor: limits.floor,
                    ceiling: limits.ceiling,
                });
                self.last_progress = Instant::now();
                self.signature = Signature::default();
            }
            Phase::RollingBack { reason } => {
                tracing::error!(deployment = %self.id, error = %message, "rollback failed");
                self.phase = Phase::RollbackFailed { reason, rollback_error: message };
                self.conclude().await;
            }
            terminal => self.phase = terminal,
        }
    }

    pub(super) async fn refuse(&mut self, error: Error) {
        tracing::warn!(deployment = %self.id, error = %error, "deployment refused");
        self.phase = Phase::Refused { reason: error.to_string() };
        self.conclude().await;
    }

    /// Stops before the point of no return: the release whose instances were to be terminated
    /// can no longer be launched. Nothing more changes; the new release keeps its traffic.
    pub(super) async fn stop_no_way_back(&mut self, reason: String) {
        tracing::warn!(deployment = %self.id, reason = %reason, "no way back: stopping before terminating the old release");
        self.phase = Phase::NoWayBack { reason };
        self.conclude().await;
    }

    /// Stops a deployment whose lease was taken over: no rollback, no journal record, no
    /// ledger entry, and no release of a lease that is no longer its own.
    pub(super) async fn stop_lost(&mut self, lost: Error) {
        tracing::error!(deployment = %self.id, error = %lost, "lease lost: stopping without any further change");
        self.phase = Phase::Refused { reason: lost.to_string() };
        self.conclude().await;
    }

    pub(super) async fn conclude(&mut self) {
        // A deployer whose lease was taken over records nothing more: the new holder does.
        if self.begun && self.lease_lost().is_none() {
            // An error here that is not a lost lease (the store unreachable) shows again below,
            // when the records cannot be written.
            let _ = self.confirm_lease().await;
        }
        let lost = self.lease_lost();
        if let Some(lost) = &lost
            && !matches!(self.phase, Phase::Refused { .. })
        {
            tracing::error!(deployment = %self.id, error = %lost, "lease lost before the end was recorded");
            self.phase = Phase::Refused { reason: lost.to_string() };
        }
        let lost = lost.is_some();
        let outcome = Outcome {
            deployment: self.id.clone(),
            service: self.release.service().to_owned(),
            release: self.release.id().clone(),
            previous: self.previous.clone(),
            phase: self.phase.clone(),
            elapsed: self.elapsed(),
            steps: self.step,
            waves: self.wave,
            serving: {
                // The serving set of the last observation: the one that decided `Done`.
                let mut serving: Vec<InstanceId> = self.fleet.serving.iter().cloned().collect();
                serving.sort();
                serving
            },
            calls: self.calls,
        };
        tracing::info!(summary = %outcome.summary(), "deployment finished");
        if self.begun && !lost {
            if let Some(ledger) = self.inner.ledger.clone() {
                let (o, release, strategy) = (outcome.clone(), self.release.clone(), self.strategy.name().to_owned());
                let (started, accepted) = (self.started_wall_ms, self.accept_no_way_back);
                let record = move || ledger.record_deployment(&o, &release, &strategy, started, accepted);
                if let Err(e) = blocking(record).await {
                    tracing::error!(error = %e, "cannot record the deployment in the ledger");
                }
            }
            if let Err(e) = self.write_ahead(JournalEntry::End { outcome: Box::new(outcome.clone()) }).await {
                tracing::error!(error = %e, "cannot journal the end of the deployment");
            }
        }
        // Releasing a lease writes to the store: off the async threads.
        if let Some(lock) = self.lock.take() {
            let _ = blocking(move || {
                drop(lock);
                Ok(())
            })
            .await;
        }
        self.pending.push_back(Event::Finished { outcome: outcome.clone() });
        self.outcome = Some(outcome);
    }
}
