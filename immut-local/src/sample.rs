//! The sample service the examples and tests deploy: a tiny HTTP server.
//!
//! - `GET /healthz` answers `200 ok`, or `503` when `SAMPLE_FAIL_HEALTH=1` (a release that
//!   never becomes healthy, for the rollback example);
//! - any other path answers `version <artifact version> instance <id>`.
//!
//! It listens on `127.0.0.1:$PORT` and, on SIGTERM, stops accepting and finishes the requests
//! in flight before it exits. It runs as the `immut-sample` binary, or inside any program that
//! calls [`serve_if_requested`] first thing in `main` and is launched with [`SAMPLE_FLAG`] as its
//! first argument: that is how the examples use their own executable as the artifact.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::provider::env;

/// The first argument that turns a program into the sample service.
pub const SAMPLE_FLAG: &str = "--immut-sample-service";

/// The environment variable that makes `/healthz` fail.
pub const FAIL_HEALTH: &str = "SAMPLE_FAIL_HEALTH";

/// If this process was started with [`SAMPLE_FLAG`], serves until SIGTERM and exits;
/// otherwise returns at once.
pub fn serve_if_requested() {
    if std::env::args().nth(1).as_deref() == Some(SAMPLE_FLAG) {
        std::process::exit(main());
    }
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

async fn serve() -> i32 {
    let port: u16 = match std::env::var(env::PORT).ok().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("sample: set {} to the port to listen on", env::PORT);
            return 2;
        }
    };
    let version = std::env::var(env::ARTIFACT_VERSION).unwrap_or_else(|_| "unknown".into());
    let service = std::env::var(env::SERVICE).unwrap_or_else(|_| "sample".into());
    let instance = format!("{service}-{}", std::process::id());
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
    eprintln!("sample: version {version} listening on 127.0.0.1:{port} (healthy: {healthy})");
    let body = format!("version {version} instance {instance}\n");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let body = body.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(respond(&req, &body, healthy)) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    // Finish what is in flight, but never hang on an idle keep-alive connection.
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while connections.join_next().await.is_some() {} }).await;
    eprintln!("sample: stopped");
    0
}

fn respond(req: &Request<Incoming>, body: &str, healthy: bool) -> Response<Full<Bytes>> {
    let (status, text) = match req.uri().path() {
        "/healthz" if healthy => (StatusCode::OK, "ok\n".to_owned()),
        "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_owned()),
        _ => (StatusCode::OK, body.to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}
