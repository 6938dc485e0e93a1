//! Operating-system calls: processes, signals, ports and the state directory, plus the one
//! function that maps their errors to [`immut_core::Error`].

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use immut_core::{Error, ErrorKind, Result};
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

/// What the provider remembers of one instance, one JSON file each.
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
    #[serde(default)]
    pub terminated: bool,
}

pub(crate) fn instances_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("instances")
}

pub(crate) fn logs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs")
}

/// Creates the state directory and proves it writable.
pub(crate) fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    for dir in [instances_dir(state_dir), logs_dir(state_dir)] {
        std::fs::create_dir_all(&dir).map_err(|e| map_io(e, "create state directory", &dir).with_field("state_dir"))?;
    }
    let probe = state_dir.join(".write-test");
    std::fs::write(&probe, b"ok")
        .map_err(|e| map_io(e, "write to state directory", state_dir).with_field("state_dir"))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes a record atomically (temporary file, fsync, rename).
pub(crate) fn write_record(state_dir: &Path, record: &Record) -> Result<()> {
    use std::io::Write;
    let dir = instances_dir(state_dir);
    let path = dir.join(format!("{}.json", record.id));
    let tmp = dir.join(format!(".{}.tmp", record.id));
    let body = serde_json::to_vec_pretty(record).expect("records serialize");
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| map_io(e, "write instance record", &path).with_field("state_dir"))
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
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable instance record"),
        }
    }
    records.sort_by(|a, b| (a.launched_at_ms, &a.id).cmp(&(b.launched_at_ms, &b.id)));
    Ok(records)
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

/// SIGTERM, then SIGKILL after `timeout`; returns once the process is gone.
pub(crate) async fn stop(pid: i32, start_ticks: Option<u64>, timeout: Duration) {
    if !is_alive(pid, start_ticks) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + timeout;
    while is_alive(pid, start_ticks) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pid, "process ignored SIGTERM; sending SIGKILL");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while is_alive(pid, start_ticks) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Processes (other than this one) that run one of `images`, have `PORT` in their environment
/// and no `IMMUT_RELEASE`: what an instance started by hand from a managed artifact looks like.
/// Instances of any local provider (another state directory too) carry `IMMUT_RELEASE`.
pub(crate) fn processes_running(images: &std::collections::HashSet<PathBuf>) -> Vec<(i32, PathBuf, Option<u16>)> {
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
    fn a_port_in_use_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = PortPolicy::Fixed(port).reserve(1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&format!("127.0.0.1:{port} is not available")), "{e}");
    }
}
