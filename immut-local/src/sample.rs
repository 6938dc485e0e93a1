//! The sample service the examples and tests deploy: a tiny HTTP server that behaves like a
//! real workload.
//!
//! - `GET /healthz` answers `200 ok`, or `503` when `SAMPLE_FAIL_HEALTH=1` (a release that
//!   never becomes healthy, for the rollback example);
//! - `GET /metrics` answers its metrics in the Prometheus text format (version 0.0.4):
//!   `sample_http_requests_total{status}` and the histogram
//!   `sample_http_request_duration_seconds`, both labelled with `version` and `release`. Only
//!   the requests the service serves count: probes, scrapes and version queries do not, so an
//!   error rate is that of the traffic;
//! - `GET /version` answers what the process runs, as JSON: `version` (its built-in version,
//!   [`VERSION`]), `digest` (the `sha256:` of its own executable, read from `/proc/self/exe`
//!   at start), and, for information only, `release`, `service` and `instance` as the
//!   launcher named them. On a cloud machine, with [`IMAGE_FROM`] set to `ec2`, `gce` or
//!   `azure`, it also reports `image`: the image the machine booted from, as the cloud's
//!   metadata service names it (read at start; `null` when the service did not answer, which
//!   a version check counts against it). Every answer carries the same facts in the headers
//!   [`VERSION_HEADER`], [`DIGEST_HEADER`], [`RELEASE_HEADER`] (and [`IMAGE_HEADER`]). The version and digest come
//!   from the running executable, never from the environment, so an instance that runs another
//!   build than its labels say gives itself away (see `immut_core::health::VersionCheck`);
//! - any other path answers `version <artifact version> instance <id>`, except that with
//!   [`ERROR_SHARE`] set a share of them answer `500`, and with [`SLOW_SHARE`] a share are
//!   answered [`SLOW_MS`] late: a bad release that `/healthz` cannot catch and metrics can.
//!   The shares follow the request count, not chance: over any N requests, exactly
//!   `floor(N * share)` fail (or are slow), spread evenly. With [`ERRORS_AFTER`] the errors
//!   begin only after that many served requests: a regression that shows under real traffic
//!   (after a blue/green switch) and not under a smoke test.
//!
//! The settings are environment variables, set in the release's baseline (`LaunchSpec::env`),
//! so a faulty setting is part of the release: its id and labels differ, and a rollback
//! returns to a release without it. A malformed value stops the service at start, naming the
//! variable.
//!
//! It listens on `127.0.0.1:$PORT`, with HTTP keep-alive. On SIGTERM it stops accepting,
//! finishes the requests in flight (each answered with `Connection: close`), closes its idle
//! keep-alive connections at once, then exits. With `SAMPLE_EXIT_AT_START=1` it prints why on
//! stderr and exits with status 3 at once: a release that crash-loops. It runs as the
//! `immut-sample` binary, or inside any program that calls [`crate::serve_if_requested`] (or
//! [`serve_if_requested`]) first thing in `main` and is launched with [`SAMPLE_FLAG`] as its
//! first argument: that is how the examples use their own executable as the artifact.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::provider::env;

pub mod image;

/// The first argument that turns a program into the sample service.
pub const SAMPLE_FLAG: &str = "--immut-sample-service";

/// The environment variable that makes `/healthz` fail.
pub const FAIL_HEALTH: &str = "SAMPLE_FAIL_HEALTH";

/// The environment variable that makes the service exit with status 3 as soon as it starts.
pub const EXIT_AT_START: &str = "SAMPLE_EXIT_AT_START";

/// The environment variable with the share of served requests that answer `500`: a fraction
/// from 0 to 1 (`0.05`) or a percentage (`5%`).
pub const ERROR_SHARE: &str = "SAMPLE_ERROR_SHARE";

/// The environment variable with how many served requests answer normally before
/// [`ERROR_SHARE`] applies (a whole number; default 0, from the first request).
pub const ERRORS_AFTER: &str = "SAMPLE_ERRORS_AFTER";

/// The environment variable with the share of served requests answered late, written as
/// [`ERROR_SHARE`] is.
pub const SLOW_SHARE: &str = "SAMPLE_SLOW_SHARE";

/// The environment variable with how late a slow request is answered, in milliseconds
/// (default 250).
pub const SLOW_MS: &str = "SAMPLE_SLOW_MS";

/// `SAMPLE_IMAGE_FROM=ec2|gce|azure`: report the boot image that this cloud's metadata service
/// names (see [`image`]).
pub const IMAGE_FROM: &str = "SAMPLE_IMAGE_FROM";

/// The sample's built-in version: the version of the crate it was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The response header with the running build's version.
pub const VERSION_HEADER: &str = "x-immut-version";

/// The response header with the `sha256:` digest of the running executable.
pub const DIGEST_HEADER: &str = "x-immut-digest";

/// The response header with the release id the launcher named (information, not proof).
pub const RELEASE_HEADER: &str = "x-immut-release";

/// The response header with the boot image the metadata service names (with [`IMAGE_FROM`]).
pub const IMAGE_HEADER: &str = "x-immut-image";

/// If this process was started with [`SAMPLE_FLAG`] (or as a balancer, see
/// [`crate::serve_if_requested`]), serves until SIGTERM and exits; otherwise returns at once.
pub fn serve_if_requested() {
    crate::serve_if_requested()
}

/// Serves until SIGTERM; returns the exit code.
pub fn main() -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sample: cannot start a runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(serve())
}

/// Which requests of a sequence are picked when a share of them must be: request `n` (from 0)
/// is picked when `floor((n + 1) * share)` exceeds `floor(n * share)`. Over any first N
/// requests exactly `floor(N * share)` are picked, evenly spread, with no randomness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share {
    per_million: u64,
}

impl Share {
    const WHOLE: u64 = 1_000_000;

    /// A share in parts per million (capped at one million: every request).
    pub fn per_million(parts: u64) -> Self {
        Share { per_million: parts.min(Self::WHOLE) }
    }

    /// Parses `0.05` or `5%`. The error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, scale) = match text.strip_suffix('%') {
            Some(percent) => (percent.trim(), 100.0),
            None => (text, 1.0),
        };
        match number.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=scale).contains(&v) => {
                Ok(Share::per_million((v / scale * Self::WHOLE as f64).round() as u64))
            }
            _ => Err(format!("{text:?} is not a share: write a fraction from 0 to 1 (0.05) or a percentage (5%)")),
        }
    }

    /// Whether request `n` (counted from 0) is picked.
    pub fn picks(&self, n: u64) -> bool {
        let at = |k: u64| (u128::from(k) * u128::from(self.per_million)) / u128::from(Self::WHOLE);
        at(n + 1) > at(n)
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.per_million as f64 / 10_000.0)
    }
}

/// How the served requests misbehave, from the environment.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    errors: Share,
    /// Served requests before `errors` applies.
    errors_after: u64,
    slow: Share,
    delay: Duration,
}

impl Faults {
    fn from_env() -> Result<Self, String> {
        let share = |name: &str| match std::env::var(name) {
            Ok(v) => Share::parse(&v).map_err(|e| format!("{name}: {e}")),
            Err(_) => Ok(Share::default()),
        };
        let delay = match std::env::var(SLOW_MS) {
            Ok(v) => v.trim().parse::<u64>().map(Duration::from_millis).map_err(|_| {
                format!("{SLOW_MS}: {v:?} is not a whole number of milliseconds; write for example 250")
            })?,
            Err(_) => Duration::from_millis(250),
        };
        let errors_after = match std::env::var(ERRORS_AFTER) {
            Ok(v) => v.trim().parse::<u64>().map_err(|_| {
                format!("{ERRORS_AFTER}: {v:?} is not a whole number of requests; write for example 500")
            })?,
            Err(_) => 0,
        };
        Ok(Faults { errors: share(ERROR_SHARE)?, errors_after, slow: share(SLOW_SHARE)?, delay })
    }
}

/// What the process runs and what it was told, for `/version` and the headers.
#[derive(Debug)]
struct Identity {
    digest: String,
    image: Option<String>,
    release: String,
    service: String,
    instance: String,
    headers: Vec<(&'static str, HeaderValue)>,
}

/// The metrics of the served requests.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    requests: Family<[(&'static str, u16); 1], Counter>,
    latency: Histogram,
}

impl Metrics {
    fn new(release: &str) -> Self {
        let labels = [("version", VERSION.to_owned()), ("release", release.to_owned())];
        let mut registry = Registry::with_labels(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        let requests = Family::<[(&'static str, u16); 1], Counter>::default();
        registry.register("sample_http_requests", "Requests served, by status", requests.clone());
        let latency = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register("sample_http_request_duration_seconds", "Time to answer a served request", latency.clone());
        Metrics { registry, requests, latency }
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
struct Service {
    body: String,
    healthy: bool,
    faults: Faults,
    served: AtomicU64,
    identity: Identity,
    metrics: Metrics,
}

/// The `sha256:<hex>` digest of the executable this process runs.
fn own_digest() -> std::io::Result<String> {
    crate::client::digest_cached(std::path::Path::new("/proc/self/exe"))
}

async fn serve() -> i32 {
    if std::env::var(EXIT_AT_START).is_ok_and(|v| v == "1") {
        eprintln!(
            "sample: {EXIT_AT_START}=1: this release cannot start (a missing configuration, say); exiting with status 3"
        );
        return 3;
    }
    let port: u16 = match std::env::var(env::PORT).ok().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("sample: set {} to the port to listen on", env::PORT);
            return 2;
        }
    };
    let faults = match Faults::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sample: {e}");
            return 2;
        }
    };
    let digest = match own_digest() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("sample: cannot read its own executable (/proc/self/exe): {e}");
            return 2;
        }
    };
    let image = match std::env::var(IMAGE_FROM).ok().filter(|v| !v.is_empty()).map(|v| image::Cloud::parse(&v)) {
        None => None,
        Some(Err(e)) => {
            eprintln!("sample: {e}");
            return 2;
        }
        Some(Ok(cloud)) => match image::read(cloud).await {
            Ok(image) => Some(image),
            Err(e) => {
                // Served all the same, with no image: a version check then counts it unhealthy.
                eprintln!("sample: {e}");
                None
            }
        },
    };
    let version = std::env::var(env::ARTIFACT_VERSION).unwrap_or_else(|_| "unknown".into());
    let service = std::env::var(env::SERVICE).unwrap_or_else(|_| "sample".into());
    let instance = std::env::var(env::INSTANCE_ID).unwrap_or_else(|_| format!("{service}-pid{}", std::process::id()));
    let release = std::env::var(env::RELEASE).unwrap_or_default();
    let healthy = std::env::var(FAIL_HEALTH).map(|v| v != "1").unwrap_or(true);
    let listener = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample: cannot listen on 127.0.0.1:{port}: {e}");
            return 3;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sample: cannot handle SIGTERM: {e}");
            return 4;
        }
    };
    eprintln!(
        "sample: version {version} (build {VERSION}, {digest}{}) listening on 127.0.0.1:{port} (healthy: {healthy}, errors {} after {} requests, slow {} by {:?})",
        image.as_deref().map(|i| format!(", booted from {i}")).unwrap_or_default(),
        faults.errors,
        faults.errors_after,
        faults.slow,
        faults.delay
    );
    let header = |v: &str| HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let identity = Identity {
        headers: [
            (VERSION_HEADER, header(VERSION)),
            (DIGEST_HEADER, header(&digest)),
            (RELEASE_HEADER, header(&release)),
        ]
        .into_iter()
        .chain(image.as_deref().map(|i| (IMAGE_HEADER, header(i))))
        .collect(),
        digest,
        image,
        release: release.clone(),
        service,
        instance: instance.clone(),
    };
    let state = Arc::new(Service {
        body: format!("version {version} instance {instance}\n"),
        healthy,
        faults,
        served: AtomicU64::new(0),
        identity,
        metrics: Metrics::new(&release),
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (state, mut stopping) = (state.clone(), stopping.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.respond(&req).await) }
                    });
                    let connection = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                            // Idle: closed now. Busy: the answer goes out with
                            // `Connection: close`, then it closes.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            // Finished connections are reaped as they go, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = term.recv() => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let open = connections.len();
    // Finish what is in flight; a client that never reads its answer does not hold the exit.
    let finished =
        tokio::time::timeout(Duration::from_secs(10), async { while connections.join_next().await.is_some() {} }).await;
    eprintln!(
        "sample: stopped ({open} connections closed{})",
        if finished.is_err() { ", some cut after 10 s" } else { "" }
    );
    0
}

impl Service {
    async fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, text, content_type) = match req.uri().path() {
            "/healthz" if self.healthy => (StatusCode::OK, "ok\n".to_owned(), None),
            "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_owned(), None),
            "/metrics" => (
                StatusCode::OK,
                self.metrics.encode(),
                Some(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
            ),
            "/version" => (StatusCode::OK, self.version_json(), Some("application/json")),
            _ => {
                let (status, text) = self.serve_one().await;
                (status, text, None)
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in &self.identity.headers {
            headers.insert(*name, value.clone());
        }
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        response
    }

    /// A served request: the faults of the release decide its fate, and the metrics count it.
    async fn serve_one(&self) -> (StatusCode, String) {
        let started = Instant::now();
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        if self.faults.slow.picks(n) {
            tokio::time::sleep(self.faults.delay).await;
        }
        let failing = n.checked_sub(self.faults.errors_after).is_some_and(|k| self.faults.errors.picks(k));
        let (status, text) = if failing {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("injected failure ({ERROR_SHARE})\n"))
        } else {
            (StatusCode::OK, self.body.clone())
        };
        self.metrics.requests.get_or_create(&[("status", status.as_u16())]).inc();
        self.metrics.latency.observe(started.elapsed().as_secs_f64());
        (status, text)
    }

    fn version_json(&self) -> String {
        let id = &self.identity;
        let mut text = serde_json::json!({
            "version": VERSION,
            "digest": id.digest,
            "image": id.image,
            "release": id.release,
            "service": id.service,
            "instance": id.instance,
        })
        .to_string();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Share;

    #[test]
    fn a_share_picks_exactly_its_part_of_any_prefix_evenly() {
        let share = Share::parse("5%").unwrap();
        assert_eq!(share, Share::parse("0.05").unwrap());
        for n in [1u64, 19, 20, 21, 100, 1000, 12345] {
            let picked = (0..n).filter(|&k| share.picks(k)).count() as u64;
            assert_eq!(picked, n * 5 / 100, "over {n} requests");
        }
        // Evenly: never two picked within 20 requests of each other.
        let picked: Vec<u64> = (0..1000).filter(|&k| share.picks(k)).collect();
        assert!(picked.windows(2).all(|w| w[1] - w[0] == 20), "{picked:?}");
        assert!((0..1000).all(|k| !Share::parse("0").unwrap().picks(k)));
        assert!((0..1000).all(|k| Share::parse("1").unwrap().picks(k)));
    }

    #[test]
    fn a_malformed_share_says_what_is_accepted() {
        for bad in ["", "abc", "1.5", "-0.1", "150%", "NaN"] {
            let e = Share::parse(bad).unwrap_err();
            assert!(e.contains("fraction from 0 to 1"), "{bad}: {e}");
        }
    }
}
