//! Shared support for the tests that run `immut` on the local provider: a directory with a
//! spec written per case, the command run in it, and the ground truth of what runs, read from
//! `/proc` rather than from the state files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use immut::engine::Event;

pub const BIN: &str = env!("CARGO_BIN_EXE_immut");

/// A spec on the local provider: the sample service built into `immut`, blue/green or
/// rolling, with short timings. `{service}`, `{desired}` and `{strategy}` are filled in.
const SPEC: &str = r#"service = "{service}"
desired = {desired}
state = "state"

[provider]
kind = "local"

[provider.local]
state_dir = "local"
drain_timeout = "5s"

[artifact]
name = "sample"
version = "1.0.0"
image = "builtin:sample"

[baseline]
name = "sample"
version = "1.0.0"

[strategy]
{strategy}

[health]
http = "/healthz"
timeout = "500ms"

[rollout]
min_ready = "500ms"
poll_interval = "100ms"
progress_deadline = "20s"
"#;

/// The `[strategy]` table of a strategy by name (`blue-green` or `rolling`).
pub fn strategy(name: &str) -> &'static str {
    match name {
        "blue-green" => "kind = \"blue_green\"",
        "rolling" => "kind = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0",
        other => panic!("no strategy {other}"),
    }
}

/// A directory of its own with a spec in it; everything launched from it is killed by pid
/// when dropped, whatever happened to the test.
pub struct Case {
    pub dir: PathBuf,
    pub service: String,
}

impl Case {
    pub fn new(tag: &str, service: &str, desired: usize, strategy_name: &str) -> Case {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Under /tmp: the balancer's Unix socket path must stay short.
        let dir = std::env::temp_dir().join(format!(
            "immut-cli-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = SPEC
            .replace("{service}", service)
            .replace("{desired}", &desired.to_string())
            .replace("{strategy}", strategy(strategy_name));
        std::fs::write(dir.join("immut.toml"), spec).unwrap();
        Case { dir, service: service.to_owned() }
    }

    /// The local provider's state directory.
    pub fn local_dir(&self) -> PathBuf {
        self.dir.join("local")
    }

    /// The spec's state directory (journal, lease, ledger).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    /// Runs `immut` with `args` in the case's directory.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("immut runs")
    }

    /// The journal records of the service.
    pub fn journal(&self) -> Vec<immut::journal::JournalRecord> {
        use immut::journal::Journal;
        immut::journal::FileJournal::open(self.state_dir().join("journal"))
            .unwrap()
            .read(&self.service)
            .unwrap()
            .records
    }

    /// A provider on the case's local state directory.
    pub fn provider(&self) -> immut::local::LocalProvider {
        immut::local::LocalProvider::builder().state_dir(self.local_dir()).build().unwrap()
    }

    /// The service's balancer (the running one, found by its state; started from `immut`
    /// when none runs).
    pub async fn balancer(&self) -> immut::local::LocalBalancer {
        self.provider()
            .balancer(&self.service)
            .executable(BIN)
            .drain_timeout(Duration::from_secs(5))
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let dir = self.local_dir();
        for pid in processes_from(&dir).into_values().flatten().chain(balancers_from(&dir)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The engine's events among the JSON lines a command printed. A SIGKILL can cut the last
/// line short, and other lines (errors, notes) are no events: only whole events count.
pub fn events(output: &Output) -> Vec<Event> {
    stdout(output).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn finished(output: &Output) -> Option<immut::Outcome> {
    events(output).into_iter().find_map(|e| match e {
        Event::Finished { outcome } => Some(outcome),
        _ => None,
    })
}

/// The instance records in a local state directory.
pub fn records(local_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(local_dir.join("instances")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect()
}

/// Polls `probe` until it answers `Some`, for at most `timeout`; fails naming `what`.
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

/// Ground truth: the live processes launched from `local_dir` (they carry it in their
/// environment), by instance id.
pub fn processes_from(local_dir: &Path) -> BTreeMap<String, Vec<i32>> {
    let wanted = std::fs::canonicalize(local_dir).unwrap_or_else(|_| local_dir.to_owned()).display().to_string();
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pid in pids() {
        if zombie(pid) {
            continue;
        }
        let env = environ(pid);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if get(immut::local::env::STATE_DIR).as_deref() == Some(wanted.as_str())
            && let Some(id) = get(immut::local::env::INSTANCE_ID)
        {
            found.entry(id).or_default().push(pid);
        }
    }
    found
}

/// Ground truth: the live balancer processes of `local_dir` (any service).
pub fn balancers_from(local_dir: &Path) -> Vec<i32> {
    let wanted = std::fs::canonicalize(local_dir).unwrap_or_else(|_| local_dir.to_owned()).display().to_string();
    pids()
        .into_iter()
        .filter(|&pid| !zombie(pid))
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.get(1).is_some_and(|a| a == immut::local::BALANCER_FLAG) && args.contains(&wanted)
        })
        .collect()
}

/// Clients sending `GET /` through a balancer until stopped, half of them on keep-alive
/// connections, half on a new connection per request. Every error a client sees counts.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub sent: u64,
    pub failed: u64,
    pub by_version: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

impl Seen {
    pub fn served_by(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }
}

/// Live counts, for waiting on traffic to move.
#[derive(Debug, Default)]
pub struct Live(std::sync::Mutex<BTreeMap<String, u64>>);

impl Live {
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
                                    seen.errors.push(format!(
                                        "{} client: {e:?}",
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
