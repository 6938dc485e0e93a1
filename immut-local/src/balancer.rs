use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use immut_core::{Error, ErrorKind, Instance, InstanceId, Result, Traffic};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::builder::BalancerBuilder;
use crate::client::{self, map_io};

#[derive(Debug, Clone)]
struct Backend {
    id: InstanceId,
    addr: SocketAddr,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    serving: Vec<(InstanceId, SocketAddr)>,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    backends: RwLock<Vec<Backend>>,
    next: AtomicUsize,
    state_dir: Option<PathBuf>,
    drain_timeout: Duration,
    shutdown: Notify,
    served: AtomicUsize,
    /// Held from a change of the serving set until it is persisted, so that the file always
    /// ends with the newest set even when two changes overlap.
    persisting: tokio::sync::Mutex<()>,
}

/// A TCP load balancer on tokio: round-robin over the serving set.
///
/// Attach and detach change the set atomically for new connections. A detach returns once the
/// detached instances' in-flight connections have closed (or the drain timeout passed), so the
/// engine terminates an instance only after it has drained. A connection whose backend refuses
/// is retried on the next backend. With a state directory, the serving set survives a restart
/// of the deploying process.
#[derive(Debug, Clone)]
pub struct LocalBalancer {
    shared: Arc<Shared>,
    _guard: Arc<StopOnDrop>,
}

#[derive(Debug)]
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.notify_one();
    }
}

impl LocalBalancer {
    /// A builder.
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }

    pub(crate) async fn start(builder: BalancerBuilder) -> Result<LocalBalancer> {
        let listener = TcpListener::bind(builder.listen).await.map_err(|e| {
            Error::invalid(
                "listen",
                format!("cannot listen on {}: {e}; stop what listens there or pick another address", builder.listen),
            )
            .with_provider("local")
            .with_source(e)
        })?;
        let addr =
            listener.local_addr().map_err(|e| map_io(e, "read the balancer address", std::path::Path::new("-")))?;
        let restored = match builder.state_dir.clone() {
            Some(dir) => client::blocking("restore the serving set", move || restore(&dir)).await?,
            None => Vec::new(),
        };
        let shared = Arc::new(Shared {
            addr,
            backends: RwLock::new(restored),
            next: AtomicUsize::new(0),
            state_dir: builder.state_dir,
            drain_timeout: builder.drain_timeout,
            shutdown: Notify::new(),
            served: AtomicUsize::new(0),
            persisting: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::info!(%addr, "balancer listening");
        Ok(LocalBalancer { _guard: Arc::new(StopOnDrop(shared.clone())), shared })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Connections proxied so far.
    pub fn connections(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Backend>> {
        self.shared.backends.read().expect("balancer lock poisoned")
    }

    /// Checks the instances are live managed processes with an address.
    async fn backends_for(&self, instances: &[Instance]) -> Result<Vec<Backend>> {
        let live: Vec<String> = match self.shared.state_dir.clone() {
            Some(dir) => {
                client::blocking("attach", move || {
                    Ok(client::read_records(&dir)?
                        .into_iter()
                        .filter(|r| !r.terminated && client::is_alive(r.pid, r.start_ticks))
                        .map(|r| r.id)
                        .collect())
                })
                .await?
            }
            None => Vec::new(),
        };
        let mut unknown = Vec::new();
        let mut backends = Vec::new();
        for instance in instances {
            let known = self.shared.state_dir.is_none() || live.iter().any(|id| id == instance.id.as_str());
            let addr = instance.address.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
            match (known, addr) {
                (true, Some(addr)) => {
                    backends.push(Backend { id: instance.id.clone(), addr, in_flight: Arc::new(AtomicUsize::new(0)) })
                }
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

    /// Changes the serving set in one write: adds `attach`, removes `detach`; returns the removed.
    /// New connections see the change at once; it is persisted before this returns.
    async fn apply(&self, attach: Vec<Backend>, detach: &[InstanceId]) -> Result<Vec<Backend>> {
        let _in_order = self.shared.persisting.lock().await;
        let (removed, serving) = {
            let mut backends = self.shared.backends.write().expect("balancer lock poisoned");
            for b in attach {
                if !backends.iter().any(|x| x.id == b.id) {
                    backends.push(b);
                }
            }
            let mut removed = Vec::new();
            backends.retain(|b| {
                let keep = !detach.contains(&b.id);
                if !keep {
                    removed.push(b.clone());
                }
                keep
            });
            (removed, backends.iter().map(|b| (b.id.clone(), b.addr)).collect::<Vec<_>>())
        };
        if let Some(dir) = self.shared.state_dir.clone() {
            client::blocking("persist the serving set", move || persist(&dir, serving)).await?;
        }
        Ok(removed)
    }

    async fn drain(&self, removed: Vec<Backend>) {
        let deadline = tokio::time::Instant::now() + self.shared.drain_timeout;
        for b in removed {
            while b.in_flight.load(Ordering::SeqCst) > 0 {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(id = %b.id, open = b.in_flight.load(Ordering::SeqCst), "drain timeout; connections left open");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn persist(dir: &std::path::Path, serving: Vec<(InstanceId, SocketAddr)>) -> Result<()> {
    let path = dir.join("balancer.json");
    let body = serde_json::to_vec_pretty(&Persisted { serving }).expect("serializes");
    client::write_atomic(&path, &body).map_err(|e| map_io(e, "persist the serving set", &path))
}

fn restore(dir: &std::path::Path) -> Result<Vec<Backend>> {
    let path = dir.join("balancer.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let p: Persisted = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(
                    "state_dir",
                    format!("{} is not a serving set ({e}); delete it to start empty", path.display()),
                )
                .with_provider("local")
                .with_source(e)
            })?;
            Ok(p.serving
                .into_iter()
                .map(|(id, addr)| Backend { id, addr, in_flight: Arc::new(AtomicUsize::new(0)) })
                .collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(map_io(e, "read the serving set", &path)),
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.shutdown.notified() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        shared.served.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(proxy(client, shared.clone()));
    }
}

/// Picks a backend and counts the connection against it, under the read lock, so that a
/// detach (which takes the write lock) sees every connection that could still reach it.
fn pick(shared: &Shared, skip: usize) -> Option<(SocketAddr, InFlight)> {
    let backends = shared.backends.read().expect("balancer lock poisoned");
    if skip >= backends.len() {
        return None;
    }
    let b = &backends[shared.next.fetch_add(1, Ordering::Relaxed) % backends.len()];
    b.in_flight.fetch_add(1, Ordering::SeqCst);
    Some((b.addr, InFlight(b.in_flight.clone())))
}

async fn proxy(mut client: TcpStream, shared: Arc<Shared>) {
    let mut attempt = 0;
    while let Some((addr, guard)) = pick(&shared, attempt) {
        match TcpStream::connect(addr).await {
            Ok(mut upstream) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                drop(guard);
                return;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "backend refused; trying the next");
                attempt += 1;
            }
        }
    }
}

#[async_trait]
impl Traffic for LocalBalancer {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        Ok(self.read().iter().map(|b| b.id.clone()).collect())
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        let backends = self.backends_for(instances).await?;
        self.apply(backends, &[]).await?;
        Ok(())
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let removed = self.apply(Vec::new(), ids).await?;
        self.drain(removed).await;
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let backends = self.backends_for(attach).await?;
        let removed = self.apply(backends, detach).await?;
        self.drain(removed).await;
        Ok(())
    }
}
