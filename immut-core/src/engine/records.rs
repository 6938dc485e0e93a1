//! Writing ahead to the journal, off the async threads, and the lease checks around it.

use super::*;

impl Deployment {
    /// Appends to the journal, if there is one. A record that cannot be written stops the
    /// action it announces: nothing is changed without its intent on disk. While the
    /// deployment holds a lease, every record first confirms it, so a deployer that lost its
    /// lease writes nothing more.
    pub(super) async fn write_ahead(&self, entry: JournalEntry) -> Result<()> {
        let Some(journal) = self.inner.journal.clone() else { return Ok(()) };
        self.confirm_lease().await?;
        let record = JournalRecord { deployment: self.id.clone(), at_ms: journal::now_ms(), entry };
        let service = self.release.service().to_owned();
        let appended = blocking(move || journal.append(&service, &record)).await;
        match (appended, self.lease_lost()) {
            (Err(_), Some(lost)) => Err(lost),
            (result, _) => result,
        }
    }

    /// Journals what this step observed, when a count or a limit differs from the last
    /// observation journaled (the first step always does), so the journal stays small. It is
    /// written before the invariants are checked, so a picture shows the dip that failed a run.
    pub(super) async fn journal_observed(&mut self, view: &FleetView, limits: Limits) -> Result<()> {
        let observed = journal::Observed {
            step: self.step,
            serving_healthy: view.serving_healthy(),
            serving: view.serving(),
            total: view.total_live(),
            floor: limits.floor,
            ceiling: limits.ceiling,
            rolling_back: matches!(self.phase, Phase::RollingBack { .. }),
        };
        let unchanged = self.observed.is_some_and(|last| journal::Observed { step: observed.step, ..last } == observed);
        if self.inner.journal.is_none() || unchanged {
            return Ok(());
        }
        self.write_ahead(JournalEntry::Observed(observed)).await?;
        self.observed = Some(observed);
        Ok(())
    }

    /// Confirms the lease, when the deployment holds one: it is still the newest epoch and has
    /// time left for a call ([`crate::state::Lease::confirm`]).
    pub(super) async fn confirm_lease(&self) -> Result<()> {
        match self.lock.as_ref().and_then(LockGuard::lease) {
            Some(lease) => lease.confirm().await,
            None => Ok(()),
        }
    }

    /// The error of a lease this deployment held and lost, if it did.
    pub(super) fn lease_lost(&self) -> Option<Error> {
        self.lock.as_ref().and_then(LockGuard::lease).and_then(crate::state::Lease::lost_err)
    }

    /// Once the deployment holds a lease, its provider and balancer confirm it before every
    /// mutating call, on every attempt (retries included): a deployer that lost its lease
    /// while a call was being retried makes no further call.
    pub(super) fn fence(&mut self) {
        let Some(lease) = self.lock.as_ref().and_then(LockGuard::lease).cloned() else { return };
        let old = &self.inner;
        self.inner = Arc::new(Inner {
            provider: Arc::new(crate::state::fence::FencedProvider {
                inner: old.provider.clone(),
                lease: lease.clone(),
            }),
            traffic: Arc::new(crate::state::fence::FencedTraffic { inner: old.traffic.clone(), lease }),
            health: old.health.clone(),
            strategy: old.strategy.clone(),
            gate: old.gate.clone(),
            journal: old.journal.clone(),
            ledger: old.ledger.clone(),
            change_policy: old.change_policy.clone(),
            allow_downgrade: old.allow_downgrade,
            signing_key: old.signing_key.clone(),
            settings: old.settings.clone(),
        });
    }
}

/// Runs blocking work (the journal's and the ledger's store I/O) on tokio's blocking pool, so
/// an async worker thread never waits on a disk or a network. A panic there is the
/// deployment's own.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::new(ErrorKind::Cancelled, "the runtime shut down during a journal write").with_source(e)),
    }
}
