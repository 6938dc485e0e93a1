//! A real Prometheus for the analysis tests: started on loopback with a throw-away data
//! directory, scraping every second the targets the test keeps in a file (file-based service
//! discovery), stopped by its pid.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "install it with `apt-get install -y prometheus` (as root; ./scripts/test.sh --setup does it), \
                       or set IMMUT_PROMETHEUS to the path of a prometheus binary";

/// The Prometheus binary: `IMMUT_PROMETHEUS` when set, else `prometheus` on the `PATH`. The
/// error says how to install it.
pub fn prometheus_binary() -> Result<PathBuf, String> {
    binary_from(std::env::var_os("IMMUT_PROMETHEUS"), std::env::var_os("PATH"))
}

fn binary_from(chosen: Option<std::ffi::OsString>, search: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    if let Some(path) = chosen {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("IMMUT_PROMETHEUS is {}, which is not a file; {INSTALL}", path.display()))
        };
    }
    search
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("prometheus is not installed (not on the PATH); {INSTALL}"))
}

/// A Prometheus server on 127.0.0.1, started by [`start_prometheus`]. It scrapes, every
/// second, the targets of [`Prometheus::set_targets`]. Dropping it stops it by its pid and
/// removes its data directory; a watchdog shell also stops it when the test process ends
/// without dropping it.
#[derive(Debug)]
pub struct Prometheus {
    url: String,
    version: String,
    dir: PathBuf,
    server: Child,
    watchdog: Child,
}

/// Starts Prometheus on a free port of 127.0.0.1 with a fresh data directory, a scrape
/// interval of 1 s and an empty targets file (re-read every second), prints its version, and
/// waits (up to 60 s) until `/-/ready` answers. A missing binary is an error that names the
/// install step.
pub fn start_prometheus() -> Result<Prometheus, String> {
    let binary = prometheus_binary()?;
    let version = Command::new(&binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL}", binary.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("unknown version").to_owned();
    eprintln!("test tools: {version} ({})", binary.display());
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "immut-prometheus-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let targets = dir.join("targets.json");
    write_atomically(&targets, "[]")?;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: immut\n    file_sd_configs:\n      - files: [{targets:?}]\n        \
         refresh_interval: 1s\n",
        targets = targets.display().to_string()
    );
    write_atomically(&dir.join("prometheus.yml"), &config)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
        .port();
    let log = std::fs::File::create(dir.join("prometheus.log")).map_err(|e| format!("cannot create its log: {e}"))?;
    let mut server = Command::new(&binary)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("cannot share its log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}; {INSTALL}", binary.display()))?;
    // Stops Prometheus, by its pid, once this process is gone (or Prometheus exits on its own).
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {server} 2>/dev/null; do sleep 0.5; done; kill {server} 2>/dev/null",
        parent = std::process::id(),
        server = server.id()
    );
    let watchdog = match Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn() {
        Ok(w) => w,
        Err(e) => {
            let _ = server.kill();
            let _ = server.wait();
            return Err(format!("cannot start the shell that watches prometheus: {e}"));
        }
    };
    let mut prometheus = Prometheus { url: format!("http://127.0.0.1:{port}"), version, dir, server, watchdog };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/-/ready").is_none_or(|status| status != 200) {
        if let Ok(Some(status)) = prometheus.server.try_wait() {
            return Err(format!("prometheus exited ({status}) at start: {}", prometheus.log_tail()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "prometheus was not ready on {} within 60 s: {}",
                prometheus.url,
                prometheus.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(prometheus)
}

/// The status code of `GET path`, if anything answered.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Writes `text` to `path` by a rename, so that a reader (Prometheus's file watcher) never
/// sees half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, path).map_err(|e| format!("cannot rename {} into place: {e}", partial.display()))
}

impl Prometheus {
    /// Its URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first line of `prometheus --version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// Replaces the scraped targets (`host:port` each) with `targets`; Prometheus picks them up
    /// within a second or two.
    pub fn set_targets(&self, targets: &[String]) -> Result<(), String> {
        let json = serde_json::json!([{ "targets": targets }]).to_string();
        write_atomically(&self.dir.join("targets.json"), &json)
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_starts_ready_and_stops_by_its_pid_when_dropped() {
        let prometheus = start_prometheus().unwrap_or_else(|e| panic!("{e}"));
        assert!(prometheus.version().starts_with("prometheus, version"), "{}", prometheus.version());
        let port = prometheus.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
        assert_eq!(get(port, "/-/ready"), Some(200));
        prometheus.set_targets(&["127.0.0.1:1".to_owned()]).unwrap();
        let (pid, dir) = (prometheus.pid(), prometheus.dir.clone());
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(prometheus);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "prometheus (pid {pid}) outlived its handle");
        assert!(!dir.exists(), "its data directory {} is left", dir.display());
    }

    #[test]
    fn a_missing_binary_names_the_install_step() {
        let nowhere = std::env::temp_dir().join("immut-no-such-dir");
        let e = binary_from(None, Some(nowhere.clone().into_os_string())).unwrap_err();
        assert!(e.contains("not installed") && e.contains("apt-get install -y prometheus"), "{e}");
        let e = binary_from(Some(nowhere.join("prometheus").into_os_string()), None).unwrap_err();
        assert!(e.contains("IMMUT_PROMETHEUS") && e.contains("apt-get install -y prometheus"), "{e}");
        let found = binary_from(None, Some("/usr/bin:/bin".into()));
        assert_eq!(found, Ok(PathBuf::from("/usr/bin/prometheus")), "the machine's own package");
    }
}
