//! Writing ahead to the journal, off the async threads.

use super::*;

impl Deployment {
    /// Appends to the journal, if there is one. A record that cannot be written stops the
    /// action it announces: nothing is changed without its intent on disk.
    pub(super) async fn write_ahead(&self, entry: JournalEntry) -> Result<()> {
        let Some(journal) = self.inner.journal.clone() else { return Ok(()) };
        let record = JournalRecord { deployment: self.id.clone(), at_ms: journal::now_ms(), entry };
        let service = self.release.service().to_owned();
        blocking(move || journal.append(&service, &record)).await
    }
}

/// Runs blocking work (the journal's and the ledger's file I/O and fsync) on tokio's blocking
/// pool, so an async worker thread never waits on a disk. A panic there is the deployment's own.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::new(ErrorKind::Cancelled, "the runtime shut down during a journal write").with_source(e)),
    }
}
