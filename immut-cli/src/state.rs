//! Where the journal, the deployment lease, the ledger and the approvals live: the spec's
//! `state` location.
//!
//! A location is a directory on this machine, or a URL of an object store shared by every
//! machine that deploys the service: `s3://bucket/prefix` (cargo feature `state-s3`),
//! `gs://bucket/prefix` (`state-gcs`), `az://container/prefix` (`state-azure`), each
//! configured from its cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). In a
//! directory the journal and its leases go in `<dir>/journal`, the ledger in
//! `<dir>/ledger.jsonl` (its key beside it, unless `IMMUT_LEDGER_KEY` is set) and approvals in
//! `<dir>/approvals`; on a store they share the prefix, and the ledger's key must come from
//! `IMMUT_LEDGER_KEY`, since a key kept beside the ledger would protect nothing.

use std::path::PathBuf;
use std::sync::Arc;

use immut::journal::{FileJournal, Journal, StoreJournal};
use immut::ledger::{Ledger, LedgerKey};
use immut::state::StateStore;
use immut::{Error, Result};

/// The variable that holds the ledger's key (required for state on object storage).
pub const LEDGER_KEY_ENV: &str = "IMMUT_LEDGER_KEY";

/// The opened state of one spec: journal (with the lease), ledger and the store of approvals.
#[derive(Debug, Clone)]
pub struct State {
    /// What the spec said.
    pub location: String,
    /// The write-ahead journal, which also holds the per-service lease.
    pub journal: Arc<FileJournal>,
    /// The hash-chained history of deployments.
    pub ledger: Arc<Ledger>,
    /// Where approvals of gates are kept (see [`crate::approval`]).
    pub approvals: StateStore,
}

impl State {
    /// The journal as the trait object the deployer takes.
    pub fn journal_dyn(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    /// The directory of the state, when it is one.
    pub fn dir(&self) -> Option<PathBuf> {
        (!is_url(&self.location)).then(|| PathBuf::from(&self.location))
    }
}

/// Whether a location is a URL (`scheme://...`) rather than a path.
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The stores this build reaches, by URL scheme, and the cargo feature of each.
const STORES: &[(&str, &str, bool)] = &[
    ("s3", "state-s3", cfg!(feature = "state-s3")),
    ("gs", "state-gcs", cfg!(feature = "state-gcs")),
    ("az", "state-azure", cfg!(feature = "state-azure")),
];

/// Opens the state at `location`: a directory (created if missing) or a store URL. Errors
/// name the `state` field and the fix.
pub fn open(location: &str) -> Result<State> {
    let path = location.strip_prefix("file://").unwrap_or(location);
    if is_url(path) {
        return open_url(path);
    }
    let dir = PathBuf::from(path);
    let journal = FileJournal::open(dir.join("journal")).map_err(|e| Error::invalid("state", e.message()))?;
    let ledger = Ledger::open(dir.join("ledger.jsonl"))?;
    // Approval objects are keyed `approvals/...`: under the directory itself.
    let approvals = StateStore::local(&dir)?;
    Ok(State { location: location.to_owned(), journal: Arc::new(journal), ledger: Arc::new(ledger), approvals })
}

fn open_url(url: &str) -> Result<State> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match STORES.iter().find(|(s, _, _)| *s == scheme) {
        None => {
            return Err(Error::invalid(
                "state",
                format!("{url:?}: {scheme}:// is not a state store; use a directory, file://, s3://, gs:// or az://"),
            ));
        }
        Some((_, feature, false)) => {
            return Err(Error::invalid(
                "state",
                format!(
                    "{url:?}: this immut was built without the {feature} feature; reinstall it with `cargo install immut-cli --features {feature}`, or give a directory"
                ),
            ));
        }
        Some(_) => {}
    }
    let store = StateStore::open(url)?;
    let key = LedgerKey::from_env(LEDGER_KEY_ENV).map_err(|e| {
        Error::invalid(
            "state",
            format!(
                "{url:?}: the ledger on a shared store needs its key in {LEDGER_KEY_ENV} (16 or more random bytes, the same on every machine): {}",
                e.message().strip_prefix("ledger_key: ").unwrap_or(e.message())
            ),
        )
    })?;
    Ok(State {
        location: url.to_owned(),
        journal: Arc::new(StoreJournal::new(store.clone())),
        ledger: Arc::new(Ledger::on_store(store.clone(), key)),
        approvals: store,
    })
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
        let e = open("ftp://bucket/x").unwrap_err();
        assert!(e.message().starts_with("state: ") && e.message().contains("not a state store"), "{e}");
    }

    #[cfg(not(feature = "state-gcs"))]
    #[test]
    fn a_store_this_build_lacks_names_its_feature() {
        let e = open("gs://bucket/x").unwrap_err();
        assert!(e.message().starts_with("state: "), "{e}");
        assert!(e.message().contains("--features state-gcs"), "{e}");
    }
}
