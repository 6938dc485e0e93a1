//! Tools for tests that run real processes on the local provider, shared by immut-local's own
//! tests and by those of programs built on it (the `immut` command line's): the ground truth of
//! what runs, read from `/proc` rather than from the state files; a killer of everything a
//! state directory launched; a polling wait; and an HTTP load generator that counts every error
//! a client sees. Behind the `test_tools` feature, which only dev-dependencies turn on.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The instance records in a local state directory (`instances/*.json`, without the hidden
/// files a write in progress leaves).
pub fn records(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect()
}

/// Polls `probe` until it answers `Some`, for at most `timeout`; panics naming `what` when it
/// never does. Tests wait for conditions this way, never with a sleep that stands in for one.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

fn environ(pid: i32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

fn zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_none_or(|(_, rest)| matches!(rest.split_whitespace().next(), Some("Z") | Some("X") | None))
}

fn canonical(state_dir: &Path) -> String {
    std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned()).display().to_string()
}

/// Ground truth, without the provider: the live processes launched from `state_dir` (they
/// carry it in their environment), by instance id. A process that nothing can see shows here.
pub fn processes_from(state_dir: &Path) -> BTreeMap<String, Vec<i32>> {
    let wanted = canonical(state_dir);
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pid in pids() {
        if zombie(pid) {
            continue;
        }
        let env = environ(pid);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if get(crate::env::STATE_DIR).as_deref() == Some(wanted.as_str())
            && let Some(id) = get(crate::env::INSTANCE_ID)
        {
            found.entry(id).or_default().push(pid);
        }
    }
    found
}

/// Ground truth: the live balancer processes of `state_dir` (any service).
pub fn balancers_from(state_dir: &Path) -> Vec<i32> {
    let wanted = canonical(state_dir);
    pids()
        .into_iter()
        .filter(|&pid| !zombie(pid))
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.get(1).is_some_and(|a| a == crate::BALANCER_FLAG) && args.contains(&wanted)
        })
        .collect()
}

/// SIGKILLs every live process launched from `state_dir`: instances (found by their
/// environment) and balancers (by their command line), not by the state files, so that a test
/// that failed half-way leaves nothing running.
pub fn kill_all_from(state_dir: &Path) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for pid in processes_from(state_dir).into_values().flatten().chain(balancers_from(state_dir)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Clients sending `GET /` through a balancer until stopped, half of them on keep-alive
/// connections, half on a new connection per request. Every error a client sees counts:
/// refused or reset connections, bodies cut short, non-2xx answers.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Requests sent.
    pub sent: u64,
    /// Requests that failed, whatever the way.
    pub failed: u64,
    /// Answers by the version the body names (its second word, as the sample service writes).
    pub by_version: BTreeMap<String, u64>,
    /// The first few errors of each client, with their causes.
    pub errors: Vec<String>,
}

impl Seen {
    /// How many answers came from `version`.
    pub fn served_by(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }
}

/// Live counts while the load runs, for waiting on traffic to move.
#[derive(Debug, Default)]
pub struct Live(std::sync::Mutex<BTreeMap<String, u64>>);

impl Live {
    /// How many answers came from `version` so far.
    pub fn served_by(&self, version: &str) -> u64 {
        self.0.lock().unwrap().get(version).copied().unwrap_or(0)
    }
}

impl Load {
    /// `clients` clients against `addr`; the first half keep their connections alive.
    pub fn start(addr: SocketAddr, clients: usize, live: Arc<Live>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|n| {
                let (stop, live) = (stop.clone(), live.clone());
                let keep_alive = n < clients / 2;
                tokio::spawn(async move {
                    let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10));
                    if !keep_alive {
                        builder = builder.pool_max_idle_per_host(0);
                    }
                    let http = builder.build().unwrap();
                    let mut seen = Seen::default();
                    while !stop.load(Ordering::Relaxed) {
                        let result = async {
                            http.get(format!("http://{addr}/")).send().await?.error_for_status()?.text().await
                        }
                        .await;
                        seen.sent += 1;
                        match result {
                            Ok(body) => {
                                let version = body.split_whitespace().nth(1).unwrap_or("?").to_owned();
                                *live.0.lock().unwrap().entry(version.clone()).or_default() += 1;
                                *seen.by_version.entry(version).or_default() += 1;
                            }
                            Err(e) => {
                                seen.failed += 1;
                                if seen.errors.len() < 5 {
                                    let mut text = e.to_string();
                                    let mut source = std::error::Error::source(&e);
                                    while let Some(s) = source {
                                        text.push_str(&format!(": {s}"));
                                        source = s.source();
                                    }
                                    seen.errors.push(format!(
                                        "{} client: {text}",
                                        if keep_alive { "keep-alive" } else { "new-connection" }
                                    ));
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    seen
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Seen::default();
        for w in self.workers {
            let seen = w.await.unwrap();
            total.sent += seen.sent;
            total.failed += seen.failed;
            for (v, n) in seen.by_version {
                *total.by_version.entry(v).or_default() += n;
            }
            total.errors.extend(seen.errors);
        }
        total
    }
}

/// Keeps `prometheus`'s targets the addresses of `service`'s live instances (file-based
/// discovery), as a service discovery would: checked every 200 ms until the task is aborted.
pub fn track_targets(
    provider: crate::LocalProvider,
    service: &str,
    prometheus: Arc<immut_core::test_tools::Prometheus>,
) -> tokio::task::JoinHandle<()> {
    use immut_core::ProviderExt;
    let service = service.to_owned();
    tokio::spawn(async move {
        let mut last = Vec::new();
        loop {
            if let Ok(fleet) = provider.describe_service(&service).await {
                let mut now: Vec<String> = fleet.into_iter().filter_map(|i| i.address).collect();
                now.sort();
                if now != last {
                    prometheus.set_targets(&now).expect("the targets file is writable");
                    last = now;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
