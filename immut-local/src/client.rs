//! Operating-system calls: processes, signals, ports and the state directory, plus the one
//! function that maps their errors to [`immut_core::Error`].

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use immut_core::{Error, ErrorKind, InstanceId, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// What the provider remembers of one instance, one JSON file each. The file lives while the
/// instance may still run: [`crate::LocalProvider::terminate`] deletes it once the process is
/// gone, and `describe` deletes what a terminate that died half-way left behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: String,
    pub pid: i32,
    /// The process start time in clock ticks since boot: with the pid, the process identity.
    pub start_ticks: Option<u64>,
    pub port: u16,
    pub image: PathBuf,
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

/// Creates the state directory and proves it writable.
pub(crate) fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    for dir in [instances_dir(state_dir), logs_dir(state_dir), images_dir(state_dir)] {
        std::fs::create_dir_all(&dir).map_err(|e| map_io(e, "create state directory", &dir).with_field("state_dir"))?;
    }
    let probe = state_dir.join(".write-test");
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

fn record_path(state_dir: &Path, id: &str) -> PathBuf {
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

/// Every record in the state directory; unreadable files are skipped with a warning.
pub(crate) fn read_records(state_dir: &Path) -> Result<Vec<Record>> {
    let dir = instances_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(map_io(e, "read state directory", &dir)),
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Record>(&b)) {
            Ok(Ok(record)) => records.push(record),
            Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "skipping a malformed instance record"),
            // Its instance was terminated between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable instance record"),
        }
    }
    records.sort_by(|a, b| (a.launched_at_ms, &a.id).cmp(&(b.launched_at_ms, &b.id)));
    Ok(records)
}

/// One entry of the images index: a service ran this executable.
#[derive(Debug, Serialize, Deserialize)]
struct ImageEntry {
    service: String,
    image: PathBuf,
}

/// Records that `service` runs `image`, once: one small file per (service, executable), so the
/// index grows with the artifacts, not with the instances.
pub(crate) fn remember_image(state_dir: &Path, service: &str, image: &Path) -> Result<()> {
    let mut hasher = Sha256::new();
    hasher.update(service.as_bytes());
    hasher.update([0]);
    hasher.update(image.as_os_str().as_encoded_bytes());
    let key: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let path = images_dir(state_dir).join(format!("{key}.json"));
    if path.exists() {
        return Ok(());
    }
    let body = serde_json::to_vec(&ImageEntry { service: service.to_owned(), image: image.to_owned() })
        .expect("image entries serialize");
    write_atomic(&path, &body).map_err(|e| map_io(e, "write the images index", &path).with_field("state_dir"))
}

/// The executables that instances of `service` (of any service when `None`) ran.
pub(crate) fn remembered_images(state_dir: &Path, service: Option<&str>) -> HashSet<PathBuf> {
    let Ok(entries) = std::fs::read_dir(images_dir(state_dir)) else { return HashSet::new() };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<ImageEntry>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|e| service.is_none_or(|s| s == e.service))
        .map(|e| e.image)
        .collect()
}

/// The `sha256:<hex>` digest of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| map_io(e, "open artifact", path).with_field("artifact.image"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| map_io(e, "read artifact", path).with_field("artifact.image"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
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

pub(crate) use immut_core::process::{is_alive, process_start};

/// The executable a process runs, as the kernel reports it.
pub(crate) fn process_image(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string())
}

/// A process as this provider identifies it: its pid and its start time.
pub(crate) type ProcessId = (i32, Option<u64>);

/// SIGTERM, then SIGKILL after `timeout`, to every process of `targets`;
/// returns once all are gone. The liveness checks read `/proc`, so each round of them runs on
/// the blocking pool, one hop for all the processes.
pub(crate) async fn stop_all(targets: Vec<ProcessId>, timeout: Duration) {
    let alive_of = |targets: Vec<ProcessId>| async move {
        let checked = targets.clone();
        // A check that could not run proves nothing: the processes count as alive, since
        // the caller deletes the records of what this reports gone.
        tokio::task::spawn_blocking(move || checked.into_iter().filter(|&(pid, start)| is_alive(pid, start)).collect())
            .await
            .unwrap_or(targets)
    };
    let mut alive: Vec<ProcessId> = alive_of(targets).await;
    for &(pid, _) in &alive {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    while !alive.is_empty() {
        if !killed && tokio::time::Instant::now() >= deadline {
            for &(pid, _) in &alive {
                tracing::warn!(pid, "process ignored SIGTERM; sending SIGKILL");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(if killed { 10 } else { 20 })).await;
        alive = alive_of(alive).await;
    }
}

/// Processes (other than this one) that run one of `images`, have `PORT` in their environment
/// and no `IMMUT_RELEASE`: what an instance started by hand from a managed artifact looks like.
/// Instances of any local provider (another state directory too) carry `IMMUT_RELEASE`.
/// It scans `/proc`: call it from blocking code only.
pub(crate) fn processes_running(images: &HashSet<PathBuf>) -> Vec<(i32, PathBuf, Option<u16>)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me || process_start(pid).is_none() {
            continue;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { continue };
        if !images.contains(&exe) {
            continue;
        }
        let env = process_env(pid);
        let port = env.iter().find_map(|(k, v)| (k == "PORT").then(|| v.parse().ok()).flatten());
        let launched_by_immut = env.iter().any(|(k, _)| k == crate::provider::env::RELEASE);
        if port.is_some() && !launched_by_immut {
            found.push((pid, exe, port));
        }
    }
    found.sort();
    found
}

/// The environment a process was started with.
fn process_env(pid: i32) -> Vec<(String, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|b| *b == 0)
        .filter_map(|var| std::str::from_utf8(var).ok()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// The `PORT` a process was started with.
pub(crate) fn process_port(pid: i32) -> Option<u16> {
    process_env(pid).into_iter().find_map(|(k, v)| (k == "PORT").then(|| v.parse().ok()).flatten())
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

    /// Reserves `count` free ports on 127.0.0.1. The listeners are returned so the ports stay
    /// taken until the processes are about to start.
    pub(crate) fn reserve(&self, count: usize) -> Result<Vec<TcpListener>> {
        let bind = |port: u16| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)));
        match *self {
            PortPolicy::Auto => {
                (0..count).map(|_| bind(0).map_err(|e| map_io(e, "reserve a port", Path::new("127.0.0.1:0")))).collect()
            }
            PortPolicy::Fixed(port) => {
                if count > 1 {
                    return Err(Error::invalid(
                        "params.port",
                        format!("the fixed port {port} can serve one instance, not {count}; use port=auto or a range"),
                    ));
                }
                let listener = bind(port).map_err(|e| {
                    Error::invalid(
                        "params.port",
                        format!("127.0.0.1:{port} is not available ({e}); stop what listens there or use port=auto"),
                    )
                    .with_provider("local")
                    .with_source(e)
                })?;
                Ok(vec![listener])
            }
            PortPolicy::Range(lo, hi) => {
                let taken: Vec<TcpListener> = (lo..=hi).filter_map(|p| bind(p).ok()).take(count).collect();
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
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
    }

    #[test]
    fn a_mapped_error_keeps_its_source_ids_and_retryable_flag() {
        let record = Record {
            id: "web-1".into(),
            pid: 1,
            start_ticks: None,
            port: 1,
            image: PathBuf::from("/bin/true"),
            labels: BTreeMap::new(),
            launched_at_ms: 0,
            terminated: false,
            gone_at_ms: None,
        };
        let nowhere = std::env::temp_dir().join(format!("immut-no-state-dir-{}", std::process::id()));
        let e = write_record(&nowhere, &record).unwrap_err();
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
    fn a_port_in_use_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = PortPolicy::Fixed(port).reserve(1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&format!("127.0.0.1:{port} is not available")), "{e}");
    }
}
