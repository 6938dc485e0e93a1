//! Repairs: deployments of the serving release that [`crate::watch::Watch`] starts to replace
//! offenders, and deployments that wait for a watch's repair instead of being refused.
//!
//! A repair is a deployment whose id carries the watch prefix ([`crate::watch::is_watch`]),
//! so a resumed repair is still one. Three things set it apart:
//!
//! - the instances it replaces do not count as the previous release, so a drifted offender
//!   that claims a newer version neither makes the repair a downgrade nor becomes what a
//!   rollback restores;
//! - its healthy instances of the serving release are kept: they are "new" to the strategy,
//!   which then launches only what is missing;
//! - when it fails, it does not roll the fleet back to anything: it terminates what it
//!   launched that does not serve, leaves the rest as it found it, and ends rolled back.

use super::*;

impl Deployment {
    /// Whether this deployment is a watch's repair.
    pub(super) fn is_repair(&self) -> bool {
        crate::watch::is_watch(&self.id)
    }

    /// Whether the engine leaves this instance out of the previous release at the start.
    pub(super) fn excluded_from_previous(&self, id: &InstanceId) -> bool {
        self.is_repair() && self.replacing.contains(id)
    }

    /// The rollback of a repair: terminate the instances it launched that do not serve (the
    /// target's instances outside the serving set), then stop. What served before is left as
    /// it was; the next watch cycle finds the offenders again.
    pub(super) fn repair_rollback(view: &FleetView) -> Decision {
        let unserved: Vec<InstanceId> =
            view.launching.iter().chain(&view.warming).chain(&view.ready).cloned().collect();
        if unserved.is_empty() { Decision::Done } else { Decision::Terminate { ids: unserved } }
    }

    /// The invariants a decision must keep. A repair that rolls back leaves the offenders it
    /// did not replace, so its end is not quiescent and is not checked as if it were.
    pub(super) fn check_decision(&mut self, view: &FleetView, decision: &Decision, limits: Limits) -> Result<()> {
        let repair_done =
            self.is_repair() && matches!(self.phase, Phase::RollingBack { .. }) && *decision == Decision::Done;
        if repair_done {
            return Ok(());
        }
        invariants::check_decision(view, decision, limits).map_err(|v| self.violated(v))
    }

    /// Takes the lock before the start when a watch's repair holds it: waits for the repair
    /// (polling, with an event saying so) instead of being refused, up to the progress
    /// deadline. Returns whether the deployment is still waiting. Any other holder is left to
    /// [`Deployment::start`], which refuses as before.
    pub(super) async fn wait_for_watch(&mut self) -> Result<bool> {
        let Some(journal) = self.inner.journal.clone() else { return Ok(false) };
        if self.lock.is_some() || self.is_repair() {
            return Ok(false);
        }
        if self.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Cancelled, "the deployment was cancelled while it waited for the lease"));
        }
        let (service, id) = (self.release.service().to_owned(), self.id.clone());
        let taken = {
            let journal = journal.clone();
            blocking(move || journal.lock(&service, &id)).await
        };
        let error = match taken {
            Ok(guard) => {
                self.lock = Some(guard);
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::Conflict => e,
            Err(e) => return Err(e),
        };
        let service = self.release.service().to_owned();
        let holder = blocking(move || journal.holder(&service)).await?;
        let Some(holder) = holder.filter(crate::watch::is_watch) else { return Err(error) };
        let since = *self.lock_wait.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        let bound = self.inner.settings.progress_deadline;
        if waited >= bound {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "watch repair {holder} held the lease of {} for {waited:?}, longer than the progress deadline ({bound:?}); try again, or stop the watch",
                    self.release.service()
                ),
            ));
        }
        // Said at once, then every half minute while the wait lasts.
        if self.lock_notice.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
            self.lock_notice = Some(Instant::now());
            self.pending
                .push_back(Event::WaitingForLease { holder: holder.clone(), waited_ms: waited.as_millis() as u64 });
        }
        let pause = self.inner.settings.poll_interval.min(bound - waited);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.cancel.notify.notified() => {}
        }
        Ok(true)
    }
}

impl CancelHandle {
    /// Resolves once cancellation was asked for (at once if it already was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a watch needs of the deployer it repairs with.
impl Deployer {
    pub(crate) fn health(&self) -> &Arc<dyn HealthCheck> {
        &self.inner.health
    }

    pub(crate) fn journal(&self) -> Option<&Arc<dyn Journal>> {
        self.inner.journal.as_ref()
    }

    pub(crate) fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    pub(crate) fn signing_key(&self) -> Option<&crate::model::SigningKey> {
        self.inner.signing_key.as_ref()
    }
}
