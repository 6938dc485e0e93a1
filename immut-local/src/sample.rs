//! The sample service the examples and tests deploy: a tiny HTTP server.
//!
//! - `GET /healthz` answers `200 ok`, or `503` when `SAMPLE_FAIL_HEALTH=1` (a release that
//!   never becomes healthy, for the rollback example);
//! - any other path answers `version <artifact version> instance <id>`.
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

/// The environment variable that makes the service exit with status 3 as soon as it starts.
pub const EXIT_AT_START: &str = "SAMPLE_EXIT_AT_START";

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
    let version = std::env::var(env::ARTIFACT_VERSION).unwrap_or_else(|_| "unknown".into());
    let service = std::env::var(env::SERVICE).unwrap_or_else(|_| "sample".into());
    let instance = std::env::var(env::INSTANCE_ID).unwrap_or_else(|_| format!("{service}-pid{}", std::process::id()));
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
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (body, mut stopping) = (body.clone(), stopping.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(respond(&req, &body, healthy)) }
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
