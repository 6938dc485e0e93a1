//! Operating-system calls: processes, process groups, signals, ports, digests and the state
//! directory, plus the one function that maps their errors to [`immut_core::Error`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use immut_core::{Error, ErrorKind, InstanceId, Result};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::provider::env;

/// Maps an OS error to an immut error naming what failed and how to fix it.
pub(crate) fn map_io(error: io::Error, operation: &str, path: &Path) -> Error {
    let (kind, fix) = match error.kind() {
        io::ErrorKind::NotFound => (ErrorKind::InvalidInput, "check that the path exists"),
        io::ErrorKind::PermissionDenied => (ErrorKind::InvalidInput, "make it writable (or executable) for this user"),
        io::ErrorKind::AddrInUse => (ErrorKind::InvalidInput, "stop what listens there or pick another port"),
        io::ErrorKind::ReadOnlyFilesystem => (ErrorKind::InvalidInput, "pick a directory on a writable file system"),
        _ => (ErrorKind::Unavailable, "try again"),
    };
    Error::new(kind, format!("{operation} {}: {error}; {fix}", path.display()))
        .with_provider("local")
        .with_operation(operation.to_owned())
        .with_source(error)
}

/// The fix every corrupt-state error names.
pub(crate) const REPAIR_HINT: &str = "nothing was changed; see what runs with `immut repair` (it changes nothing), then move the file aside and rebuild what can be rebuilt with `immut repair --yes`";

/// A state file that does not parse: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Corrupt {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl Corrupt {
    pub(crate) fn of(path: &Path, e: &serde_json::Error) -> Corrupt {
        Corrupt { path: path.to_owned(), line: e.line(), column: e.column(), reason: e.to_string() }
    }

    /// The error that stops whoever read it: it names the file, the line and the fix.
    pub(crate) fn error(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "state_dir: the {what} {} is unreadable at line {}, column {} ({}); {REPAIR_HINT}",
                self.path.display(),
                self.line,
                self.column,
                self.reason
            ),
        )
        .with_provider("local")
    }
}

/// What the provider remembers of one instance, one JSON file each. The file lives while the
/// instance may still run: [`crate::LocalProvider::terminate`] deletes it once the process is
/// gone, and `describe` deletes what a terminate that died half-way left behind.
///
/// It is written ahead: first without a pid (with the launcher's identity), before the process
/// starts, then completed with the pid and start time. The process carries its id in its
/// environment, so a record whose launcher died before completing it is completed from the
/// process that carries the id, or deleted when none does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: String,
    /// `None` while the process is being started.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The process start time in clock ticks since boot: with the pid, the process identity.
    pub start_ticks: Option<u64>,
    pub port: u16,
    pub image: PathBuf,
    /// The artifact's digest, checked against what the process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The artifact is a script (`#!`): its process runs an interpreter, so it is audited by the
    /// script's own digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub script: bool,
    pub labels: BTreeMap<String, String>,
    pub launched_at_ms: u64,
    /// A terminate was asked for. Written before the first signal, so that a deployer that dies
    /// mid-terminate leaves a record that reads as terminating, never as running.
    #[serde(default)]
    pub terminated: bool,
    /// When a describe first found the process gone without a terminate: it died on its own.
    /// Such a record is reported as terminated for [`GONE_RETENTION`], then deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_at_ms: Option<u64>,
    /// The process writing this record ahead of its spawn, while `pid` is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<(i32, Option<u64>)>,
    /// The process leads a process group of its own (this provider started it), so signals go
    /// to the whole group. `false` for adopted processes, whose group is not theirs.
    #[serde(default)]
    pub group: bool,
}

impl Record {
    /// The process this record names, if it has been started.
    pub(crate) fn target(&self) -> Option<Target> {
        Some(Target { pid: self.pid?, start: self.start_ticks, group: self.group, instance: Some(self.id.clone()) })
    }
}

/// How long the record of a process that died on its own stays describable (with
/// `Query::with_terminated`): long enough to see what crashed, short enough that the
/// instances directory does not grow with every crash.
pub(crate) const GONE_RETENTION: Duration = Duration::from_secs(15 * 60);

pub(crate) fn instances_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("instances")
}

pub(crate) fn logs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs")
}

/// Which executables each service's instances ran: what tells a process started by hand from
/// a managed executable apart, after the records of the managed instances are gone.
pub(crate) fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// Where repair moves the files it cannot read.
pub(crate) fn quarantine_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// Runs blocking file-system and `/proc` work on tokio's blocking pool, so that it never stalls
/// the async threads that drive deployments, health checks and the balancer.
pub(crate) async fn blocking<T: Send + 'static>(
    operation: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::new(ErrorKind::Unavailable, "the runtime is shutting down; try again")
            .with_provider("local")
            .with_operation(operation)
            .with_source(e)),
    }
}

/// Fails on platforms other than Linux, where process identity cannot be read from `/proc`.
pub(crate) fn check_platform() -> Result<()> {
    if cfg!(target_os = "linux") && Path::new("/proc/self/stat").exists() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        "the local provider runs on Linux only: it identifies processes by their pid and start time in /proc (and /proc is not mounted here)",
    )
    .with_provider("local"))
}

/// Creates the state directory and proves it writable.
pub(crate) fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    for dir in [instances_dir(state_dir), logs_dir(state_dir), images_dir(state_dir)] {
        std::fs::create_dir_all(&dir).map_err(|e| map_io(e, "create state directory", &dir).with_field("state_dir"))?;
    }
    let probe = state_dir.join(format!(".write-test.{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .map_err(|e| map_io(e, "write to state directory", state_dir).with_field("state_dir"))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes a file atomically: a temporary file of this writer's own (so that two processes
/// writing the same record never interleave), fsync, rename.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub(crate) fn record_path(state_dir: &Path, id: &str) -> PathBuf {
    instances_dir(state_dir).join(format!("{id}.json"))
}

/// Writes a record atomically.
pub(crate) fn write_record(state_dir: &Path, record: &Record) -> Result<()> {
    let path = record_path(state_dir, &record.id);
    let body = serde_json::to_vec_pretty(record).expect("records serialize");
    write_atomic(&path, &body).map_err(|e| {
        map_io(e, "write instance record", &path).with_field("state_dir").with_ids([InstanceId::new(&record.id)])
    })
}

/// Reads one record; `None` when it is gone.
pub(crate) fn read_record(state_dir: &Path, id: &str) -> Result<Option<Record>> {
    let path = record_path(state_dir, id);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| Corrupt::of(&path, &e).error("instance record"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(map_io(e, "read instance record", &path)),
    }
}

/// Deletes a record; one that is already gone is fine.
pub(crate) fn delete_record(state_dir: &Path, id: &str) -> Result<()> {
    let path = record_path(state_dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(map_io(e, "delete instance record", &path).with_field("state_dir").with_ids([InstanceId::new(id)]))
        }
    }
}

/// Every record file in the state directory, read or not: what the inventory and the repair
/// look at. Temporary files of an atomic write are not records.
pub(crate) fn scan_records(state_dir: &Path) -> Result<Vec<(PathBuf, std::result::Result<Record, Corrupt>)>> {
    let dir = instances_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(map_io(e, "read state directory", &dir)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| map_io(e, "read state directory", &dir))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => {
                found.push((path.clone(), serde_json::from_slice::<Record>(&bytes).map_err(|e| Corrupt::of(&path, &e))))
            }
            // Its instance was terminated between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(map_io(e, "read instance record", &path)),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Every record in the state directory. A record that cannot be read is an error naming the
/// file and the line: an unreadable record may be a running instance, so it never reads as
/// "nothing".
pub(crate) fn read_records(state_dir: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (_, read) in scan_records(state_dir)? {
        records.push(read.map_err(|c| c.error("instance record"))?);
    }
    records.sort_by(|a, b| (a.launched_at_ms, &a.id).cmp(&(b.launched_at_ms, &b.id)));
    Ok(records)
}

/// Holds an exclusive `flock` on a file until dropped.
pub(crate) struct FileLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Takes an exclusive lock on `path` (created if missing), waiting for it.
pub(crate) fn lock_file(path: &Path) -> Result<FileLock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| map_io(e, "open lock file", path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(FileLock)
        .map_err(|(_, e)| map_io(io::Error::from(e), "lock", path))
}

/// Takes an exclusive lock on `path` if nobody holds it.
pub(crate) fn try_lock_file(path: &Path) -> Result<Option<FileLock>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| map_io(e, "open lock file", path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(FileLock(lock))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(map_io(io::Error::from(e), "lock", path)),
    }
}

/// One entry of the images index: a service ran this executable, with this digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageEntry {
    pub service: String,
    pub image: PathBuf,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// Records that `service` runs `image`, once: one small file per (service, executable, digest),
/// so the index grows with the artifacts, not with the instances.
pub(crate) fn remember_image(state_dir: &Path, service: &str, image: &Path, digest: Option<&str>) -> Result<()> {
    let mut hasher = Sha256::new();
    hasher.update(service.as_bytes());
    hasher.update([0]);
    hasher.update(image.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(digest.unwrap_or_default().as_bytes());
    let key: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let path = images_dir(state_dir).join(format!("{key}.json"));
    if path.exists() {
        return Ok(());
    }
    let size = std::fs::metadata(image).ok().map(|m| m.len());
    let entry =
        ImageEntry { service: service.to_owned(), image: image.to_owned(), digest: digest.map(str::to_owned), size };
    let body = serde_json::to_vec(&entry).expect("image entries serialize");
    write_atomic(&path, &body).map_err(|e| map_io(e, "write the images index", &path).with_field("state_dir"))
}

/// The executables that instances of `service` (of any service when `None`) ran.
pub(crate) fn remembered_images(state_dir: &Path, service: Option<&str>) -> Vec<ImageEntry> {
    let Ok(entries) = std::fs::read_dir(images_dir(state_dir)) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<ImageEntry>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|e| service.is_none_or(|s| s == e.service))
        .collect()
}

/// The `sha256:<hex>` digest of a file's content.
fn sha256_of(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Digests already computed, by the file's identity (device, inode, size, modification time):
/// an unchanged file is hashed once per process, however often it is audited.
static DIGESTS: Mutex<Option<HashMap<FileIdentity, String>>> = Mutex::new(None);

/// A file as the digest cache knows it: device, inode, size, modification time (s, ns).
type FileIdentity = (u64, u64, u64, i64, i64);

/// The digest of a file, through the cache. `path` may be `/proc/<pid>/exe`: its metadata and
/// content are those of the file the process runs, even when that path was replaced since.
pub(crate) fn digest_cached(path: &Path) -> io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let key = (meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
    if let Some(d) = DIGESTS.lock().expect("digest cache poisoned").as_ref().and_then(|m| m.get(&key)) {
        return Ok(d.clone());
    }
    let digest = sha256_of(path)?;
    DIGESTS.lock().expect("digest cache poisoned").get_or_insert_with(HashMap::new).insert(key, digest.clone());
    Ok(digest)
}

/// The `sha256:<hex>` digest of an artifact file.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    digest_cached(path).map_err(|e| map_io(e, "read artifact", path).with_field("artifact.image"))
}

/// Whether a file starts with `#!`: a script, run by an interpreter.
pub(crate) fn is_script(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"#!"
}

/// Checks that `path` is an executable regular file.
pub(crate) fn check_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::invalid("artifact.image", format!("no executable at {}: {e}; build it or fix the path", path.display()))
            .with_provider("local")
            .with_source(e)
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::invalid(
            "artifact.image",
            format!("{} is not an executable file; chmod +x it or point at the binary", path.display()),
        ));
    }
    Ok(())
}

pub(crate) use immut_core::process::process_start;

/// `/proc/<pid>/stat` of a process, zombies included: (state, process group, start ticks).
pub(crate) fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The start time of a process that this one started and has not reaped yet, zombie or not:
/// the pid cannot be reused while the child is unreaped, so the pair is the process identity.
pub(crate) fn child_start(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, _, start)| start)
}

/// The environment a process was started with.
pub(crate) fn process_env(pid: i32) -> Vec<(String, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|b| *b == 0)
        .filter_map(|var| std::str::from_utf8(var).ok()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn env_value(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Whether a process carries `IMMUT_INSTANCE_ID=<id>` in its environment.
pub(crate) fn carries_instance(pid: i32, id: &str) -> bool {
    env_value(&process_env(pid), env::INSTANCE_ID).as_deref() == Some(id)
}

/// Whether the process a record names still runs: the pid with the recorded start time or,
/// when the start time could not be recorded, the pid with the instance id in its
/// environment. A pid alone never proves a process.
pub(crate) fn leader_alive(target: &Target) -> bool {
    match (process_start(target.pid), target.start, &target.instance) {
        (Some(now), Some(then), _) => now == then,
        (Some(_), None, Some(id)) => carries_instance(target.pid, id),
        _ => false,
    }
}

/// The executable a process runs, as the kernel reports it.
pub(crate) fn process_image(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The command line of a process.
pub(crate) fn process_cmdline(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The processes of this machine, read once from `/proc`: pid, group and start time. What
/// describe needs to tell a group whose leader died from a group that is gone.
#[derive(Debug, Default)]
pub(crate) struct ProcTable {
    procs: Vec<(i32, i32, u64)>,
    envs: HashMap<i32, Vec<(String, String)>>,
}

impl ProcTable {
    /// Reads `/proc` now. Zombies are left out: they run nothing.
    pub(crate) fn read() -> ProcTable {
        let mut procs = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                if let Some((state, pgrp, start)) = stat(pid)
                    && state != 'Z'
                    && state != 'X'
                {
                    procs.push((pid, pgrp, start));
                }
            }
        }
        ProcTable { procs, envs: HashMap::new() }
    }

    pub(crate) fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.procs.iter().map(|p| p.0)
    }

    pub(crate) fn env(&mut self, pid: i32) -> &[(String, String)] {
        self.envs.entry(pid).or_insert_with(|| process_env(pid))
    }

    /// Live members of process group `pgid` that carry instance `id` in their environment.
    pub(crate) fn members(&mut self, pgid: i32, id: &str) -> Vec<i32> {
        let candidates: Vec<i32> = self.procs.iter().filter(|p| p.1 == pgid).map(|p| p.0).collect();
        candidates
            .into_iter()
            .filter(|&pid| env_value(self.env(pid), env::INSTANCE_ID).as_deref() == Some(id))
            .collect()
    }

    /// The process that carries instance `id`: the leader of its own group if there is one,
    /// else the oldest. What a record written ahead is completed from.
    pub(crate) fn carrying(&mut self, id: &str) -> Option<(i32, u64)> {
        let all: Vec<(i32, i32, u64)> = self.procs.clone();
        let mut found: Vec<(i32, i32, u64)> = all
            .into_iter()
            .filter(|&(pid, _, _)| env_value(self.env(pid), env::INSTANCE_ID).as_deref() == Some(id))
            .collect();
        found.sort_by_key(|&(pid, pgrp, start)| (pid != pgrp, start));
        found.first().map(|&(pid, _, start)| (pid, start))
    }

    /// Every live process carrying `key` in its environment, with the value.
    pub(crate) fn with_env(&mut self, key: &str) -> Vec<(i32, String)> {
        let pids: Vec<i32> = self.pids().collect();
        pids.into_iter().filter_map(|pid| env_value(self.env(pid), key).map(|v| (pid, v))).collect()
    }

    pub(crate) fn start_of(&self, pid: i32) -> Option<u64> {
        self.procs.iter().find(|p| p.0 == pid).map(|p| p.2)
    }
}

/// A process this provider may signal: a leader (pid and start time) and, when it leads a
/// group of its own, the members of the group that carry its instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub pid: i32,
    pub start: Option<u64>,
    pub group: bool,
    pub instance: Option<String>,
}

/// Whether anything of `target` still runs: its leader, or a member of its group that carries
/// its instance id.
pub(crate) fn target_alive(target: &Target, table: &mut Option<ProcTable>) -> bool {
    if leader_alive(target) {
        return true;
    }
    match (&target.instance, target.group) {
        (Some(id), true) => !table.get_or_insert_with(ProcTable::read).members(target.pid, id).is_empty(),
        _ => false,
    }
}

fn signal(target: &Target, sig: Signal) {
    if target.group {
        let _ = killpg(Pid::from_raw(target.pid), sig);
    } else {
        let _ = kill(Pid::from_raw(target.pid), sig);
    }
}

/// SIGTERM, then SIGKILL after `timeout`, to every target (to its whole process group when it
/// leads one, so that the children of a wrapper script go too); returns once nothing of them
/// runs. Only what is proven alive is signalled. The liveness checks read `/proc`, so each round
/// runs on the blocking pool, one hop for all the targets.
pub(crate) async fn stop_all(targets: Vec<Target>, timeout: Duration) {
    let alive_of = |targets: Vec<Target>| async move {
        let checked = targets.clone();
        // A check that could not run proves nothing: the processes count as alive, since
        // the caller deletes the records of what this reports gone.
        tokio::task::spawn_blocking(move || {
            let mut table = None;
            checked.into_iter().filter(|t| target_alive(t, &mut table)).collect()
        })
        .await
        .unwrap_or(targets)
    };
    let mut alive: Vec<Target> = alive_of(targets).await;
    for t in &alive {
        signal(t, Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    while !alive.is_empty() {
        if !killed && tokio::time::Instant::now() >= deadline {
            for t in &alive {
                tracing::warn!(pid = t.pid, group = t.group, "process ignored SIGTERM; sending SIGKILL");
                signal(t, Signal::SIGKILL);
            }
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(if killed { 10 } else { 20 })).await;
        alive = alive_of(alive).await;
    }
}

/// SIGKILL, at once, to every target proven alive: for a launch that must leave nothing behind.
pub(crate) fn kill_now(target: &Target) {
    if target_alive(target, &mut None) {
        signal(target, Signal::SIGKILL);
    }
}

/// The TCP ports listening on this machine, by socket inode (`/proc/net/tcp` and `tcp6`).
pub(crate) fn listening_sockets() -> HashMap<u64, u16> {
    let mut found = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let port = fields[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, fields[9].parse::<u64>()) {
                found.insert(inode, port);
            }
        }
    }
    found
}

/// Whether something listens on TCP `port` (any local address).
pub(crate) fn port_listening(port: u16) -> bool {
    listening_sockets().values().any(|&p| p == port)
}

/// The TCP ports a process listens on.
pub(crate) fn process_listening_ports(pid: i32, listening: &HashMap<u64, u16>) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut ports: Vec<u16> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()
        })
        .filter_map(|inode| listening.get(&inode).copied())
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// A process that looks like a copy of a managed artifact started by hand: its pid and start,
/// the file it runs (the executable, or the script for an interpreter), and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stray {
    pub pid: i32,
    pub start: u64,
    pub image: PathBuf,
    pub port: Option<u16>,
}

/// Processes (other than this one) that run a copy of one of `images` (same content, from any
/// path: matched by size, then digest) and serve (a `PORT` in their environment, or a listening
/// TCP socket), without the environment of a process launched by immut or of a balancer: what
/// an instance started by hand looks like. For an interpreter, the script named on its
/// command line is what is compared. It scans `/proc`: call it from blocking code only.
pub(crate) fn processes_running(images: &[ImageEntry]) -> Vec<Stray> {
    let me = std::process::id() as i32;
    let sizes: HashSet<u64> = images.iter().filter_map(|i| i.size).collect();
    let digests: HashSet<&str> = images.iter().filter_map(|i| i.digest.as_deref()).collect();
    let paths: HashSet<&Path> = images.iter().map(|i| i.image.as_path()).collect();
    let matches = |path: &Path, file: &Path| -> bool {
        if paths.contains(path) {
            return true;
        }
        let Ok(meta) = std::fs::metadata(file) else { return false };
        if !meta.is_file() || !sizes.contains(&meta.len()) {
            return false;
        }
        digest_cached(file).is_ok_and(|d| digests.contains(d.as_str()))
    };
    let table = ProcTable::read();
    let mut listening = None;
    let mut found = Vec::new();
    for (pid, _, start) in table.procs.iter().copied() {
        if pid == me {
            continue;
        }
        let Some(exe) = process_image(pid) else { continue };
        let exe_file = PathBuf::from(format!("/proc/{pid}/exe"));
        let image = if matches(&exe, &exe_file) {
            Some(exe)
        } else {
            // An interpreter: the first argument that is a file of the right content.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            process_cmdline(pid).into_iter().skip(1).take(3).map(|a| cwd.join(a)).find(|p| matches(p, p))
        };
        let Some(image) = image else { continue };
        let env = process_env(pid);
        if env_value(&env, env::RELEASE).is_some()
            || env_value(&env, env::INSTANCE_ID).is_some()
            || env_value(&env, env::BALANCER).is_some()
        {
            continue;
        }
        let port = match env_value(&env, env::PORT).and_then(|p| p.parse().ok()) {
            Some(port) => Some(port),
            None => process_listening_ports(pid, listening.get_or_insert_with(listening_sockets)).first().copied(),
        };
        let serves = env_value(&env, env::PORT).is_some() || port.is_some();
        if serves {
            found.push(Stray { pid, start, image, port });
        }
    }
    found.sort_by_key(|s| s.pid);
    found
}

/// The `PORT` a process was started with, or else the first port it listens on.
pub(crate) fn process_port(pid: i32) -> Option<u16> {
    env_value(&process_env(pid), env::PORT)
        .and_then(|p| p.parse().ok())
        .or_else(|| process_listening_ports(pid, &listening_sockets()).first().copied())
}

/// How instances get their ports, from the baseline's `port` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortPolicy {
    /// Any free port (the default).
    Auto,
    /// This port, for one instance.
    Fixed(u16),
    /// The first free ports of a range.
    Range(u16, u16),
}

/// A port held for an instance: bound (not listening) with `SO_REUSEADDR`, so that no other
/// program's bind takes it, while the instance (which binds with `SO_REUSEADDR`, as Rust's
/// std and tokio, Go, Node and most servers do) can still bind it and listen.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub port: u16,
    socket: Option<tokio::net::TcpSocket>,
}

impl Reservation {
    /// Releases the port now (for artifacts that bind without `SO_REUSEADDR`).
    pub(crate) fn release(&mut self) {
        self.socket = None;
    }

    /// Whether it still holds the port.
    pub(crate) fn holds(&self) -> bool {
        self.socket.is_some()
    }
}

fn reserve_port(port: u16) -> io::Result<Reservation> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let port = socket.local_addr()?.port();
    Ok(Reservation { port, socket: Some(socket) })
}

impl PortPolicy {
    pub(crate) fn parse(value: Option<&str>) -> Result<PortPolicy> {
        let bad = |v: &str| {
            Error::invalid(
                "params.port",
                format!("{v:?} is not a port policy; use auto, a port such as 8080, or a range such as 20000-20099"),
            )
        };
        match value.map(str::trim) {
            None | Some("auto") => Ok(PortPolicy::Auto),
            Some(v) => match v.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (lo.parse().map_err(|_| bad(v))?, hi.parse().map_err(|_| bad(v))?);
                    if lo == 0 || lo > hi {
                        return Err(bad(v));
                    }
                    Ok(PortPolicy::Range(lo, hi))
                }
                None => match v.parse() {
                    Ok(0) | Err(_) => Err(bad(v)),
                    Ok(p) => Ok(PortPolicy::Fixed(p)),
                },
            },
        }
    }

    /// Reserves `count` free ports on 127.0.0.1, none of them in `taken` (the ports of this
    /// state directory's instances). The reservations hold the ports until the instances bind
    /// them.
    pub(crate) fn reserve(&self, count: usize, taken: &HashSet<u16>) -> Result<Vec<Reservation>> {
        match *self {
            PortPolicy::Auto => {
                let mut held = Vec::with_capacity(count);
                while held.len() < count {
                    let r = reserve_port(0).map_err(|e| map_io(e, "reserve a port", Path::new("127.0.0.1:0")))?;
                    if !taken.contains(&r.port) {
                        held.push(r);
                    }
                }
                Ok(held)
            }
            PortPolicy::Fixed(port) => {
                if count > 1 {
                    return Err(Error::invalid(
                        "params.port",
                        format!("the fixed port {port} can serve one instance, not {count}; use port=auto or a range"),
                    ));
                }
                let in_use = |detail: String| {
                    Error::invalid(
                        "params.port",
                        format!(
                            "127.0.0.1:{port} is not available ({detail}); stop what listens there or use port=auto"
                        ),
                    )
                    .with_provider("local")
                };
                if taken.contains(&port) || port_listening(port) {
                    return Err(in_use("an instance or another program listens there".into()));
                }
                Ok(vec![reserve_port(port).map_err(|e| in_use(e.to_string()))?])
            }
            PortPolicy::Range(lo, hi) => {
                let listening: HashSet<u16> = listening_sockets().into_values().collect();
                let taken: Vec<Reservation> = (lo..=hi)
                    .filter(|p| !taken.contains(p) && !listening.contains(p))
                    .filter_map(|p| reserve_port(p).ok())
                    .take(count)
                    .collect();
                if taken.len() < count {
                    return Err(Error::invalid(
                        "params.port",
                        format!(
                            "only {} of {count} ports are free in {lo}-{hi}; widen the range or use port=auto",
                            taken.len()
                        ),
                    ));
                }
                Ok(taken)
            }
        }
    }
}

/// Whether the baseline lets the provider hold an instance's port until it listens
/// (`port_hold`, default `until-listening`), or releases it just before the process starts
/// (`port_hold=none`, for artifacts that bind without `SO_REUSEADDR`).
pub(crate) fn parse_port_hold(value: Option<&str>) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("until-listening") => Ok(true),
        Some("none") => Ok(false),
        Some(other) => Err(Error::invalid(
            "params.port_hold",
            format!("{other:?} is not a port hold; use until-listening (the default) or none"),
        )),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A fresh id for an instance of `service`: unique across pid reuse and across processes.
pub(crate) fn new_instance_id(service: &str, salt: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut hasher = Sha256::new();
    hasher.update(format!("{service}:{salt}:{nanos}:{}:{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let hex: String = hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{service}-{hex}")
}

/// The last `lines` lines of a log file, each cut to 300 characters.
pub(crate) fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    let mut text = String::new();
    if file.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    text.push_str(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| l.chars().take(300).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_policies_parse_and_name_the_field() {
        assert_eq!(PortPolicy::parse(None).unwrap(), PortPolicy::Auto);
        assert_eq!(PortPolicy::parse(Some("8080")).unwrap(), PortPolicy::Fixed(8080));
        assert_eq!(PortPolicy::parse(Some("2000-2010")).unwrap(), PortPolicy::Range(2000, 2010));
        for bad in ["0", "x", "10-5", "-3"] {
            let e = PortPolicy::parse(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("params.port"), "{e}");
        }
        assert!(parse_port_hold(None).unwrap());
        assert!(!parse_port_hold(Some("none")).unwrap());
        assert!(parse_port_hold(Some("forever")).unwrap_err().to_string().contains("params.port_hold"));
    }

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            pid: Some(1),
            start_ticks: None,
            port: 1,
            image: PathBuf::from("/bin/true"),
            digest: None,
            script: false,
            labels: BTreeMap::new(),
            launched_at_ms: 0,
            terminated: false,
            gone_at_ms: None,
            launcher: None,
            group: true,
        }
    }

    #[test]
    fn a_mapped_error_keeps_its_source_ids_and_retryable_flag() {
        let nowhere = std::env::temp_dir().join(format!("immut-no-state-dir-{}", std::process::id()));
        let e = write_record(&nowhere, &record("web-1")).unwrap_err();
        assert!(e.message().starts_with("state_dir: write instance record"), "{e}");
        assert_eq!(
            (e.kind(), e.provider(), e.operation()),
            (ErrorKind::InvalidInput, Some("local"), Some("write instance record"))
        );
        assert_eq!(e.ids(), [InstanceId::new("web-1")]);
        let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::NotFound));

        let transient = map_io(io::Error::other("disk hiccup"), "read", Path::new("x")).with_field("state_dir");
        assert!(transient.is_retryable(), "{transient}");
        assert!(std::error::Error::source(&transient).is_some());
    }

    #[test]
    fn a_port_in_use_is_named_and_a_reserved_port_is_never_handed_out_twice() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = PortPolicy::Fixed(port).reserve(1, &HashSet::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&format!("127.0.0.1:{port} is not available")), "{e}");

        let reserved = PortPolicy::Auto.reserve(3, &HashSet::new()).unwrap();
        let ports: HashSet<u16> = reserved.iter().map(|r| r.port).collect();
        assert_eq!(ports.len(), 3);
        // Held, the ports are never given to another bind(0), yet a server binding with
        // SO_REUSEADDR (as tokio and std do) can take one and listen.
        for _ in 0..200 {
            let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            assert!(!ports.contains(&other.local_addr().unwrap().port()));
        }
        let first = reserved[0].port;
        let server = std::net::TcpListener::bind(("127.0.0.1", first)).unwrap();
        assert!(port_listening(first));
        let e = PortPolicy::Fixed(first).reserve(1, &HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("is not available"), "{e}");
        drop(server);
        let e = PortPolicy::Fixed(reserved[1].port).reserve(1, &ports).unwrap_err();
        assert!(e.to_string().contains("an instance"), "{e}");
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file_and_the_line() {
        let dir = std::env::temp_dir().join(format!("immut-corrupt-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        write_record(&dir, &record("web-ok")).unwrap();
        assert_eq!(read_records(&dir).unwrap().len(), 1);
        let bad = record_path(&dir, "web-bad");
        std::fs::write(&bad, "{\n  \"id\": \"web-bad\",\n  \"pid\": oops\n}").unwrap();
        let e = read_records(&dir).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&bad.display().to_string()) && text.contains("line 3"), "{text}");
        assert!(text.contains("immut repair --yes") && !e.is_retryable(), "{text}");
        // A temporary file of an atomic write is no record.
        std::fs::remove_file(&bad).unwrap();
        std::fs::write(instances_dir(&dir).join(".web-x.json.1.2.tmp"), "{").unwrap();
        assert_eq!(read_records(&dir).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_are_unique_and_name_the_service() {
        let ids: HashSet<String> = (0..1000).map(|_| new_instance_id("web", "t")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with("web-") && id.len() == "web-".len() + 12));
    }
}
