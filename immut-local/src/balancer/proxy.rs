//! The balancer's data path: an HTTP/1.1 reverse proxy (hyper on both sides) or a TCP relay,
//! round-robin over the serving set.
//!
//! HTTP: every client connection is the balancer's own and lives as long as the client wants,
//! whatever happens to the backends. Each request is proxied on its own, over keep-alive
//! connections that the balancer pools per backend. A detached backend gets no new request,
//! its idle pooled connections are closed at once, and the ones its in-flight requests use are
//! closed when those end, so a drain never closes a client's connection. A request is retried
//! on another backend when nothing of it reached a backend (refused connection, or a pooled
//! connection found closed before the request was written), and, for idempotent methods, when
//! the backend closed the connection before sending any byte of an answer.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use immut_core::InstanceId;
use tokio::net::TcpStream;

/// A pooled connection to a backend.
type Upstream = SendRequest<Full<Bytes>>;

/// The body of an answer: the backend's, streamed, or the balancer's own.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The largest request body the balancer buffers (it keeps a copy so it can retry).
const MAX_REQUEST_BODY: usize = 16 << 20;
/// Idle connections kept per backend.
const MAX_IDLE: usize = 64;
/// Attempts per request, across backends.
const MAX_ATTEMPTS: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One instance in the serving set.
#[derive(Debug)]
pub(crate) struct Backend {
    pub id: InstanceId,
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    idle: Mutex<Vec<Upstream>>,
    detached: AtomicBool,
}

impl Backend {
    pub(crate) fn new(id: InstanceId, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            id,
            addr,
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            detached: AtomicBool::new(false),
        })
    }

    /// Requests (HTTP) or connections (TCP) it is handling now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Out of the serving set: its idle connections close now, busy ones when their request ends.
    pub(crate) fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
        self.idle.lock().expect("pool lock poisoned").clear();
    }

    fn take_idle(&self) -> Option<Upstream> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        while let Some(upstream) = idle.pop() {
            if upstream.is_ready() && !upstream.is_closed() {
                return Some(upstream);
            }
        }
        None
    }

    /// Puts a connection whose exchange ended back in the pool, once hyper says it is ready.
    fn give_back(self: &Arc<Self>, mut upstream: Upstream) {
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let backend = self.clone();
        runtime.spawn(async move {
            if tokio::time::timeout(Duration::from_secs(1), upstream.ready()).await.is_ok_and(|r| r.is_ok())
                && !backend.detached.load(Ordering::SeqCst)
            {
                let mut idle = backend.idle.lock().expect("pool lock poisoned");
                if idle.len() < MAX_IDLE {
                    idle.push(upstream);
                }
            }
        });
    }
}

/// Counts one request or connection against a backend while it lives.
pub(crate) struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the balancer counts, for its status.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub open_connections: AtomicU64,
}

/// The serving set and the counters.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    pub counters: Counters,
}

impl Pool {
    /// The next backend round-robin, skipping `tried`, counted in flight under the read lock so
    /// that a detach (which takes the write lock) sees every request that could still reach it.
    fn pick(&self, tried: &[InstanceId]) -> Option<(Arc<Backend>, InFlight)> {
        let backends = self.backends.read().expect("pool lock poisoned");
        let n = backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &backends[(start + i) % n]).find(|b| !tried.contains(&b.id)).map(|b| {
            b.in_flight.fetch_add(1, Ordering::SeqCst);
            (b.clone(), InFlight(b.clone()))
        })
    }

    pub(crate) fn serving(&self) -> Vec<(InstanceId, SocketAddr)> {
        self.backends.read().expect("pool lock poisoned").iter().map(|b| (b.id.clone(), b.addr)).collect()
    }
}

/// Counts an open client connection while it lives.
pub(crate) struct Open(Arc<Pool>);

impl Open {
    pub(crate) fn new(pool: &Arc<Pool>) -> Open {
        pool.counters.open_connections.fetch_add(1, Ordering::SeqCst);
        Open(pool.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.counters.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn own(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the headers that belong to one connection, not to the message.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named).chain([&header::UPGRADE]) {
        headers.remove(name);
    }
}

fn upstream_request(
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    peer: SocketAddr,
    backend: SocketAddr,
) -> Request<Full<Bytes>> {
    let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&backend.to_string())
    {
        headers.insert(header::HOST, host);
    }
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.append(HeaderName::from_static("x-forwarded-for"), ip);
    }
    request
}

fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// The backend closed the connection (or reset it) before any byte of an answer came back.
fn closed_before_answer(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

async fn connect(addr: SocketAddr) -> Result<Upstream, String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Proxies one HTTP request to a backend of the serving set.
pub(crate) async fn http(pool: Arc<Pool>, request: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    pool.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            pool.counters.failed.fetch_add(1, Ordering::Relaxed);
            let status = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return own(status, format!("immut-local balancer: cannot read the request body: {e}\n"));
        }
    };
    let mut tried: Vec<InstanceId> = Vec::new();
    let mut last_error = String::from("no instance serves");
    for _ in 0..MAX_ATTEMPTS {
        let Some((backend, in_flight)) = pool.pick(&tried) else { break };
        tried.push(backend.id.clone());
        let pooled = backend.take_idle();
        let was_pooled = pooled.is_some();
        let mut upstream = match pooled {
            Some(upstream) => upstream,
            None => match connect(backend.addr).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    tracing::debug!(backend = %backend.id, error = %e, "backend refused; trying the next");
                    last_error = format!("{} ({}): {e}", backend.id, backend.addr);
                    pool.counters.retried.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match upstream.try_send_request(upstream_request(&parts, &body, peer, backend.addr)).await {
            Ok(response) => {
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let tracked =
                    Tracked { inner: incoming, upstream: Some(upstream), backend, ended: false, _in_flight: in_flight };
                return Response::from_parts(head, tracked.boxed_unsync());
            }
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let error = e.into_error();
                last_error = format!("{} ({}): {error}", backend.id, backend.addr);
                if unsent || (idempotent(&parts.method) && closed_before_answer(&error)) {
                    tracing::debug!(backend = %backend.id, %error, unsent, "no answer; retrying on another backend");
                    pool.counters.retried.fetch_add(1, Ordering::Relaxed);
                    // A pooled connection the backend had closed says nothing of the backend:
                    // it may be tried again on a fresh connection.
                    if was_pooled {
                        tried.pop();
                    }
                    continue;
                }
                pool.counters.failed.fetch_add(1, Ordering::Relaxed);
                return own(StatusCode::BAD_GATEWAY, format!("immut-local balancer: {last_error}\n"));
            }
        }
    }
    pool.counters.failed.fetch_add(1, Ordering::Relaxed);
    let status = if tried.is_empty() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
    own(status, format!("immut-local balancer: no backend answered: {last_error}\n"))
}

/// A backend's answer on its way to the client. It holds the request in flight until it is
/// dropped, and gives the connection back to the pool when the answer was read to its end.
struct Tracked {
    inner: Incoming,
    upstream: Option<Upstream>,
    backend: Arc<Backend>,
    ended: bool,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.upstream = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if (self.ended || self.inner.is_end_stream())
            && let Some(upstream) = self.upstream.take()
        {
            self.backend.give_back(upstream);
        }
    }
}

/// Relays one TCP connection to a backend of the serving set; a backend that refuses is
/// skipped for the next.
pub(crate) async fn tcp(pool: Arc<Pool>, mut client: TcpStream) {
    pool.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut tried = Vec::new();
    while let Some((backend, in_flight)) = pool.pick(&tried) {
        tried.push(backend.id.clone());
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                drop(in_flight);
                return;
            }
            _ => {
                pool.counters.retried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    pool.counters.failed.fetch_add(1, Ordering::Relaxed);
}
