//! The local balancer: a process of its own per service that outlives every deployer, like a
//! cloud load balancer, and the handle a deployer steers it with.

mod control;
pub(crate) mod daemon;
mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use immut_core::{Error, ErrorKind, Instance, InstanceId, Result, Traffic};
use serde::{Deserialize, Serialize};

use crate::builder::BalancerBuilder;
use crate::client::{self, map_io};
use control::{Op, Reply, Request};

pub(crate) use control::scan_state;

/// What a balancer proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, request by request (the default): draining a backend never closes a client's
    /// connection, and a request no backend saw is retried on another.
    Http,
    /// Raw TCP, connection by connection: a drain waits for the detached backends'
    /// connections to close (or the drain timeout).
    Tcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(format!("{other:?} is not a protocol; use http or tcp")),
        }
    }
}

/// What a running balancer process reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerStatus {
    /// The service it balances.
    pub service: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// What it proxies.
    pub protocol: Protocol,
    /// Its process.
    pub pid: i32,
    /// The serving set, in order.
    pub serving: Vec<(InstanceId, SocketAddr)>,
    /// Requests (HTTP) or connections (TCP) received since it started.
    pub requests: u64,
    /// Attempts that went to another backend because one refused or closed before answering.
    pub retried: u64,
    /// Requests it answered itself with an error (no backend, or none answered).
    pub failed: u64,
    /// Client connections open now.
    pub open_connections: u64,
}

/// What the state directory says of a service's balancer, read without starting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalancerInfo {
    /// The service it balances.
    pub service: String,
    /// Where it listens, and will listen again when restarted.
    pub address: SocketAddr,
    /// What it proxies.
    pub protocol: Protocol,
    /// Its process, while it runs.
    pub pid: Option<i32>,
    /// Whether that process runs (checked by pid and start time).
    pub running: bool,
    /// The serving set it persisted last.
    pub serving: Vec<InstanceId>,
    /// Its log.
    pub log: PathBuf,
}

/// The handle on a service's balancer process: the [`Traffic`] side of the local provider.
///
/// [`LocalProvider::balancer`](crate::LocalProvider::balancer) builds it. Building finds the
/// balancer process of the service in the state directory, or starts it: the same executable
/// (`current_exe()` by default) started again with a hidden flag, in its own process group,
/// with its output in `<state_dir>/balancers/<service>/balancer.log`. It keeps its address in
/// that directory, so a resumed or a second deployer finds the same balancer on the same
/// address, and the service keeps answering after the deployer exits. It is steered through a
/// Unix socket in that directory (mode 0600); each request names the service and a balancer
/// refuses requests for another. [`LocalBalancer::stop`] stops it.
///
/// Attach and detach change the serving set atomically for new requests, and persist it
/// before they return. A detach returns once the detached instances' in-flight requests have
/// finished (or the drain timeout passed), so the engine terminates an instance only after it
/// has drained. A balancer that died is started again on the next call, with its serving set.
#[derive(Debug, Clone)]
pub struct LocalBalancer {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    service: String,
    state_dir: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    /// Keeps `/proc/self/fd/N` valid when the socket is reached through it.
    _dir_fd: Option<std::fs::File>,
    address: SocketAddr,
    drain_timeout: Duration,
    protocol: Protocol,
    listen: Option<SocketAddr>,
    executable: PathBuf,
    process: Mutex<(i32, Option<u64>)>,
    /// Set by [`LocalBalancer::stop`]: no call starts it again.
    stopped: std::sync::atomic::AtomicBool,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalBalancer {
    /// A builder (set at least the state directory and the service).
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }

    pub(crate) async fn connect(builder: BalancerBuilder) -> Result<LocalBalancer> {
        client::check_platform()?;
        let service = builder.service.clone().ok_or_else(|| {
            Error::invalid("service", "is required; call .service(..) or LocalProvider::balancer(service)")
        })?;
        immut_core::model::validate_name("service", &service)?;
        let state_dir = builder.state_dir.clone().ok_or_else(|| {
            Error::invalid("state_dir", "is required; call .state_dir(..) or LocalProvider::balancer(..)")
        })?;
        if builder.drain_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid("drain_timeout", "must be at most an hour"));
        }
        let executable = match builder.executable.clone() {
            Some(exe) => exe,
            None => std::env::current_exe().map_err(|e| {
                Error::invalid("executable", format!("cannot find this program's executable: {e}; set .executable(..)"))
                    .with_source(e)
            })?,
        };
        let (dir, state_dir) = client::blocking("start the balancer", {
            let (state_dir, service) = (state_dir.clone(), service.clone());
            move || {
                std::fs::create_dir_all(&state_dir)
                    .map_err(|e| map_io(e, "create state directory", &state_dir).with_field("state_dir"))?;
                let state_dir = std::fs::canonicalize(&state_dir)
                    .map_err(|e| map_io(e, "resolve state directory", &state_dir).with_field("state_dir"))?;
                let dir = control::dir(&state_dir, &service);
                control::prepare_dir(&dir)?;
                // A state that cannot be read stops here, before anything is started.
                control::read_state(&dir)?;
                Ok((dir, state_dir))
            }
        })
        .await?;
        let socket_path = dir.join(control::SOCKET);
        let (socket, dir_fd) = if socket_path.as_os_str().len() < 100 {
            (socket_path, None)
        } else {
            // Too long for a socket address: reach it through a descriptor of its directory.
            use std::os::fd::AsRawFd;
            let fd = std::fs::File::open(&dir).map_err(|e| map_io(e, "open the balancer directory", &dir))?;
            (PathBuf::from(format!("/proc/self/fd/{}/{}", fd.as_raw_fd(), control::SOCKET)), Some(fd))
        };
        let mut handle = Handle {
            service,
            state_dir,
            dir,
            socket,
            _dir_fd: dir_fd,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout: builder.drain_timeout,
            protocol: builder.protocol,
            listen: builder.listen,
            executable,
            process: Mutex::new((0, None)),
            stopped: std::sync::atomic::AtomicBool::new(false),
        };
        let status = handle.ensure_running().await?;
        if status.protocol != handle.protocol {
            return Err(Error::invalid(
                "protocol",
                format!(
                    "the balancer of {} runs as {}, not {}; stop it (`immut stop-balancer`) and delete {} to change it",
                    handle.service,
                    status.protocol,
                    handle.protocol,
                    handle.dir.join(control::STATE).display()
                ),
            ));
        }
        if let Some(listen) = handle.listen
            && listen.port() != 0
            && listen != status.address
        {
            return Err(Error::invalid(
                "listen",
                format!(
                    "the balancer of {} listens on {}, not {listen}; stop it and delete {} to move it",
                    handle.service,
                    status.address,
                    handle.dir.join(control::STATE).display()
                ),
            ));
        }
        handle.address = status.address;
        Ok(LocalBalancer { inner: Arc::new(handle) })
    }

    /// Where it listens: the same address for the life of the state directory.
    pub fn addr(&self) -> SocketAddr {
        self.inner.address
    }

    /// The service it balances.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The balancer process (as of the last call that reached it).
    pub fn pid(&self) -> i32 {
        self.inner.process.lock().expect("balancer lock poisoned").0
    }

    /// The longest a detach or switch waits for in-flight requests. A deployer's progress
    /// deadline must be longer, or a drain could outlast it.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.inner.dir.join(control::LOG)
    }

    /// What the balancer process reports about itself.
    pub async fn status(&self) -> Result<BalancerStatus> {
        let reply = self.inner.call(Op::Status, CALL_TIMEOUT).await?;
        reply.status.ok_or_else(|| unavailable("the balancer sent no status"))
    }

    /// Stops the balancer process and waits until it is gone. It lets its client connections
    /// finish their requests first (for at most 5 s). Calls through this handle (and its
    /// clones) fail afterwards instead of starting it again; build a new handle for that.
    pub async fn stop(&self) -> Result<()> {
        self.inner.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let (pid, start) = *self.inner.process.lock().expect("balancer lock poisoned");
        stop_process(&self.inner.dir, &self.inner.socket, &self.inner.service, pid, start).await
    }

    /// What the state directory says of `service`'s balancer, without starting it; `None`
    /// when it never ran there.
    pub fn find(state_dir: &Path, service: &str) -> Result<Option<BalancerInfo>> {
        immut_core::model::validate_name("service", service)?;
        let dir = control::dir(state_dir, service);
        Ok(control::read_state(&dir)?.map(|state| info(&dir, state)))
    }

    /// Every balancer of the state directory, as [`LocalBalancer::find`] reads them.
    pub fn find_all(state_dir: &Path) -> Result<Vec<BalancerInfo>> {
        let root = state_dir.join("balancers");
        let Ok(entries) = std::fs::read_dir(&root) else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(state) = control::read_state(&dir)? {
                found.push(info(&dir, state));
            }
        }
        found.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(found)
    }

    /// Stops `service`'s balancer in `state_dir` if it runs (asking it first, then by signal,
    /// by pid and start time); returns the pid it stopped.
    pub async fn stop_service(state_dir: &Path, service: &str) -> Result<Option<i32>> {
        let Some(info) = LocalBalancer::find(state_dir, service)? else { return Ok(None) };
        if !info.running {
            return Ok(None);
        }
        let dir = control::dir(state_dir, service);
        let state = control::read_state(&dir)?.expect("found above");
        let pid = state.pid.expect("a running balancer has a pid");
        stop_process(&dir, &dir.join(control::SOCKET), service, pid, state.start_ticks).await?;
        Ok(Some(pid))
    }

    /// Checks the instances are live managed processes with an address.
    async fn backends_for(&self, instances: &[Instance]) -> Result<Vec<(InstanceId, SocketAddr)>> {
        let dir = self.inner.state_dir.clone();
        let live: Vec<String> = client::blocking("attach", move || {
            Ok(client::read_records(&dir)?
                .into_iter()
                .filter(|r| !r.terminated && r.target().is_some_and(|t| client::leader_alive(&t)))
                .map(|r| r.id)
                .collect())
        })
        .await?;
        let mut unknown = Vec::new();
        let mut backends = Vec::new();
        for instance in instances {
            let known = live.iter().any(|id| id == instance.id.as_str());
            let addr = instance.address.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
            match (known, addr) {
                (true, Some(addr)) => backends.push((instance.id.clone(), addr)),
                _ => unknown.push(instance.id.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "cannot attach instances that are not live local processes with an address",
            )
            .with_provider("local")
            .with_operation("attach")
            .with_ids(unknown));
        }
        Ok(backends)
    }

    fn drain_ms(&self) -> u64 {
        self.inner.drain_timeout.as_millis() as u64
    }

    /// Long enough for the drain and the answer.
    fn drain_call_timeout(&self) -> Duration {
        self.inner.drain_timeout + CALL_TIMEOUT
    }
}

fn info(dir: &Path, state: control::State) -> BalancerInfo {
    let running = state.pid.is_some_and(|pid| immut_core::process::is_alive(pid, state.start_ticks));
    BalancerInfo {
        service: state.service,
        address: state.address,
        protocol: state.protocol,
        pid: state.pid.filter(|_| running),
        running,
        serving: state.serving.into_iter().map(|(id, _)| id).collect(),
        log: dir.join(control::LOG),
    }
}

fn unavailable(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, message).with_provider("local").with_operation("balancer")
}

/// Asks a balancer process to stop, then waits until it is gone; signals it (by pid and start
/// time) if it does not answer or does not go.
async fn stop_process(dir: &Path, socket: &Path, service: &str, pid: i32, start: Option<u64>) -> Result<()> {
    let request = Request { service: service.to_owned(), op: Op::Stop };
    let asked = control::call(socket, &request, CALL_TIMEOUT).await.is_ok_and(|r| r.ok);
    let alive = || pid > 0 && immut_core::process::is_alive(pid, start);
    if !asked && alive() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive() {
        if tokio::time::Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if alive() {
                return Err(unavailable(format!("the balancer of {service} (pid {pid}) does not stop")));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(service, pid, dir = %dir.display(), "balancer stopped");
    Ok(())
}

impl Handle {
    fn request(&self, op: Op) -> Request {
        Request { service: self.service.clone(), op }
    }

    /// One call; a balancer that is not running is started again (with its serving set) and
    /// asked once more. Every operation is idempotent, so asking twice is safe.
    async fn call(&self, op: Op, timeout: Duration) -> Result<Reply> {
        let reply = match control::call(&self.socket, &self.request(op.clone()), timeout).await {
            Ok(reply) => reply,
            Err(e) if gone(&e) && !self.stopped.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::warn!(service = %self.service, error = %e, "the balancer is not running; starting it again");
                self.ensure_running().await?;
                control::call(&self.socket, &self.request(op), timeout)
                    .await
                    .map_err(|e| unavailable(format!("the balancer of {} did not answer: {e}", self.service)))?
            }
            Err(e) => return Err(unavailable(format!("the balancer of {} did not answer: {e}", self.service))),
        };
        if reply.ok {
            Ok(reply)
        } else {
            let message = reply.error.unwrap_or_else(|| "the balancer refused the request".into());
            Err(Error::new(ErrorKind::Unavailable, message).with_provider("local").with_ids(reply.ids))
        }
    }

    async fn status(&self) -> std::io::Result<control::Reply> {
        control::call(&self.socket, &self.request(Op::Status), CALL_TIMEOUT).await
    }

    /// The balancer's status, starting it first if it does not answer. Only one starter at a
    /// time (a lock in its directory), so two deployers never start two balancers.
    async fn ensure_running(&self) -> Result<BalancerStatus> {
        if let Ok(Reply { ok: true, status: Some(status), .. }) = self.status().await {
            *self.process.lock().expect("balancer lock poisoned") =
                (status.pid, immut_core::process::process_start(status.pid));
            return Ok(status);
        }
        let lock_path = self.dir.join(control::START_LOCK);
        let _starting = client::blocking("start the balancer", move || client::lock_file(&lock_path)).await?;
        if let Ok(Reply { ok: true, status: Some(status), .. }) = self.status().await {
            *self.process.lock().expect("balancer lock poisoned") =
                (status.pid, immut_core::process::process_start(status.pid));
            return Ok(status);
        }
        let log_path = self.dir.join(control::LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| map_io(e, "open the balancer log", &log_path))?;
        let log_err = log.try_clone().map_err(|e| map_io(e, "open the balancer log", &log_path))?;
        let mut command = tokio::process::Command::new(&self.executable);
        command
            .arg(daemon::FLAG)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--service", &self.service, "--protocol", &self.protocol.to_string()])
            .current_dir(&self.dir)
            .env(crate::provider::env::BALANCER, &self.service)
            .env_remove(crate::provider::env::INSTANCE_ID)
            .env_remove(crate::provider::env::RELEASE)
            .env_remove(crate::provider::env::RECORD)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(listen) = self.listen {
            command.args(["--listen", &listen.to_string()]);
        }
        let mut child =
            command.spawn().map_err(|e| map_io(e, "start the balancer", &self.executable).with_field("executable"))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Reply { ok: true, status: Some(status), .. }) = self.status().await {
                *self.process.lock().expect("balancer lock poisoned") =
                    (status.pid, immut_core::process::process_start(status.pid));
                tracing::info!(service = %self.service, pid = status.pid, address = %status.address, "balancer started");
                return Ok(status);
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                if exited.is_none() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                let tail = client::log_tail(&log_path, 5).join("\n  | ");
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the balancer of {} did not start ({}): {} must call immut_local::serve_if_requested() first thing in main (or set BalancerBuilder::executable); the last lines of {}:\n  | {tail}",
                        self.service,
                        exited.map_or("no answer within 10 s".to_owned(), |s| s.to_string()),
                        self.executable.display(),
                        log_path.display()
                    ),
                )
                .with_provider("local")
                .with_operation("start the balancer"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The balancer process is not there: no socket, or nobody listening on it.
fn gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

#[async_trait]
impl Traffic for LocalBalancer {
    fn drain_timeout(&self) -> Option<Duration> {
        Some(LocalBalancer::drain_timeout(self))
    }

    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let status = self.status().await?;
        Ok(status.serving.into_iter().map(|(id, _)| id).collect())
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        let backends = self.backends_for(instances).await?;
        self.inner.call(Op::Attach { backends }, CALL_TIMEOUT).await?;
        Ok(())
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let op = Op::Detach { ids: ids.to_vec(), drain_ms: self.drain_ms() };
        self.inner.call(op, self.drain_call_timeout()).await?;
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let backends = self.backends_for(attach).await?;
        let op = Op::Switch { attach: backends, detach: detach.to_vec(), drain_ms: self.drain_ms() };
        self.inner.call(op, self.drain_call_timeout()).await?;
        Ok(())
    }
}

impl LocalBalancer {
    /// Asks a running balancer to write its state file again from memory (what a repair does
    /// after moving a corrupt one aside). `false` when no balancer of `service` runs.
    pub(crate) async fn persist_running(state_dir: &Path, service: &str) -> Result<bool> {
        let socket = control::dir(state_dir, service).join(control::SOCKET);
        let request = Request { service: service.to_owned(), op: Op::Persist };
        match control::call(&socket, &request, CALL_TIMEOUT).await {
            Ok(reply) if reply.ok => Ok(true),
            Ok(reply) => Err(unavailable(reply.error.unwrap_or_default())),
            Err(_) => Ok(false),
        }
    }
}
