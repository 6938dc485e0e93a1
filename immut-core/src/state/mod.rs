//! The state store: journal, lease and ledger on one object store, shared between machines.
//!
//! [`StateStore`] is built on the [`object_store`] crate. The local filesystem is the default
//! (a directory, so nothing changes for a single machine); S3 (`s3://bucket/prefix`, feature
//! `s3`), Google Cloud Storage (`gs://…`, feature `gcs`) and Azure Blob Storage (`az://…`,
//! feature `azure`) are chosen by URL and configured from each cloud's standard environment
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`; a plain-http S3 emulator also needs `AWS_ALLOW_HTTP=true`).
//!
//! Conditional puts are the only synchronisation, and only **create-only** puts work on every
//! backend (object_store's local filesystem has no if-match update), so all state is
//! append-only objects:
//!
//! | object | key under the prefix |
//! |---|---|
//! | journal record `n` of a service | `journal/<service>/<n>.json` |
//! | lease epoch `e` of a service | `lease/<service>/<e>/lease.json` |
//! | its renewals and its release | `lease/<service>/<e>/renew-<n>.json`, `…/released.json` |
//! | ledger entry `n` and its signed head | `ledger/entries/<n>.json`, `ledger/heads/<n>.json` |
//!
//! Numbers are zero-padded to 20 digits, so a listing is in order. Every object carries its
//! writer's id and a nonce: when a create was applied but its answer was lost, the retry sees
//! `AlreadyExists`, reads the object back, and its own nonce means success. Requests to a cloud
//! store are retried by object_store itself (5xx, 429, `SlowDown`, connection errors), with
//! exponential backoff; that is the one retry layer for state.
//!
//! The store's calls run on a small runtime of their own (one thread, `immut-state`), so the
//! blocking methods of [`Journal`](crate::journal::Journal) and [`Ledger`](crate::ledger::Ledger)
//! can be called from any thread, and a test's paused clock never stalls them.

pub(crate) mod fence;
pub mod lease;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

pub use lease::{Lease, LeaseRecord, LeaseSettings, LeaseState};

/// Which machine a writer runs on: its hostname and boot id. A pid and start time confirm a
/// lease holder only when both match (the same machine, the same boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostId {
    /// The hostname (`/proc/sys/kernel/hostname`), or the name given to [`StateStore::with_host`].
    pub hostname: String,
    /// The boot id (`/proc/sys/kernel/random/boot_id`); empty when unknown, which disables
    /// pid checks.
    pub boot_id: String,
}

impl HostId {
    /// This machine.
    pub fn this_machine() -> HostId {
        let read =
            |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let hostname = read("/proc/sys/kernel/hostname")
            .or_else(|| read("/etc/hostname"))
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        HostId { hostname, boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default() }
    }
}

/// One store for journal, lease and ledger. Cheap to clone; clones share one writer id.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    writer: String,
    host: HostId,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("location", &self.inner.location)
            .field("writer", &self.inner.writer)
            .finish_non_exhaustive()
    }
}

/// Whether a create-only put made the object, or found one already there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Created {
    /// This writer's object is in place (written now, or by an earlier attempt whose answer
    /// was lost).
    Mine,
    /// Another writer's object holds the key; its bytes.
    Theirs(Vec<u8>),
}

#[derive(Deserialize)]
struct Signed {
    writer: String,
    nonce: String,
}

impl StateStore {
    /// Opens the store a URL names:
    ///
    /// - a plain path or `file:///path`: a directory on this machine (created if missing);
    /// - `s3://bucket/prefix` (feature `s3`), `gs://bucket/prefix` (feature `gcs`),
    ///   `az://container/prefix` (feature `azure`): configured from the cloud's standard
    ///   environment variables;
    /// - `memory://`: in this process only, for tests.
    ///
    /// Errors name the `state` setting and the fix.
    pub fn open(url: &str) -> Result<StateStore> {
        let url = url.trim();
        if url.is_empty() {
            return Err(Error::invalid("state", "is empty; pass a directory or a URL such as s3://bucket/prefix"));
        }
        if !url.contains("://") {
            return StateStore::local(url);
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::invalid("state", format!("{url:?} is not a URL: {e}; use s3://bucket/prefix or a path"))
        })?;
        let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&parsed).map_err(|e| {
            Error::invalid("state", format!("{url:?}: {e}; use a path, file://, s3://, gs:// or az://"))
        })?;
        use object_store::ObjectStoreScheme as S;
        let store: Arc<dyn ObjectStore> = match scheme {
            S::Local => return StateStore::local(parsed.path()),
            S::Memory => Arc::new(object_store::memory::InMemory::new()),
            #[cfg(feature = "s3")]
            S::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| config_error(url, e))?,
            ),
            #[cfg(feature = "gcs")]
            S::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| config_error(url, e))?,
            ),
            #[cfg(feature = "azure")]
            S::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| config_error(url, e))?,
            ),
            other => {
                let feature = match other {
                    S::AmazonS3 => "s3",
                    S::GoogleCloudStorage => "gcs",
                    S::MicrosoftAzure => "azure",
                    _ => "",
                };
                return Err(if feature.is_empty() {
                    Error::invalid(
                        "state",
                        format!("{url:?}: this kind of store is not supported; use a path, s3://, gs:// or az://"),
                    )
                } else {
                    Error::invalid(
                        "state",
                        format!(
                            "{url:?} needs the `{feature}` feature of immut-core (`immut/{feature}`); build with it"
                        ),
                    )
                });
            }
        };
        Ok(StateStore::from_object_store(store, prefix.as_ref(), redact(&parsed)))
    }

    /// A directory on this machine (created if missing). Every write is fsynced.
    pub fn local(dir: impl Into<PathBuf>) -> Result<StateStore> {
        let dir = dir.into();
        let unwritable = |e: &dyn std::fmt::Display| {
            Error::invalid("state", format!("cannot write {}: {e}; pass a writable directory", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| unwritable(&e))?;
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(|e| unwritable(&e))?;
        let _ = std::fs::remove_file(probe);
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| unwritable(&e))?.with_fsync(true);
        let location = std::fs::canonicalize(&dir).unwrap_or(dir).display().to_string();
        Ok(StateStore::from_object_store(Arc::new(store), "", location))
    }

    /// A store in this process's memory; clones share it. For tests.
    pub fn memory() -> StateStore {
        StateStore::from_object_store(Arc::new(object_store::memory::InMemory::new()), "", "memory://")
    }

    /// Any object store, under `prefix`; `location` is how errors and logs name it.
    pub fn from_object_store(store: Arc<dyn ObjectStore>, prefix: &str, location: impl Into<String>) -> StateStore {
        let host = HostId::this_machine();
        let writer = format!("{}:{}:{}", host.hostname, std::process::id(), &nonce()[..8]);
        StateStore {
            inner: Arc::new(Inner { store, prefix: Path::from(prefix), location: location.into(), writer, host }),
        }
    }

    /// Runs as if on the machine `hostname` (with no boot id, so no pid check ever confirms
    /// or dismisses a holder): for containers whose hostname changes, and for tests that play
    /// several machines on one.
    pub fn with_host(self, hostname: &str) -> StateStore {
        let host = HostId { hostname: hostname.to_owned(), boot_id: String::new() };
        let writer = format!("{hostname}:{}:{}", std::process::id(), &nonce()[..8]);
        StateStore {
            inner: Arc::new(Inner {
                store: self.inner.store.clone(),
                prefix: self.inner.prefix.clone(),
                location: self.inner.location.clone(),
                writer,
                host,
            }),
        }
    }

    /// Where the store is (a directory or a URL without credentials).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// This writer's id (`host:pid:random`), stamped into every object it creates.
    pub fn writer(&self) -> &str {
        &self.inner.writer
    }

    /// The machine this writer claims to run on.
    pub fn host(&self) -> &HostId {
        &self.inner.host
    }

    /// The underlying object store and the prefix under which the state lives, for tools and
    /// tests that inspect the objects themselves.
    pub fn object_store(&self) -> (&Arc<dyn ObjectStore>, &Path) {
        (&self.inner.store, &self.inner.prefix)
    }

    /// The full key of `rel` (a `/`-separated key under the prefix).
    pub fn key(&self, rel: &str) -> Path {
        let mut parts: Vec<String> = self.inner.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(rel.split('/').filter(|p| !p.is_empty()).map(str::to_owned));
        Path::from_iter(parts)
    }

    fn rel(&self, key: &Path) -> String {
        let prefix_parts = self.inner.prefix.parts().count();
        key.parts().skip(prefix_parts).map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/")
    }

    fn error(&self, doing: &str, rel: &str, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ErrorKind::PermissionDenied
            }
            object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
                ErrorKind::Unsupported
            }
            object_store::Error::InvalidPath { .. } | object_store::Error::UnknownConfigurationKey { .. } => {
                ErrorKind::InvalidInput
            }
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, format!("state store {}: cannot {doing} {rel}: {e}", self.inner.location))
    }

    /// Creates `rel` with `bytes` only if it does not exist. `nonce` is the nonce written in
    /// `bytes`: when the key exists and holds this writer's object with that nonce (a retried
    /// create whose first answer was lost), the answer is [`Created::Mine`].
    pub(crate) async fn create(&self, rel: &str, bytes: Vec<u8>, nonce: &str) -> Result<Created> {
        let key = self.key(rel);
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.inner.store.put_opts(&key, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(Created::Mine),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get(rel).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("state store {}: {rel} exists and is gone again; try again", self.inner.location),
                    )
                })?;
                let mine = serde_json::from_slice::<Signed>(&existing)
                    .is_ok_and(|s| s.writer == self.inner.writer && s.nonce == nonce);
                Ok(if mine { Created::Mine } else { Created::Theirs(existing) })
            }
            Err(e) => Err(self.error("create", rel, e)),
        }
    }

    /// The bytes of `rel`, or `None` when it does not exist.
    pub(crate) async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(rel);
        match self.inner.store.get(&key).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error("read", rel, e)),
            },
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", rel, e)),
        }
    }

    /// Whether `rel` exists.
    pub(crate) async fn exists(&self, rel: &str) -> Result<bool> {
        match self.inner.store.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("look up", rel, e)),
        }
    }

    /// Every key under `rel_prefix` (recursively), relative to the store's prefix, sorted.
    pub(crate) async fn list(&self, rel_prefix: &str) -> Result<Vec<String>> {
        let prefix = self.key(rel_prefix);
        let metas: Vec<object_store::ObjectMeta> =
            self.inner.store.list(Some(&prefix)).try_collect().await.map_err(|e| self.error("list", rel_prefix, e))?;
        let mut keys: Vec<String> = metas.iter().map(|m| self.rel(&m.location)).collect();
        keys.sort();
        Ok(keys)
    }

    /// The names of the "folders" directly under `rel_prefix`, sorted.
    pub(crate) async fn list_dirs(&self, rel_prefix: &str) -> Result<Vec<String>> {
        let prefix = self.key(rel_prefix);
        let listed =
            self.inner.store.list_with_delimiter(Some(&prefix)).await.map_err(|e| self.error("list", rel_prefix, e))?;
        let mut names: Vec<String> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect();
        names.sort();
        Ok(names)
    }

    /// Reads many keys at once (16 in flight), in the order given; `None` for a missing one.
    pub(crate) async fn get_many(&self, rels: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        futures_util::stream::iter(rels)
            .map(|rel| async move {
                let bytes = self.get(&rel).await?;
                Ok::<_, Error>((rel, bytes))
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// Runs `f` with this store on the state runtime and waits for it, blocking this thread.
    /// Callable from any thread, async workers included (the state runtime is separate).
    pub(crate) fn block<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(StateStore) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(self.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(Error::new(ErrorKind::Other, format!("state store {}: a state task panicked", self.inner.location)))
        })
    }

    /// Runs `f` with this store on the state runtime and awaits it.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(StateStore) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(self.clone());
        runtime().spawn(fut).await.unwrap_or_else(|e| {
            Err(Error::new(ErrorKind::Other, format!("state store {}: a state task failed: {e}", self.inner.location)))
        })
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn config_error(url: &str, e: object_store::Error) -> Error {
    Error::invalid("state", format!("{url:?}: {e}; check the cloud's environment variables (AWS_*, GOOGLE_*, AZURE_*)"))
}

/// The URL without user info or query (where credentials could hide).
fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// The runtime every store call runs on: one thread of its own.
fn runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("immut-state")
            .build()
            .expect("the state runtime starts");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("immut-state".to_owned())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("the state thread starts");
        handle
    })
}

/// A fresh random nonce: 32 hex digits from a seed read once from the OS and a counter.
pub(crate) fn nonce() -> String {
    use sha2::Digest;
    static SEED: OnceLock<[u8; 32]> = OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut seed = [0u8; 32];
        let from_os =
            std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        if from_os.is_err() {
            let fallback = format!("{:?}:{}:{:p}", std::time::SystemTime::now(), std::process::id(), &seed as *const _);
            seed.copy_from_slice(&sha2::Sha256::digest(fallback.as_bytes()));
        }
        seed
    });
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = sha2::Sha256::new();
    h.update(seed);
    h.update(n.to_le_bytes());
    crate::model::hex_prefix(&h.finalize(), 32)
}

/// Random key material from the OS (`/dev/urandom`).
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut out))
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot read random bytes from /dev/urandom: {e}")))?;
    Ok(out)
}

/// A number as a key segment: 20 digits, so that keys sort in numeric order.
pub(crate) fn seq_key(n: u64) -> String {
    format!("{n:020}")
}

/// Checks that `service` is a safe key segment.
pub(crate) fn check_service(service: &str) -> Result<()> {
    crate::model::validate_name("service", service)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    crate::journal::now_ms()
}

/// An error for state that exists but cannot be read: never "nothing".
pub(crate) fn corrupt(store: &StateStore, rel: &str, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Other,
        format!(
            "corrupt state in {}: {rel}: {what}; it was not written by immut as it stands (a hand edit, a partial copy or a faulty disk); restore it from a backup or remove the service's state deliberately",
            store.location()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_create_that_finds_its_own_nonce_succeeds_and_anothers_does_not() {
        let store = StateStore::memory();
        let other = store.clone().with_host("elsewhere");
        let body = |s: &StateStore, nonce: &str| {
            serde_json::to_vec(&serde_json::json!({ "writer": s.writer(), "nonce": nonce, "x": 1 })).unwrap()
        };
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let create = |s: &StateStore, n: &str| {
            let (bytes, n) = (body(s, n), n.to_owned());
            s.block(move |s| async move { s.create("k/1.json", bytes, &n).await }).unwrap()
        };
        assert_eq!(create(&store, &a), Created::Mine);
        // The same create again (its first answer lost): read back, its own nonce, success.
        assert_eq!(create(&store, &a), Created::Mine);
        // Another attempt of the same writer with a new nonce is not the same write.
        assert!(matches!(create(&store, &b), Created::Theirs(_)));
        // Nor is another writer's with the same nonce.
        assert!(matches!(create(&other, &a), Created::Theirs(_)));
    }

    #[test]
    fn urls_pick_the_store_and_name_a_missing_feature() {
        let dir = std::env::temp_dir().join(format!("immut-state-url-{}", std::process::id()));
        let local = StateStore::open(dir.to_str().unwrap()).unwrap();
        assert!(local.location().ends_with(&format!("immut-state-url-{}", std::process::id())));
        let file = StateStore::open(&format!("file://{}", dir.display())).unwrap();
        assert_eq!(file.location(), local.location());
        assert!(StateStore::open("memory://").unwrap().location().starts_with("memory://"));
        #[cfg(not(feature = "gcs"))]
        {
            let e = StateStore::open("gs://bucket/prefix").unwrap_err();
            assert!(e.message().contains("the `gcs` feature"), "{e}");
        }
        assert!(StateStore::open("ftp://x/y").unwrap_err().message().starts_with("state:"));
        assert!(StateStore::open("").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
