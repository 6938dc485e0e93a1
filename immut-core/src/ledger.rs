//! The release ledger: an append-only, hash-chained history of deployments.
//!
//! Each entry records the release, the artifact digest, the baseline fingerprint, the
//! strategy, the start and end, the outcome, and the hash of the entry before it; its own hash
//! covers all of that. [`Ledger::verify`] recomputes the chain and reports any edited, deleted
//! or reordered entry. Removing entries from the end leaves a valid shorter chain: keep the
//! [`Verification::head`] hash somewhere else and check it with [`Ledger::verify_head`] to catch
//! that too. [`Deployer::rollback_to_previous`](crate::Deployer::rollback_to_previous) reads the
//! ledger to redeploy the previous successful release.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeploymentId, Release, hex_prefix};
use crate::outcome::{Outcome, Phase};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One deployment in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position, from 0, with no gaps.
    pub seq: u64,
    /// Service.
    pub service: String,
    /// Deployment id.
    pub deployment: DeploymentId,
    /// The release deployed.
    pub release: Release,
    /// The artifact's digest, if it has one.
    pub artifact_digest: Option<String>,
    /// The baseline fingerprint.
    pub baseline_fingerprint: String,
    /// Strategy name.
    pub strategy: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// End, milliseconds since the Unix epoch.
    pub ended_at_ms: u64,
    /// How it ended: a terminal phase, with its reasons.
    pub outcome: Phase,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 of this entry with `hash` empty.
    pub hash: String,
}

impl LedgerEntry {
    fn compute_hash(&self) -> String {
        let unhashed = LedgerEntry { hash: String::new(), ..self.clone() };
        let canonical = serde_json::to_vec(&unhashed).expect("entries serialize");
        hex_prefix(&Sha256::digest(&canonical), 64)
    }

    /// Whether the deployment succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == Phase::Succeeded
    }
}

/// A problem [`Ledger::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Tamper {
    /// The entry's contents no longer match its hash, or the next entry's link.
    Edited {
        /// Which entry.
        seq: u64,
    },
    /// One or more entries are missing after `after` (`None`: at the start).
    Deleted {
        /// The last entry before the gap.
        after: Option<u64>,
    },
    /// The entry appears out of order.
    Reordered {
        /// Which entry.
        seq: u64,
    },
    /// A line is not a ledger entry at all.
    Unreadable {
        /// Line number, from 1.
        line: usize,
    },
}

/// What [`Ledger::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// How many entries were read.
    pub entries: usize,
    /// The hash of the last entry ([`GENESIS`] when empty).
    pub head: String,
    /// Everything wrong with the chain; empty when intact.
    pub problems: Vec<Tamper>,
}

impl Verification {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A ledger in a JSON-lines file, fsynced on every entry. Its methods block: the engine calls
/// them on tokio's blocking pool.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    /// The last entry written or read and the file's length after it, so an append reads the
    /// file again only when someone else changed it.
    head: Mutex<Option<(LedgerEntry, u64)>>,
}

impl Ledger {
    /// Opens (creating its directory) the ledger at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::invalid("ledger", format!("cannot create {}: {e}; pass a writable path", dir.display()))
            })?;
        }
        Ok(Ledger { path, head: Mutex::new(None) })
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn lines(&self) -> Result<Vec<(usize, Option<LedgerEntry>)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot read the ledger {}: {e}", self.path.display()),
                ));
            }
        };
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, serde_json::from_str(l).ok()))
            .collect())
    }

    /// Every readable entry, in file order.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>> {
        Ok(self.lines()?.into_iter().filter_map(|(_, e)| e).collect())
    }

    /// Appends the record of a finished deployment, chained to the last entry.
    pub fn record(
        &self,
        outcome: &Outcome,
        release: &Release,
        strategy: &str,
        started_at_ms: u64,
    ) -> Result<LedgerEntry> {
        if !outcome.phase.is_terminal() {
            return Err(Error::invalid("outcome", format!("{:?} is not a finished deployment", outcome.phase)));
        }
        let mut head = self.head.lock().expect("ledger lock poisoned");
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let last = match head.take() {
            Some((entry, seen)) if seen == len => Some(entry),
            _ => self.entries()?.pop(),
        };
        let mut entry = LedgerEntry {
            seq: last.as_ref().map_or(0, |l| l.seq + 1),
            service: outcome.service.clone(),
            deployment: outcome.deployment.clone(),
            release: release.clone(),
            artifact_digest: release.artifact().digest.clone(),
            baseline_fingerprint: release.fingerprint(),
            strategy: strategy.to_owned(),
            started_at_ms,
            ended_at_ms: crate::journal::now_ms(),
            outcome: outcome.phase.clone(),
            prev_hash: last.map_or_else(|| GENESIS.to_owned(), |l| l.hash),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut line = serde_json::to_vec(&entry).expect("entries serialize");
        line.push(b'\n');
        let append = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            f.write_all(&line)?;
            f.sync_data()
        };
        append().map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("cannot append to the ledger {}: {e}", self.path.display()))
        })?;
        *head = Some((entry.clone(), len + line.len() as u64));
        Ok(entry)
    }

    /// Recomputes the chain and reports every edited, deleted or reordered entry.
    pub fn verify(&self) -> Result<Verification> {
        let mut problems = Vec::new();
        let mut expected_prev = GENESIS.to_owned();
        let mut last_seq: Option<u64> = None;
        let mut entries = 0;
        for (line, entry) in self.lines()? {
            let Some(e) = entry else {
                problems.push(Tamper::Unreadable { line });
                continue;
            };
            entries += 1;
            if e.compute_hash() != e.hash {
                problems.push(Tamper::Edited { seq: e.seq });
            }
            match last_seq {
                Some(prev) if e.seq <= prev => problems.push(Tamper::Reordered { seq: e.seq }),
                Some(prev) if e.seq != prev + 1 => problems.push(Tamper::Deleted { after: Some(prev) }),
                None if e.seq != 0 => problems.push(Tamper::Deleted { after: None }),
                _ if e.prev_hash != expected_prev => {
                    // In order and self-consistent, yet not linked: the entry before was rewritten.
                    problems.push(Tamper::Edited { seq: e.seq.saturating_sub(1) });
                }
                _ => {}
            }
            expected_prev = e.hash.clone();
            last_seq = Some(last_seq.map_or(e.seq, |s| s.max(e.seq)));
        }
        Ok(Verification { entries, head: expected_prev, problems })
    }

    /// Verifies the chain and that it still ends at `head`, a hash kept elsewhere; this also
    /// catches entries removed from the end.
    pub fn verify_head(&self, head: &str) -> Result<Verification> {
        let mut v = self.verify()?;
        let entries = self.entries()?;
        if head != GENESIS && !entries.iter().any(|e| e.hash == head) {
            v.problems.push(Tamper::Deleted { after: entries.last().map(|e| e.seq) });
        }
        Ok(v)
    }

    /// The last successful deployment of `service`.
    pub fn current(&self, service: &str) -> Result<Option<LedgerEntry>> {
        Ok(self.entries()?.into_iter().rev().find(|e| e.service == service && e.succeeded()))
    }

    /// The last successful deployment of `service` of a release other than the current one.
    pub fn previous(&self, service: &str) -> Result<Option<LedgerEntry>> {
        let entries = self.entries()?;
        let mut ok = entries.iter().rev().filter(|e| e.service == service && e.succeeded());
        let Some(current) = ok.next() else { return Ok(None) };
        Ok(ok.find(|e| e.release.id() != current.release.id()).cloned())
    }
}
