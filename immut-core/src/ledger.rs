//! The release ledger: an append-only, keyed, chained history of deployments on a state store.
//!
//! Each entry records the release, the artifact digest, the baseline fingerprint, the
//! strategy, the start and end, the outcome, and the MAC of the entry before it; its own MAC
//! (HMAC-SHA256 under the **ledger key**) covers all of that. Entries are numbered objects,
//! `ledger/entries/<n>.json`, written create-only, so no two writers ever get the same number,
//! under any concurrency: a writer that loses the race for `n` chains onto the winner and takes
//! `n + 1`. After each entry its writer creates a **signed head**, `ledger/heads/<n>.json`,
//! naming the entry's number and MAC under the key.
//!
//! [`Ledger::verify`] recomputes every MAC and link and reports each edited, deleted,
//! reordered or unreadable entry, and the first broken one. Without the key nobody can re-chain
//! after an edit: a recomputed hash is not a MAC. A cut tail is caught by the newest signed
//! head, which names an entry that is gone. What no store-only check can catch is a rollback
//! of the whole store to an earlier state, heads and all: keep [`Verification::head`] elsewhere
//! and check it with [`Ledger::verify_head`] for that.
//!
//! [`Deployer::rollback_to_previous`](crate::Deployer::rollback_to_previous) reads the ledger
//! to redeploy the previous successful release. [`Ledger::import_file`] moves a JSON-lines
//! ledger of an earlier version onto the store, after checking its hash chain.
//!
//! A [`crate::watch::Watch`] chains its notes into the same history: an entry with
//! [`LedgerEntry::watch`] set records a finding when it opens and when it closes. Such an
//! entry is no deployment: [`LedgerEntry::succeeded`] is false for it, so it never becomes the
//! current or previous release. The repairs themselves are deployments and are recorded as
//! every deployment is.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeploymentId, Release, hex_prefix};
use crate::outcome::{Outcome, Phase};
use crate::state::{Created, StateStore, corrupt, nonce, now_ms, seq_key};

/// The link before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key that chains the ledger (HMAC-SHA256). Keep it where the writers of the store
/// cannot read it if the ledger must show their edits; it never appears in `Debug` output.
#[derive(Clone)]
pub struct LedgerKey(Arc<[u8]>);

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerKey(..)")
    }
}

impl LedgerKey {
    /// A key of at least 16 bytes.
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self> {
        let key = key.as_ref();
        if key.len() < 16 {
            return Err(Error::invalid("ledger_key", format!("is {} bytes; use at least 16 random bytes", key.len())));
        }
        Ok(LedgerKey(key.into()))
    }

    /// The key in the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self> {
        let value = std::env::var(var)
            .map_err(|_| Error::invalid("ledger_key", format!("the environment variable {var} is not set")))?;
        LedgerKey::new(value.trim())
    }

    /// A fresh random key (32 bytes from the OS).
    pub fn generate() -> Result<Self> {
        LedgerKey::new(crate::state::random_bytes(32)?)
    }

    /// The key in `path`, created (random, mode 0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => LedgerKey::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = LedgerKey::generate()?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let written = options.open(path).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, &key.0)?;
                    f.sync_all()
                });
                match written {
                    Ok(()) => Ok(key),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => LedgerKey::load_or_create(path),
                    Err(e) => Err(Error::invalid("ledger_key", format!("cannot write {}: {e}", path.display()))),
                }
            }
            Err(e) => Err(Error::invalid("ledger_key", format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        hex_prefix(&mac.finalize().into_bytes(), 64)
    }
}

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
    /// Whether the deployment was allowed to terminate a release that could no longer be
    /// launched (`accept_no_way_back`). Absent, and outside the MAC, when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepted_no_way_back: bool,
    /// For an entry imported from a JSON-lines ledger: where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportedFrom>,
    /// For a watch's note (a finding opened or closed): the note. Absent, and outside the
    /// MAC, for deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchNote>,
    /// The previous entry's MAC ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// HMAC-SHA256 of this entry (with `hash` empty) under the ledger key.
    pub hash: String,
}

/// What a watch noted in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum WatchNote {
    /// A finding was seen for the first time.
    FindingOpened {
        /// The finding.
        finding: crate::watch::WatchFinding,
    },
    /// A finding is no longer seen: repaired, or gone by itself.
    FindingClosed {
        /// The finding as it opened.
        finding: crate::watch::WatchFinding,
    },
}

/// Where an imported entry came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedFrom {
    /// The file.
    pub file: String,
    /// Its position there.
    pub seq: u64,
    /// Its SHA-256 hash there.
    pub hash: String,
}

impl LedgerEntry {
    fn compute_mac(&self, key: &LedgerKey) -> String {
        let unhashed = LedgerEntry { hash: String::new(), ..self.clone() };
        let canonical = serde_json::to_vec(&unhashed).expect("entries serialize");
        key.mac(&[b"immut-ledger-entry\0", &canonical])
    }

    /// Whether the deployment succeeded (never for a watch's note).
    pub fn succeeded(&self) -> bool {
        self.watch.is_none() && self.outcome == Phase::Succeeded
    }
}

/// A problem [`Ledger::verify`] found. Positions are entry numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Tamper {
    /// The entry's contents no longer match its MAC under the key (an edit, or a chain
    /// recomputed without the key), or the next entry's link.
    Edited {
        /// Which entry.
        seq: u64,
    },
    /// One or more entries are missing after `after` (`None`: at the start).
    Deleted {
        /// The last entry before the gap.
        after: Option<u64>,
    },
    /// The object at this position holds another entry.
    Reordered {
        /// The position.
        seq: u64,
    },
    /// The object at this position is not a ledger entry at all.
    Unreadable {
        /// The position.
        seq: u64,
    },
    /// The newest signed head names an entry past the end: the tail was cut.
    Truncated {
        /// The last entry left (`None`: none).
        after: Option<u64>,
        /// The entry the head names.
        head: u64,
    },
    /// A head object whose signature does not verify under the key.
    ForgedHead {
        /// The entry it claims to sign.
        seq: u64,
    },
}

impl Tamper {
    /// The first entry this problem breaks.
    pub fn position(&self) -> u64 {
        match self {
            Tamper::Edited { seq }
            | Tamper::Reordered { seq }
            | Tamper::Unreadable { seq }
            | Tamper::ForgedHead { seq } => *seq,
            Tamper::Deleted { after } | Tamper::Truncated { after, .. } => after.map_or(0, |a| a + 1),
        }
    }
}

/// What [`Ledger::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// How many entries were read.
    pub entries: usize,
    /// The MAC of the last entry ([`GENESIS`] when empty).
    pub head: String,
    /// Everything wrong with the chain, in order of position; empty when intact.
    pub problems: Vec<Tamper>,
    /// The first broken entry, if any.
    pub first_broken: Option<u64>,
}

impl Verification {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    writer: String,
    nonce: String,
    entry: LedgerEntry,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    writer: String,
    nonce: String,
    seq: u64,
    hash: String,
    at_ms: u64,
    signature: String,
}

fn head_signature(key: &LedgerKey, seq: u64, hash: &str) -> String {
    key.mac(&[b"immut-ledger-head\0", seq.to_string().as_bytes(), b"\0", hash.as_bytes()])
}

/// What [`Ledger::import_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// How many entries were imported.
    pub entries: usize,
    /// The SHA-256 head of the file's chain.
    pub file_head: String,
}

/// The ledger on a state store. Its methods block (they reach the store): the engine calls
/// them on tokio's blocking pool.
#[derive(Debug)]
pub struct Ledger {
    store: StateStore,
    key: LedgerKey,
    /// The next free number and the link to chain to, as last seen.
    tail: Mutex<Option<(u64, String)>>,
}

const ENTRIES: &str = "ledger/entries";
const HEADS: &str = "ledger/heads";

fn entry_key(seq: u64) -> String {
    format!("{ENTRIES}/{}.json", seq_key(seq))
}

fn head_key(seq: u64) -> String {
    format!("{HEADS}/{}.json", seq_key(seq))
}

fn numbered(store: &StateStore, keys: &[String]) -> Result<Vec<(u64, String)>> {
    keys.iter()
        .map(|k| {
            let n = k.rsplit('/').next().and_then(|f| f.strip_suffix(".json")).and_then(|n| n.parse().ok());
            n.map(|n| (n, k.clone())).ok_or_else(|| corrupt(store, k, "not a ledger object's name"))
        })
        .collect()
}

impl Ledger {
    /// The ledger on `store`, chained under `key`.
    pub fn on_store(store: StateStore, key: LedgerKey) -> Ledger {
        Ledger { store, key, tail: Mutex::new(None) }
    }

    /// A ledger in the directory `path` on this machine, for a single machine. Its key comes
    /// from `IMMUT_LEDGER_KEY` when set, else from the file `<path>.key` (created, random, mode
    /// 0600, on first use). A key beside the ledger shows edits by whoever cannot read it; for
    /// more, keep the key elsewhere and use [`Ledger::on_store`]. When `path` is a JSON-lines
    /// ledger of an earlier version, its entries are imported, once, into `<path>.d`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let legacy = path.is_file();
        let dir = if legacy { suffixed(&path, ".d") } else { path.clone() };
        let store = StateStore::local(&dir)
            .map_err(|e| Error::invalid("ledger", e.message().strip_prefix("state: ").unwrap_or(e.message())))?;
        let key = match std::env::var_os("IMMUT_LEDGER_KEY") {
            Some(_) => LedgerKey::from_env("IMMUT_LEDGER_KEY")?,
            None => LedgerKey::load_or_create(&suffixed(&dir, ".key"))?,
        };
        let ledger = Ledger::on_store(store, key);
        if legacy && ledger.entries()?.is_empty() {
            let import = ledger.import_file(&path)?;
            tracing::info!(file = %path.display(), entries = import.entries, "imported a JSON-lines ledger");
        }
        Ok(ledger)
    }

    /// The store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    fn block<T: Send + 'static, Fut>(&self, f: impl FnOnce(StateStore) -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.store.block(f)
    }

    fn parse_entry(&self, rel: &str, bytes: &[u8]) -> Result<StoredEntry> {
        serde_json::from_slice(bytes).map_err(|e| corrupt(&self.store, rel, format!("not a ledger entry: {e}")))
    }

    /// Every entry, in order. An object that is not an entry is an error naming it.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>> {
        let keys = self.block(|s| async move { s.list(ENTRIES).await })?;
        let fetched = self.block(move |s| async move { s.get_many(keys).await })?;
        let mut out = Vec::with_capacity(fetched.len());
        for (rel, bytes) in fetched {
            let bytes = bytes.ok_or_else(|| corrupt(&self.store, &rel, "listed but missing"))?;
            out.push(self.parse_entry(&rel, &bytes)?.entry);
        }
        Ok(out)
    }

    /// The next free number and the MAC to chain to, from the store.
    fn read_tail(&self) -> Result<(u64, String)> {
        let keys = self.block(|s| async move { s.list(ENTRIES).await })?;
        let numbered = numbered(&self.store, &keys)?;
        let Some((last, rel)) = numbered.last().cloned() else { return Ok((0, GENESIS.to_owned())) };
        let bytes = self
            .block({
                let rel = rel.clone();
                move |s| async move { s.get(&rel).await }
            })?
            .ok_or_else(|| corrupt(&self.store, &rel, "listed but missing"))?;
        Ok((last + 1, self.parse_entry(&rel, &bytes)?.entry.hash))
    }

    /// Appends the record of a finished deployment, chained to the last entry.
    pub fn record(
        &self,
        outcome: &Outcome,
        release: &Release,
        strategy: &str,
        started_at_ms: u64,
    ) -> Result<LedgerEntry> {
        self.record_deployment(outcome, release, strategy, started_at_ms, false)
    }

    /// [`Ledger::record`], noting whether the deployment ran with `accept_no_way_back`.
    pub fn record_deployment(
        &self,
        outcome: &Outcome,
        release: &Release,
        strategy: &str,
        started_at_ms: u64,
        accepted_no_way_back: bool,
    ) -> Result<LedgerEntry> {
        if !outcome.phase.is_terminal() {
            return Err(Error::invalid("outcome", format!("{:?} is not a finished deployment", outcome.phase)));
        }
        let entry = LedgerEntry {
            seq: 0,
            service: outcome.service.clone(),
            deployment: outcome.deployment.clone(),
            release: release.clone(),
            artifact_digest: release.artifact().digest.clone(),
            baseline_fingerprint: release.fingerprint(),
            strategy: strategy.to_owned(),
            started_at_ms,
            ended_at_ms: now_ms(),
            outcome: outcome.phase.clone(),
            accepted_no_way_back,
            imported: None,
            watch: None,
            prev_hash: String::new(),
            hash: String::new(),
        };
        self.append(entry)
    }

    /// Appends a watch's note about `release`, the release the watch holds the service to,
    /// under the watch's id.
    pub fn record_watch(&self, watch: &DeploymentId, release: &Release, note: WatchNote) -> Result<LedgerEntry> {
        let at = now_ms();
        let entry = LedgerEntry {
            seq: 0,
            service: release.service().to_owned(),
            deployment: watch.clone(),
            release: release.clone(),
            artifact_digest: release.artifact().digest.clone(),
            baseline_fingerprint: release.fingerprint(),
            strategy: "watch".to_owned(),
            started_at_ms: at,
            ended_at_ms: at,
            outcome: Phase::Succeeded,
            accepted_no_way_back: false,
            imported: None,
            watch: Some(note),
            prev_hash: String::new(),
            hash: String::new(),
        };
        self.append(entry)
    }

    /// Chains `entry` onto the tail: create-only at the next number; on losing that number to
    /// another writer, chains onto theirs and tries the next.
    fn append(&self, mut entry: LedgerEntry) -> Result<LedgerEntry> {
        let mut tail = self.tail.lock().expect("ledger lock poisoned");
        let (mut next, mut prev) = match tail.take() {
            Some(t) => t,
            None => self.read_tail()?,
        };
        for _ in 0..100_000 {
            entry.seq = next;
            entry.prev_hash = prev.clone();
            entry.hash = entry.compute_mac(&self.key);
            let stored = StoredEntry { writer: self.store.writer().to_owned(), nonce: nonce(), entry: entry.clone() };
            let bytes = serde_json::to_vec(&stored).expect("entries serialize");
            let (rel, n) = (entry_key(next), stored.nonce.clone());
            match self.block(move |s| async move { s.create(&rel, bytes, &n).await })? {
                Created::Mine => {
                    self.sign_head(next, &entry.hash)?;
                    *tail = Some((next + 1, entry.hash.clone()));
                    return Ok(entry);
                }
                Created::Theirs(bytes) => {
                    let theirs = self.parse_entry(&entry_key(next), &bytes)?;
                    prev = theirs.entry.hash;
                    next += 1;
                }
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the ledger grows faster than this writer can append; try again"))
    }

    fn sign_head(&self, seq: u64, hash: &str) -> Result<()> {
        let head = Head {
            writer: self.store.writer().to_owned(),
            nonce: nonce(),
            seq,
            hash: hash.to_owned(),
            at_ms: now_ms(),
            signature: head_signature(&self.key, seq, hash),
        };
        let bytes = serde_json::to_vec(&head).expect("heads serialize");
        let (rel, n) = (head_key(seq), head.nonce.clone());
        match self.block(move |s| async move { s.create(&rel, bytes, &n).await })? {
            Created::Mine => Ok(()),
            Created::Theirs(_) => Err(corrupt(&self.store, &head_key(seq), "a head for this entry already exists")),
        }
    }

    /// Recomputes the chain under the key and reports every edited, deleted, reordered or
    /// unreadable entry, a cut tail (the newest signed head names an entry that is gone) and
    /// a forged head, with the first broken entry.
    pub fn verify(&self) -> Result<Verification> {
        let keys = self.block(|s| async move { s.list(ENTRIES).await })?;
        let numbered = numbered(&self.store, &keys)?;
        let fetched = self.block(move |s| async move { s.get_many(keys).await })?;
        let mut problems: Vec<Tamper> = Vec::new();
        let push = |p: Tamper, problems: &mut Vec<Tamper>| {
            if !problems.contains(&p) {
                problems.push(p);
            }
        };
        let mut expected_prev: Option<String> = Some(GENESIS.to_owned());
        let mut last_pos: Option<u64> = None;
        let mut last_hash = GENESIS.to_owned();
        let mut entries = 0;
        for ((pos, _), (_, bytes)) in numbered.iter().zip(fetched) {
            let pos = *pos;
            let gap = last_pos.map_or(pos != 0, |p| pos != p + 1);
            if gap {
                push(Tamper::Deleted { after: last_pos }, &mut problems);
            }
            last_pos = Some(pos);
            let parsed = bytes.and_then(|b| serde_json::from_slice::<StoredEntry>(&b).ok());
            let Some(stored) = parsed else {
                push(Tamper::Unreadable { seq: pos }, &mut problems);
                expected_prev = None;
                continue;
            };
            let e = stored.entry;
            entries += 1;
            if e.seq != pos {
                push(Tamper::Reordered { seq: pos }, &mut problems);
                // The next entry's link cannot be judged against a misplaced one.
                expected_prev = None;
                last_hash = e.hash;
                continue;
            } else if e.compute_mac(&self.key) != e.hash {
                push(Tamper::Edited { seq: pos }, &mut problems);
            } else if !gap && expected_prev.as_ref().is_some_and(|p| *p != e.prev_hash) && pos > 0 {
                // Self-consistent, yet not linked: the entry before it was rewritten.
                push(Tamper::Edited { seq: pos - 1 }, &mut problems);
            }
            expected_prev = Some(e.hash.clone());
            last_hash = e.hash;
        }
        // The newest signed head must name the last entry, or one before it.
        let heads = self.block(|s| async move { s.list(HEADS).await })?;
        if let Some((h, rel)) = numbered_last(&self.store, &heads)? {
            let bytes = self.block({
                let rel = rel.clone();
                move |s| async move { s.get(&rel).await }
            })?;
            match bytes.and_then(|b| serde_json::from_slice::<Head>(&b).ok()) {
                Some(head) if head.seq == h && head.signature == head_signature(&self.key, head.seq, &head.hash) => {
                    if last_pos.is_none_or(|last| h > last) {
                        push(Tamper::Truncated { after: last_pos, head: h }, &mut problems);
                    } else if let Some(named) = self.entry_hash_at(h)?
                        && named != head.hash
                    {
                        push(Tamper::Edited { seq: h }, &mut problems);
                    }
                }
                _ => push(Tamper::ForgedHead { seq: h }, &mut problems),
            }
        }
        problems.sort_by_key(Tamper::position);
        let first_broken = problems.iter().map(Tamper::position).min();
        Ok(Verification { entries, head: last_hash, problems, first_broken })
    }

    fn entry_hash_at(&self, seq: u64) -> Result<Option<String>> {
        let rel = entry_key(seq);
        let bytes = self.block({
            let rel = rel.clone();
            move |s| async move { s.get(&rel).await }
        })?;
        // An entry stored under another number is reported as reordered already.
        Ok(bytes
            .and_then(|b| serde_json::from_slice::<StoredEntry>(&b).ok())
            .filter(|s| s.entry.seq == seq)
            .map(|s| s.entry.hash))
    }

    /// Verifies the chain and that it still holds `head`, a MAC kept elsewhere: this also
    /// catches a rollback of the whole store, heads included.
    pub fn verify_head(&self, head: &str) -> Result<Verification> {
        let mut v = self.verify()?;
        let entries = self.entries()?;
        if head != GENESIS && !entries.iter().any(|e| e.hash == head) {
            v.problems.push(Tamper::Deleted { after: entries.last().map(|e| e.seq) });
            v.first_broken = v.problems.iter().map(Tamper::position).min();
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

    /// Imports a JSON-lines ledger of an earlier version (one SHA-256-chained entry per line)
    /// into this ledger, which must be empty. The file's chain is checked first; a broken one
    /// is refused, naming its first broken line, and nothing is imported. Each imported entry
    /// keeps its contents and notes where it came from ([`LedgerEntry::imported`]).
    pub fn import_file(&self, path: &Path) -> Result<Import> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("ledger", format!("cannot read {}: {e}", path.display())))?;
        if !self.entries()?.is_empty() {
            return Err(Error::invalid("ledger", "the ledger is not empty; import into a new ledger"));
        }
        let broken = |line: usize, why: &str| {
            Error::invalid(
                "ledger",
                format!("{} line {line}: {why}; the file's chain is broken, nothing was imported", path.display()),
            )
        };
        let mut legacy = Vec::new();
        let mut prev = GENESIS.to_owned();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let e: LegacyEntry =
                serde_json::from_str(line).map_err(|e| broken(i + 1, &format!("not an entry: {e}")))?;
            if e.seq != legacy.len() as u64 {
                return Err(broken(i + 1, &format!("entry {} where {} was expected", e.seq, legacy.len())));
            }
            if e.compute_hash() != e.hash {
                return Err(broken(i + 1, "the entry does not match its hash"));
            }
            if e.prev_hash != prev {
                return Err(broken(i + 1, "the entry does not link to the one before"));
            }
            prev = e.hash.clone();
            legacy.push(e);
        }
        let file = path.display().to_string();
        for e in &legacy {
            self.append(LedgerEntry {
                seq: 0,
                service: e.service.clone(),
                deployment: e.deployment.clone(),
                release: e.release.clone(),
                artifact_digest: e.artifact_digest.clone(),
                baseline_fingerprint: e.baseline_fingerprint.clone(),
                strategy: e.strategy.clone(),
                started_at_ms: e.started_at_ms,
                ended_at_ms: e.ended_at_ms,
                outcome: e.outcome.clone(),
                accepted_no_way_back: false,
                imported: Some(ImportedFrom { file: file.clone(), seq: e.seq, hash: e.hash.clone() }),
                watch: None,
                prev_hash: String::new(),
                hash: String::new(),
            })?;
        }
        Ok(Import { entries: legacy.len(), file_head: prev })
    }
}

fn numbered_last(store: &StateStore, keys: &[String]) -> Result<Option<(u64, String)>> {
    Ok(numbered(store, keys)?.into_iter().max_by_key(|(n, _)| *n))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// An entry of the JSON-lines ledger of earlier versions, field for field (the order matters:
/// its hash covers the serialized form).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LegacyEntry {
    seq: u64,
    service: String,
    deployment: DeploymentId,
    release: Release,
    artifact_digest: Option<String>,
    baseline_fingerprint: String,
    strategy: String,
    started_at_ms: u64,
    ended_at_ms: u64,
    outcome: Phase,
    prev_hash: String,
    hash: String,
}

impl LegacyEntry {
    fn compute_hash(&self) -> String {
        let unhashed = LegacyEntry { hash: String::new(), ..self.clone() };
        hex_prefix(&Sha256::digest(serde_json::to_vec(&unhashed).expect("entries serialize")), 64)
    }
}
