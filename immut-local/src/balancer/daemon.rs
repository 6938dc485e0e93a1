//! The balancer process of one service, started by [`super::LocalBalancer`] as
//! `<exe> --immut-balancer --state-dir DIR --service NAME --protocol http|tcp [--listen ADDR]`
//! in its own process group, with its output in `DIR/balancers/NAME/balancer.log`.
//!
//! It holds `daemon.lock` for its whole life (one balancer per service), restores the serving
//! set from `state.json`, listens where the state says it listened before, and takes requests
//! on `control.sock` (mode 0600, from its owner only). It stops on a `stop` request, on
//! SIGTERM or SIGINT, and when its control socket or directory is removed; it then lets its
//! client connections finish their requests, for at most 5 s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use immut_core::InstanceId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;

use super::control::{self, DAEMON_LOCK, MAX_LINE, Op, Reply, Request, SOCKET, State};
use super::proxy::{self, Backend, Open, Pool};
use super::{BalancerStatus, Protocol};
use crate::client;

/// The first argument that turns a program into a balancer process.
pub(crate) const FLAG: &str = "--immut-balancer";

struct Args {
    state_dir: PathBuf,
    service: String,
    protocol: Protocol,
    listen: Option<SocketAddr>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut state_dir, mut service, mut protocol, mut listen) = (None, None, Protocol::Http, None);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--service" => service = Some(value()?),
            "--protocol" => protocol = value()?.parse()?,
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        state_dir: state_dir.ok_or("--state-dir is required")?,
        service: service.ok_or("--service is required")?,
        protocol,
        listen,
    })
}

/// Runs the balancer process; returns its exit code.
pub(crate) fn main() -> i32 {
    match parse(std::env::args().skip(2)).and_then(run) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("immut-local balancer: {e}");
            1
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    immut_core::model::validate_name("service", &args.service).map_err(|e| e.to_string())?;
    let dir = control::dir(&args.state_dir, &args.service);
    control::prepare_dir(&dir).map_err(|e| e.to_string())?;
    // The control socket is bound by a relative name, so that a deep state directory never
    // exceeds the 108 bytes of a socket address.
    std::env::set_current_dir(&dir).map_err(|e| format!("cannot enter {}: {e}", dir.display()))?;
    let _lock = client::try_lock_file(&dir.join(DAEMON_LOCK)).map_err(|e| e.to_string())?.ok_or_else(|| {
        format!("another balancer of {} runs already (its state: {})", args.service, dir.join(control::STATE).display())
    })?;
    let restored = control::read_state(&dir).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(serve(args, dir, restored))
}

struct Daemon {
    service: String,
    dir: PathBuf,
    address: SocketAddr,
    protocol: Protocol,
    pid: i32,
    start: Option<u64>,
    pool: Arc<Pool>,
    /// Held from a change of the serving set until it is persisted, so changes apply in order.
    changing: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

async fn serve(args: Args, dir: PathBuf, restored: Option<State>) -> Result<(), String> {
    let address = match (&restored, args.listen) {
        (Some(state), Some(listen)) if listen.port() != 0 && listen != state.address => {
            return Err(format!(
                "asked to listen on {listen}, but the balancer of {} listens on {} (kept in {}); stop it and delete that file to move it",
                args.service,
                state.address,
                dir.join(control::STATE).display()
            ));
        }
        (Some(state), _) => state.address,
        (None, Some(listen)) => listen,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    if let Some(state) = &restored
        && state.protocol != args.protocol
    {
        return Err(format!(
            "asked for a {} balancer, but the balancer of {} was started as {}; stop it and delete {} to change it",
            args.protocol,
            args.service,
            state.protocol,
            dir.join(control::STATE).display()
        ));
    }
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}; stop what listens there"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(SOCKET);
    let control = UnixListener::bind(SOCKET).map_err(|e| format!("cannot bind {}: {e}", dir.join(SOCKET).display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.join(SOCKET).display()))?;
    }
    let pool = Arc::new(Pool::default());
    *pool.backends.write().expect("pool lock poisoned") =
        restored.map(|s| s.serving.into_iter().map(|(id, addr)| Backend::new(id, addr)).collect()).unwrap_or_default();
    let (pid, start) = immut_core::process::current();
    let daemon = Arc::new(Daemon {
        service: args.service,
        dir,
        address,
        protocol: args.protocol,
        pid,
        start,
        pool,
        changing: tokio::sync::Mutex::new(()),
        shutdown: watch::channel(false).0,
    });
    daemon.persist(daemon.pool.serving(), true).await?;
    eprintln!(
        "immut-local balancer of {} listening on {address} ({}, pid {pid}), serving {:?}",
        daemon.service,
        daemon.protocol,
        daemon.pool.serving().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()
    );
    tokio::spawn(accept_loop(daemon.clone(), listener));
    tokio::spawn(control_loop(daemon.clone(), control));
    tokio::spawn(stop_on_signal(daemon.clone()));
    tokio::spawn(watchdog(daemon.clone()));

    let mut stopped = daemon.shutdown.subscribe();
    let _ = stopped.wait_for(|s| *s).await;
    // Let client connections finish what they asked, briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while daemon.pool.counters.open_connections.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_file(SOCKET);
    let result = daemon.persist(daemon.pool.serving(), false).await;
    eprintln!("immut-local balancer of {} stopped", daemon.service);
    result
}

impl Daemon {
    fn status(&self) -> BalancerStatus {
        let c = &self.pool.counters;
        BalancerStatus {
            service: self.service.clone(),
            address: self.address,
            protocol: self.protocol,
            pid: self.pid,
            serving: self.pool.serving(),
            requests: c.requests.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            open_connections: c.open_connections.load(Ordering::Relaxed),
        }
    }

    async fn persist(&self, serving: Vec<(InstanceId, SocketAddr)>, running: bool) -> Result<(), String> {
        let state = State {
            service: self.service.clone(),
            address: self.address,
            protocol: self.protocol,
            pid: running.then_some(self.pid),
            start_ticks: if running { self.start } else { None },
            serving,
            updated_at_ms: client::now_ms(),
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || control::write_state(&dir, &state))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write {}: {e}", self.dir.join(control::STATE).display()))
    }

    /// Changes the serving set in one write (persisted first: a failed write changes nothing),
    /// then drains what it removed.
    async fn change(&self, attach: Vec<(InstanceId, SocketAddr)>, detach: Vec<InstanceId>, drain: Duration) -> Reply {
        let removed = {
            let _in_order = self.changing.lock().await;
            let current: Vec<Arc<Backend>> = self.pool.backends.read().expect("pool lock poisoned").clone();
            let removed: Vec<Arc<Backend>> = current.iter().filter(|b| detach.contains(&b.id)).cloned().collect();
            let mut next: Vec<Arc<Backend>> = current.iter().filter(|b| !detach.contains(&b.id)).cloned().collect();
            for (id, addr) in attach {
                if !next.iter().any(|b| b.id == id) {
                    next.push(Backend::new(id, addr));
                }
            }
            let unchanged = removed.is_empty() && next.len() == current.len();
            if !unchanged {
                let serving: Vec<(InstanceId, SocketAddr)> = next.iter().map(|b| (b.id.clone(), b.addr)).collect();
                if let Err(e) = self.persist(serving.clone(), true).await {
                    return Reply::error(format!("the serving set was not changed: {e}"));
                }
                *self.pool.backends.write().expect("pool lock poisoned") = next;
                eprintln!(
                    "immut-local balancer of {}: serving {:?}",
                    self.service,
                    serving.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()
                );
            }
            removed
        };
        for b in &removed {
            b.detach();
        }
        let deadline = tokio::time::Instant::now() + drain;
        let mut left: usize = removed.iter().map(|b| b.in_flight()).sum();
        while left > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            left = removed.iter().map(|b| b.in_flight()).sum();
        }
        if left > 0 {
            eprintln!("immut-local balancer of {}: drain timeout, {left} requests still in flight", self.service);
        }
        // Connections given back while the drain ran close too.
        for b in &removed {
            b.detach();
        }
        Reply { left_in_flight: left, ..Reply::ok() }
    }

    async fn handle(&self, op: Op) -> Reply {
        match op {
            Op::Status => Reply { status: Some(self.status()), ..Reply::ok() },
            Op::Attach { backends } => self.change(backends, Vec::new(), Duration::ZERO).await,
            Op::Detach { ids, drain_ms } => self.change(Vec::new(), ids, Duration::from_millis(drain_ms)).await,
            Op::Switch { attach, detach, drain_ms } => {
                self.change(attach, detach, Duration::from_millis(drain_ms)).await
            }
            Op::Persist => {
                let _in_order = self.changing.lock().await;
                match self.persist(self.pool.serving(), true).await {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(e),
                }
            }
            Op::Stop => Reply::ok(),
        }
    }
}

async fn accept_loop(daemon: Arc<Daemon>, listener: TcpListener) {
    let mut stopped = daemon.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
        };
        let Ok((stream, peer)) = accepted else { continue };
        let (pool, stopped) = (daemon.pool.clone(), daemon.shutdown.subscribe());
        match daemon.protocol {
            Protocol::Http => {
                tokio::spawn(serve_http(pool, stream, peer, stopped));
            }
            Protocol::Tcp => {
                tokio::spawn(async move {
                    let _open = Open::new(&pool);
                    proxy::tcp(pool, stream).await
                });
            }
        }
    }
}

/// One client connection, kept alive as long as the client wants; on shutdown it finishes the
/// request in flight and closes.
async fn serve_http(
    pool: Arc<Pool>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) {
    let _open = Open::new(&pool);
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let pool = pool.clone();
        async move { Ok::<_, Infallible>(proxy::http(pool, request, peer).await) }
    });
    let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn control_loop(daemon: Arc<Daemon>, listener: UnixListener) {
    let mut stopped = daemon.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
        };
        if let Ok((stream, _)) = accepted {
            tokio::spawn(control_connection(daemon.clone(), stream));
        }
    }
}

async fn control_connection(daemon: Arc<Daemon>, stream: UnixStream) {
    let me = nix::unistd::Uid::current().as_raw();
    let peer = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).take(MAX_LINE as u64).read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut stop = false;
    let reply = match serde_json::from_str::<Request>(&line) {
        _ if peer != Some(me) => Reply::error("refused: only the user that runs the balancer may steer it"),
        Err(e) => Reply::error(format!("not a balancer request: {e}")),
        Ok(request) if request.service != daemon.service => Reply::error(format!(
            "refused: this balancer serves {:?}, not {:?}; each service has a balancer of its own",
            daemon.service, request.service
        )),
        Ok(request) => {
            stop = matches!(request.op, Op::Stop);
            daemon.handle(request.op).await
        }
    };
    let mut answer = serde_json::to_vec(&reply).expect("replies serialize");
    answer.push(b'\n');
    let _ = write.write_all(&answer).await;
    let _ = write.shutdown().await;
    if stop {
        eprintln!("immut-local balancer of {}: asked to stop", daemon.service);
        let _ = daemon.shutdown.send(true);
    }
}

async fn stop_on_signal(daemon: Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("immut-local balancer of {}: signalled to stop", daemon.service);
    let _ = daemon.shutdown.send(true);
}

/// Stops the balancer once nobody can reach it: its control socket or its directory is gone.
async fn watchdog(daemon: Arc<Daemon>) {
    let socket = daemon.dir.join(SOCKET);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !socket.exists() {
            eprintln!("immut-local balancer of {}: {} is gone; stopping", daemon.service, socket.display());
            let _ = daemon.shutdown.send(true);
            return;
        }
    }
}
