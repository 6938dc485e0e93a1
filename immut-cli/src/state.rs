//! Where the journal, the deployment lock and the ledger live: the spec's `state` location.
//!
//! Today a location is a directory: the journal and its lock files go in `<dir>/journal`, the
//! ledger in `<dir>/ledger.jsonl`. [`open`] is the one place that reads a location, so that
//! moving to a state store reached by URL (`s3://bucket/prefix`, issue #14) changes this module
//! only.

use std::path::PathBuf;
use std::sync::Arc;

use immut::journal::{FileJournal, Journal};
use immut::ledger::Ledger;
use immut::{Error, Result};

/// The opened state of one spec: journal (with the lock) and ledger.
#[derive(Debug, Clone)]
pub struct State {
    /// What the spec said.
    pub location: String,
    /// The write-ahead journal, which also holds the per-service lock.
    pub journal: Arc<FileJournal>,
    /// The hash-chained history of deployments.
    pub ledger: Arc<Ledger>,
}

impl State {
    /// The journal as the trait object the deployer takes.
    pub fn journal_dyn(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }
}

/// Whether a location is a URL (`scheme://...`) rather than a path.
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Opens the state at `location`, creating the directory. URLs are refused until the state
/// store on object storage lands; the error names the `state` field.
pub fn open(location: &str) -> Result<State> {
    if is_url(location) {
        return Err(Error::invalid(
            "state",
            format!(
                "{location:?}: state on object storage is not supported by this build yet; give a directory such as \".immut/state\""
            ),
        ));
    }
    let dir = PathBuf::from(location);
    let journal = FileJournal::open(dir.join("journal")).map_err(|e| Error::invalid("state", e.message()))?;
    let ledger = Ledger::open(dir.join("ledger.jsonl"))?;
    Ok(State { location: location.to_owned(), journal: Arc::new(journal), ledger: Arc::new(ledger) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart_from_paths() {
        assert!(is_url("s3://bucket/prefix"));
        assert!(is_url("gs://b"));
        assert!(!is_url(".immut/state"));
        assert!(!is_url("/abs/path"));
        assert!(!is_url("://x"));
        let e = open("s3://bucket/x").unwrap_err();
        assert!(e.message().starts_with("state: "), "{e}");
    }
}
