//! The HTTP server every fake runs on, and the contract a cloud's wire layer implements.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::faults::{Fault, FaultRule, Faults};
use crate::record::{Recorded, Recorder};

/// One HTTP request, read whole.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, percent-decoded per segment.
    pub path: String,
    /// The query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Request {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The path's segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The body as JSON; an empty body reads as `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_slice(b"{}")
        } else {
            serde_json::from_slice(&self.body)
        }
    }

    /// Path and query as received, for logs.
    pub fn uri(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}?{}", self.path, q.join("&"))
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json; charset=UTF-8".into())],
            body: serde_json::to_vec_pretty(value).expect("a response serializes"),
        }
    }

    /// A 200 JSON response.
    pub fn ok(value: &impl Serialize) -> Self {
        Response::json(200, value)
    }
}

/// An error in a cloud's own shape: it knows its HTTP status and renders the cloud's body.
pub trait CloudError: std::fmt::Debug {
    /// The HTTP status.
    fn status(&self) -> u16;
    /// The cloud's error body.
    fn body(&self) -> serde_json::Value;
    /// Headers the error carries besides the body (ARM's `Retry-After` on a 429, ...); none by
    /// default.
    fn headers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The response.
    fn render(&self) -> Response {
        let mut response = Response::json(self.status(), &self.body());
        response.headers.extend(self.headers());
        response
    }
}

/// What a handler may use besides the request: the clock, the faults, and the server's own URL
/// (for self-referencing links).
#[derive(Debug, Clone)]
pub struct Env {
    /// The model's clock.
    pub clock: Clock,
    /// The fault rules.
    pub faults: Faults,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

/// A cloud's wire layer: routes, handlers, the cloud's error for each injected request fault,
/// and what the control endpoint needs of its model. Handlers are synchronous: the model sits
/// behind a lock and never waits.
pub trait Api: Send + Sync + 'static {
    /// A parsed route.
    type Route: Send;
    /// The cloud's error type.
    type Error: CloudError;

    /// Parses a request into the cloud's method name (for recording and fault rules, for
    /// example `compute.instances.list`) and a route; unknown paths are the cloud's 404.
    fn route(&self, request: &Request) -> Result<(String, Self::Route), Self::Error>;

    /// Serves a routed request.
    fn handle(&self, route: Self::Route, request: &Request, env: &Env) -> Result<Response, Self::Error>;

    /// The cloud's error for an injected request fault ([`Fault::RateLimited`] or
    /// [`Fault::ServerError`]).
    fn fault_error(&self, fault: &Fault) -> Self::Error;

    /// Forgets every resource.
    fn reset(&self);

    /// A JSON dump of the model, for `GET /_fake/state`.
    fn state(&self, env: &Env) -> serde_json::Value;

    /// The cloud's settings (timings), for `GET /_fake/settings`.
    fn settings(&self) -> serde_json::Value;

    /// Changes settings from `POST /_fake/settings`; unknown or bad fields are an error
    /// message.
    fn configure(&self, settings: serde_json::Value) -> Result<(), String>;
}

struct Shared<A: Api> {
    api: A,
    env: Env,
    recorder: Recorder,
}

/// A running fake: its URL, faults, recorder and clock. Dropping it stops the server.
pub struct FakeServer {
    addr: SocketAddr,
    env: Env,
    recorder: Recorder,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeServer {
    /// Binds `addr` (port 0 picks a free port) and serves `api` on the current tokio runtime
    /// until the handle is dropped.
    pub async fn start<A: Api>(api: A, addr: SocketAddr) -> std::io::Result<FakeServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let env = Env { clock: Clock::new(), faults: Faults::default(), base_url: format!("http://{addr}") };
        let recorder = Recorder::default();
        let shared = Arc::new(Shared { api, env: env.clone(), recorder: recorder.clone() });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { serve(&shared, req).await }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Ok(FakeServer { addr, env, recorder, stop: Some(stop), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.env.base_url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault rules.
    pub fn faults(&self) -> &Faults {
        &self.env.faults
    }

    /// The request record.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The model's clock.
    pub fn clock(&self) -> &Clock {
        &self.env.clock
    }

    /// Stops accepting connections and closes the open ones.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A lost answer: hyper closes the connection without writing a response when the service
/// fails, which is what a client sees when a response is lost on the way back.
#[derive(Debug)]
struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fake dropped this response on purpose")
    }
}

impl std::error::Error for Lost {}

async fn serve<A: Api>(
    shared: &Shared<A>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Lost> {
    let request = match read(req).await {
        Ok(r) => r,
        Err(e) => return Ok(to_hyper(Response::json(400, &serde_json::json!({ "error": e })))),
    };
    let at_ms = shared.env.clock.now().as_millis() as u64;
    if request.path.starts_with("/_fake/") || request.path == "/_fake" {
        let response = control(shared, &request);
        shared.recorder.record(Recorded {
            seq: 0,
            at_ms,
            method: request.method.clone(),
            uri: request.uri(),
            operation: "_fake.control".into(),
            status: response.status,
            fault: None,
        });
        return Ok(to_hyper(response));
    }
    let (operation, response, fault) = match shared.api.route(&request) {
        Err(e) => ("unknown".to_owned(), e.render(), None),
        Ok((operation, route)) => match shared.env.faults.take_request_fault(&operation, &request.path) {
            Some(Fault::LoseResponse) => {
                // Applied, then the answer is dropped.
                let applied = shared.api.handle(route, &request, &shared.env).unwrap_or_else(|e| e.render());
                tracing::debug!(operation, status = applied.status, "fake: response lost on purpose");
                shared.recorder.record(Recorded {
                    seq: 0,
                    at_ms,
                    method: request.method.clone(),
                    uri: request.uri(),
                    operation,
                    status: 0,
                    fault: Some("lose_response".into()),
                });
                return Err(Lost);
            }
            Some(fault) => {
                let name = fault.name().to_owned();
                (operation, shared.api.fault_error(&fault).render(), Some(name))
            }
            None => {
                let response = shared.api.handle(route, &request, &shared.env).unwrap_or_else(|e| e.render());
                (operation, response, None)
            }
        },
    };
    shared.recorder.record(Recorded {
        seq: 0,
        at_ms,
        method: request.method.clone(),
        uri: request.uri(),
        operation,
        status: response.status,
        fault,
    });
    Ok(to_hyper(response))
}

async fn read(req: hyper::Request<Incoming>) -> Result<Request, String> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|e| format!("cannot read the body: {e}"))?.to_bytes();
    let path = parts.uri.path().split('/').map(percent_decode).collect::<Vec<_>>().join("/");
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect();
    let headers =
        parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    Ok(Request { method: parts.method.as_str().to_owned(), path, query, headers, body })
}

/// Decodes `%XX` escapes; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() =
        hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in response.headers {
        if let (Ok(k), Ok(v)) = (k.parse::<hyper::header::HeaderName>(), v.parse::<hyper::header::HeaderValue>()) {
            out.headers_mut().insert(k, v);
        }
    }
    out
}

fn control<A: Api>(shared: &Shared<A>, req: &Request) -> Response {
    let bad = |message: String| Response::json(400, &serde_json::json!({ "error": message }));
    let env = &shared.env;
    match (req.method.as_str(), req.path.trim_end_matches('/')) {
        ("POST", "/_fake/reset") => {
            shared.api.reset();
            env.faults.clear();
            shared.recorder.clear();
            env.clock.reset();
            Response::ok(&serde_json::json!({ "reset": true }))
        }
        ("GET", "/_fake/faults") => {
            Response::ok(&serde_json::json!({ "rules": env.faults.rules(), "fired": env.faults.fired() }))
        }
        ("POST", "/_fake/faults") => {
            let rules: Vec<FaultRule> = match req.json::<serde_json::Value>() {
                Ok(v @ serde_json::Value::Array(_)) => match serde_json::from_value(v) {
                    Ok(rules) => rules,
                    Err(e) => return bad(format!("not a list of fault rules: {e}")),
                },
                Ok(v) => match serde_json::from_value(v) {
                    Ok(rule) => vec![rule],
                    Err(e) => return bad(format!("not a fault rule: {e}")),
                },
                Err(e) => return bad(format!("not JSON: {e}")),
            };
            let added = rules.len();
            rules.into_iter().for_each(|r| env.faults.add(r));
            Response::ok(&serde_json::json!({ "added": added }))
        }
        ("DELETE", "/_fake/faults") => {
            env.faults.clear();
            Response::ok(&serde_json::json!({ "cleared": true }))
        }
        ("GET", "/_fake/requests") => {
            let log = shared.recorder.log();
            Response::ok(&serde_json::json!({ "counts": shared.recorder.counts(), "log": log }))
        }
        ("DELETE", "/_fake/requests") => {
            shared.recorder.clear();
            Response::ok(&serde_json::json!({ "cleared": true }))
        }
        ("GET", "/_fake/state") => Response::ok(&shared.api.state(env)),
        ("GET", "/_fake/settings") => Response::ok(&shared.api.settings()),
        ("POST", "/_fake/settings") => match req.json::<serde_json::Value>() {
            Ok(v) => match shared.api.configure(v) {
                Ok(()) => Response::ok(&shared.api.settings()),
                Err(e) => bad(e),
            },
            Err(e) => bad(format!("not JSON: {e}")),
        },
        ("GET", "/_fake/clock") => Response::ok(
            &serde_json::json!({ "now_ms": env.clock.now().as_millis() as u64, "offset_ms": env.clock.offset().as_millis() as u64 }),
        ),
        ("POST", "/_fake/clock") => {
            #[derive(serde::Deserialize)]
            struct Advance {
                advance_ms: u64,
            }
            match req.json::<Advance>() {
                Ok(a) => {
                    env.clock.advance(Duration::from_millis(a.advance_ms));
                    Response::ok(&serde_json::json!({ "offset_ms": env.clock.offset().as_millis() as u64 }))
                }
                Err(e) => bad(format!("expected {{\"advance_ms\": N}}: {e}")),
            }
        }
        _ => Response::json(
            404,
            &serde_json::json!({
                "error": format!("no control endpoint {} {}", req.method, req.path),
                "endpoints": BTreeMap::from([
                    ("POST /_fake/reset", "forget everything"),
                    ("GET|POST|DELETE /_fake/faults", "fault rules"),
                    ("GET|DELETE /_fake/requests", "recorded requests"),
                    ("GET /_fake/state", "the model"),
                    ("GET|POST /_fake/settings", "timings"),
                    ("GET|POST /_fake/clock", "advance the clock"),
                ]),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nope(u16);

    impl CloudError for Nope {
        fn status(&self) -> u16 {
            self.0
        }
        fn body(&self) -> serde_json::Value {
            serde_json::json!({ "error": { "code": self.0 } })
        }
    }

    /// A counter API: `POST /count` adds one, `GET /count` reads it.
    #[derive(Default)]
    struct Counter(std::sync::Mutex<u64>);

    impl Api for Counter {
        type Route = bool;
        type Error = Nope;
        fn route(&self, r: &Request) -> Result<(String, bool), Nope> {
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", "/count") => Ok(("counter.add".into(), true)),
                ("GET", "/count") => Ok(("counter.get".into(), false)),
                _ => Err(Nope(404)),
            }
        }
        fn handle(&self, add: bool, _: &Request, _: &Env) -> Result<Response, Nope> {
            let mut n = self.0.lock().unwrap();
            if add {
                *n += 1;
            }
            Ok(Response::ok(&serde_json::json!({ "count": *n })))
        }
        fn fault_error(&self, fault: &Fault) -> Nope {
            match fault {
                Fault::RateLimited { status } | Fault::ServerError { status } => Nope(*status),
                _ => Nope(500),
            }
        }
        fn reset(&self) {
            *self.0.lock().unwrap() = 0;
        }
        fn state(&self, _: &Env) -> serde_json::Value {
            serde_json::json!({ "count": *self.0.lock().unwrap() })
        }
        fn settings(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn configure(&self, _: serde_json::Value) -> Result<(), String> {
            Err("no settings".into())
        }
    }

    #[tokio::test]
    async fn faults_recording_and_a_lost_response_that_was_applied() {
        let server = FakeServer::start(Counter::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = server.url().to_owned();
        let rule = serde_json::json!([
            { "operation": "counter.add", "fault": { "kind": "rate_limited", "status": 429 }, "times": 1 },
            { "operation": "counter.add", "fault": { "kind": "lose_response" }, "times": 1, "skip": 1 },
        ]);
        let added = http.post(format!("{url}/_fake/faults")).json(&rule).send().await.unwrap();
        assert_eq!(added.status(), 200);
        assert_eq!(http.post(format!("{url}/count")).send().await.unwrap().status(), 429);
        assert_eq!(http.post(format!("{url}/count")).send().await.unwrap().status(), 200, "the skipped one");
        let lost = http.post(format!("{url}/count")).send().await;
        assert!(lost.is_err(), "the answer must be lost: {lost:?}");
        let count: serde_json::Value = http.get(format!("{url}/count")).send().await.unwrap().json().await.unwrap();
        assert_eq!(count["count"], 2, "the lost call was applied");
        assert_eq!(http.get(format!("{url}/nowhere")).send().await.unwrap().status(), 404);
        let counts = server.recorder().counts();
        assert_eq!((counts["counter.add"], counts["counter.get"], counts["unknown"]), (3, 1, 1));
        assert_eq!(server.faults().fired()["counter.add:lose_response"], 1);
        let reset = http.post(format!("{url}/_fake/reset")).send().await.unwrap();
        assert_eq!(reset.status(), 200);
        let state: serde_json::Value =
            http.get(format!("{url}/_fake/state")).send().await.unwrap().json().await.unwrap();
        assert_eq!(state["count"], 0);
        let advanced = http.post(format!("{url}/_fake/clock")).body(r#"{"advance_ms": 5000}"#).send().await.unwrap();
        assert_eq!(advanced.status(), 200);
        assert!(server.clock().offset() >= Duration::from_secs(5));
        server.shutdown().await;
        assert!(http.get(format!("{url}/count")).send().await.is_err(), "stopped");
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("labels.a%20%3D%20b"), "labels.a = b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
