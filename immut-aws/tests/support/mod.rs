//! moto for the AWS tests: one server per test process on 127.0.0.1, started here (never
//! assumed to be running), reset before each test, and stopped by its pid when the test
//! process exits. Tests take turns on it. A small proxy in front injects throttling, 5xx
//! answers, lost responses, stalls and capacity errors per subnet, records requests, and can
//! stand in for ELB's health checks: moto reports every target `healthy` at once, the proxy
//! rewrites DescribeTargetHealth so that a new target stays `initial` for a while.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use immut_aws::{AwsProvider, Pacing};
use immut_core::semver::Version;
use immut_core::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};

/// A default AMI that ships with moto (Ubuntu 14.04).
pub const AMI: &str = "ami-1e749f67";
/// Another moto default AMI, for a second release.
pub const AMI_2: &str = "ami-03cf127a";

pub struct Moto {
    pub endpoint: String,
    /// The shell that runs moto and stops it when this process ends.
    _watchdog: Mutex<std::process::Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start() -> Moto {
    let python = immut_core::test_tools::python_with("moto.server").unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The shell watches this process and stops moto, by its pid, once this process is gone.
    let script = format!(
        "\"$IMMUT_MOTO_PYTHON\" -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         trap 'kill $m 2>/dev/null' EXIT; \
         while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done",
        parent = std::process::id()
    );
    let watchdog = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("MOTO_ENABLE_AMI_VALIDATION", "true")
        .env("IMMUT_MOTO_PYTHON", &python)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("sh starts");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start on {endpoint} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { endpoint, _watchdog: Mutex::new(watchdog) }
}

/// A turn on moto: exclusive use of a freshly reset server until dropped.
pub struct Turn {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    pub endpoint: String,
}

pub async fn turn() -> Turn {
    let guard = TURN.lock().await;
    let endpoint = tokio::task::spawn_blocking(|| MOTO.get_or_init(start).endpoint.clone()).await.unwrap();
    let reset = reqwest::Client::new().post(format!("{endpoint}/moto-api/reset")).send().await.unwrap();
    assert!(reset.status().is_success(), "moto reset: {}", reset.status());
    Turn { _turn: guard, endpoint }
}

/// A provider against `endpoint` with static test credentials and generous pacing.
pub async fn provider(endpoint: &str) -> AwsProvider {
    provider_with(endpoint, Pacing::default()).await
}

pub async fn provider_with(endpoint: &str, pacing: Pacing) -> AwsProvider {
    builder(endpoint).pacing(pacing).build().await.unwrap()
}

/// The default VPC's id and its subnets (sorted by zone), as moto creates them.
pub async fn default_vpc(provider: &AwsProvider) -> (String, Vec<String>) {
    use aws_sdk_ec2::types::Filter;
    let vpcs = provider
        .ec2()
        .describe_vpcs()
        .filters(Filter::builder().name("is-default").values("true").build())
        .send()
        .await
        .unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_owned();
    let subnets = provider
        .ec2()
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .send()
        .await
        .unwrap();
    let mut by_zone: Vec<(String, String)> = subnets
        .subnets()
        .iter()
        .map(|s| (s.availability_zone().unwrap().to_owned(), s.subnet_id().unwrap().to_owned()))
        .collect();
    by_zone.sort();
    (vpc, by_zone.into_iter().map(|(_, s)| s).collect())
}

/// A builder for moto, which differs from EC2 in two ways the provider declares: it ignores
/// ClientToken (a repeated RunInstances launches again), so the provider must not promise
/// idempotent launches and the engine looks up by token first; and it is strongly consistent
/// (an instance shows in the first describe), so there is no window to wait out.
pub fn builder(endpoint: &str) -> immut_aws::AwsBuilder {
    AwsProvider::builder()
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials("testing", "testing")
        .honours_client_token(false)
        .consistency_window(Duration::ZERO)
}

/// Creates an IAM instance profile in moto (the Rust tests link no IAM client; boto3 ships with
/// moto in the test tools' environment).
pub fn create_instance_profile(endpoint: &str, name: &str) {
    let python = immut_core::test_tools::python_with("moto.server").unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        "import boto3; boto3.client('iam', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_instance_profile(InstanceProfileName='{name}')"
    );
    let status = std::process::Command::new(python).args(["-c", &script]).status().expect("python runs");
    assert!(status.success(), "creating the instance profile {name} in moto failed");
}

pub fn release(service: &str, version: (u64, u64, u64), ami: &str) -> Release {
    let artifact = ArtifactSpec::new("web", Version::new(version.0, version.1, version.2), ami);
    let spec = LaunchSpec { machine_type: Some("t3.micro".into()), ..LaunchSpec::default() };
    Release::new(service, &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
}

/// What the proxy does to requests for an action (`RunInstances`, `DescribeInstances`, ...).
#[derive(Debug, Default, Clone)]
pub struct FaultPlan {
    /// Answer this many requests with a throttling error.
    pub throttle: usize,
    /// Then answer this many with HTTP 500.
    pub server_errors: usize,
    /// Forward this many, but answer 503 instead of the real response (a lost response).
    pub lose_responses: usize,
    /// Answer this many with InsufficientInstanceCapacity.
    pub no_capacity: usize,
    /// Hold this many answers back for `stall_for` before sending them (a stalled call).
    pub stall: usize,
    /// How long a stalled answer is held back.
    pub stall_for: Duration,
}

/// One request the proxy saw: when, its decoded form (`Key=value` pairs), and the access key
/// id it was signed with (SigV4's `Credential=`; the id is not secret, the signature is not kept).
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub form: BTreeMap<String, String>,
    pub access_key_id: Option<String>,
    /// Whether it carried a session token (`X-Amz-Security-Token`) that STS issued through
    /// this proxy.
    pub issued_session: bool,
}

/// The access key id of a SigV4 `Authorization` header.
fn access_key_id(headers: &hyper::HeaderMap) -> Option<String> {
    let auth = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_owned())
}

/// Decodes `application/x-www-form-urlencoded`.
pub fn decode_form(body: &str) -> BTreeMap<String, String> {
    fn unescape(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// The proxy's stand-in for ELB's health checks: a target stays `initial` for `delay` after
/// the proxy first sees it registered in a group.
#[derive(Debug, Default)]
struct HealthDelay {
    delay: Option<Duration>,
    /// (group, target) -> when first seen registered, and the delay in force then.
    first_seen: BTreeMap<(String, String), (Instant, Duration)>,
    /// (group, target) -> when first reported healthy.
    healthy_at: BTreeMap<(String, String), Instant>,
}

/// EC2's limit of values in one filter; moto does not enforce it, the proxy does.
pub const MAX_FILTER_VALUES: usize = 200;

/// The largest number of values any one `Filter.N` of an EC2 query holds.
fn most_filter_values(form: &str) -> usize {
    let mut per_filter: BTreeMap<&str, usize> = BTreeMap::new();
    for key in form.split('&').filter_map(|kv| kv.split('=').next()) {
        // Filter.<n>.Value.<m>
        let mut parts = key.split('.');
        if let (Some("Filter"), Some(n), Some("Value"), Some(_)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            *per_filter.entry(n).or_default() += 1;
        }
    }
    per_filter.into_values().max().unwrap_or(0)
}

/// A fault-injecting HTTP proxy in front of moto. It also refuses, as EC2 does, a filter with
/// more than [`MAX_FILTER_VALUES`] values (counted under `{action}:too_many_filter_values`).
#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    plans: Arc<Mutex<BTreeMap<String, FaultPlan>>>,
    injected: Arc<Mutex<BTreeMap<String, usize>>>,
    seen: Arc<Mutex<Vec<(String, Seen)>>>,
    no_capacity_in: Arc<Mutex<BTreeMap<String, String>>>,
    health: Arc<Mutex<HealthDelay>>,
    /// The secret keys and session tokens STS issued through the proxy (never printed).
    issued: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let proxy = FaultProxy {
            endpoint: format!("http://{addr}"),
            plans: Arc::default(),
            injected: Arc::default(),
            seen: Arc::default(),
            no_capacity_in: Arc::default(),
            health: Arc::default(),
            issued: Arc::default(),
        };
        let (state, upstream) = (proxy.clone(), upstream.to_owned());
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (state, upstream, client) = (state.clone(), upstream.clone(), client.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (state, upstream, client) = (state.clone(), upstream.clone(), client.clone());
                        async move { Ok::<_, Infallible>(state.handle(req, &upstream, &client).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        proxy
    }

    /// Sets the plan for an action.
    pub fn plan(&self, action: &str, plan: FaultPlan) {
        self.plans.lock().unwrap().insert(action.to_owned(), plan);
    }

    /// How many faults were injected, by kind.
    pub fn injected(&self) -> BTreeMap<String, usize> {
        self.injected.lock().unwrap().clone()
    }

    /// Every request so far, with its action, in order.
    pub fn all_requests(&self) -> Vec<(String, Seen)> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request for `action` so far, in order.
    pub fn requests(&self, action: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|(a, _)| a == action).map(|(_, s)| s.clone()).collect()
    }

    /// RunInstances into this subnet answers `code` (InsufficientInstanceCapacity,
    /// InsufficientFreeAddressesInSubnet, ...), every time.
    pub fn no_capacity_in(&self, subnet: &str, code: &str) {
        self.no_capacity_in.lock().unwrap().insert(subnet.to_owned(), code.to_owned());
    }

    /// From now on, a target stays `initial` (`Elb.InitialHealthChecking`) in every
    /// DescribeTargetHealth answer for `delay` after the proxy first sees it registered in its
    /// group, as ELB reports a target until its health checks pass. Targets seen before keep
    /// the delay they were seen with.
    pub fn delay_target_health(&self, delay: Duration) {
        self.health.lock().unwrap().delay = Some(delay);
    }

    /// When the proxy first reported this target `healthy` in this group.
    pub fn healthy_at(&self, group: &str, target: &str) -> Option<Instant> {
        self.health.lock().unwrap().healthy_at.get(&(group.to_owned(), target.to_owned())).copied()
    }

    /// Rewrites a DescribeTargetHealth answer for `group` (see [`FaultProxy::delay_target_health`]).
    fn rewrite_target_health(&self, group: &str, xml: &str) -> String {
        let mut h = self.health.lock().unwrap();
        let Some(delay) = h.delay else { return xml.to_owned() };
        let now = Instant::now();
        let mut present = Vec::new();
        let mut out = String::with_capacity(xml.len());
        let mut rest = xml;
        while let Some(start) = rest.find("<member>") {
            let Some(end) = rest[start..].find("</member>").map(|e| start + e + "</member>".len()) else { break };
            out.push_str(&rest[..start]);
            let mut member = rest[start..end].to_owned();
            let id = member.split("<Id>").nth(1).and_then(|r| r.split("</Id>").next()).unwrap_or("").to_owned();
            let key = (group.to_owned(), id.clone());
            if member.contains("<State>healthy</State>") {
                present.push(key.clone());
                let (first, delay) = *h.first_seen.entry(key.clone()).or_insert((now, delay));
                if now < first + delay {
                    member = member.replace(
                        "<State>healthy</State>",
                        "<State>initial</State><Reason>Elb.InitialHealthChecking</Reason><Description>Initial health checks in progress</Description>",
                    );
                } else {
                    h.healthy_at.entry(key).or_insert(now);
                }
            }
            out.push_str(&member);
            rest = &rest[end..];
        }
        out.push_str(rest);
        // A target that left the group starts over when it is registered again.
        h.first_seen.retain(|(g, t), _| g != group || present.iter().any(|(pg, pt)| pg == g && pt == t));
        out
    }

    async fn handle(&self, req: Request<Incoming>, upstream: &str, client: &reqwest::Client) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let form = String::from_utf8_lossy(&body).to_string();
        let decoded = decode_form(&form);
        let action = decoded.get("Action").cloned().unwrap_or_default();
        let is_ec2 = form.contains("Version=2016-11-15");
        let access_key_id = access_key_id(&parts.headers);
        let issued_session = parts
            .headers
            .get("x-amz-security-token")
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| self.issued.lock().unwrap().iter().any(|s| s == t));
        self.seen
            .lock()
            .unwrap()
            .push((action.clone(), Seen { at: Instant::now(), form: decoded.clone(), access_key_id, issued_session }));
        let no_capacity = match (action.as_str(), decoded.get("SubnetId")) {
            ("RunInstances", Some(subnet)) => self.no_capacity_in.lock().unwrap().get(subnet).cloned(),
            _ => None,
        };
        if let Some(code) = no_capacity {
            let subnet = &decoded["SubnetId"];
            *self.injected.lock().unwrap().entry(format!("RunInstances:no_capacity:{subnet}")).or_default() += 1;
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>No capacity for {subnet} in its Availability Zone.</Message></Error></Errors><RequestID>fault</RequestID></Response>"
            );
            let mut response = Response::new(Full::new(Bytes::from(xml)));
            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            response.headers_mut().insert("content-type", "text/xml".parse().unwrap());
            return response;
        }
        if is_ec2 && most_filter_values(&form) > MAX_FILTER_VALUES {
            *self.injected.lock().unwrap().entry(format!("{action}:too_many_filter_values")).or_default() += 1;
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>InvalidParameterValue</Code><Message>The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
            );
            let mut response = Response::new(Full::new(Bytes::from(xml)));
            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
            response.headers_mut().insert("content-type", "text/xml".parse().unwrap());
            return response;
        }
        let fault = {
            let mut plans = self.plans.lock().unwrap();
            plans.get_mut(&action).and_then(|p| {
                let pick = |n: &mut usize, kind: &'static str| {
                    (*n > 0).then(|| {
                        *n -= 1;
                        kind
                    })
                };
                pick(&mut p.throttle, "throttle")
                    .or_else(|| pick(&mut p.server_errors, "server_error"))
                    .or_else(|| pick(&mut p.no_capacity, "no_capacity"))
                    .or_else(|| pick(&mut p.lose_responses, "lost_response"))
                    .or_else(|| pick(&mut p.stall, "stall"))
            })
        };
        if fault == Some("stall") {
            let pause = self.plans.lock().unwrap().get(&action).map(|p| p.stall_for).unwrap_or_default();
            *self.injected.lock().unwrap().entry(format!("{action}:stall")).or_default() += 1;
            tokio::time::sleep(pause).await;
            return forward(client, upstream, &parts, body).await;
        }
        if let Some(kind) = fault {
            *self.injected.lock().unwrap().entry(format!("{action}:{kind}")).or_default() += 1;
            if kind == "lost_response" {
                let _ = forward(client, upstream, &parts, body.clone()).await;
            }
            let (status, code, message) = match kind {
                "throttle" if is_ec2 => (503, "RequestLimitExceeded", "Request limit exceeded."),
                "throttle" => (400, "Throttling", "Rate exceeded"),
                "no_capacity" => (500, "InsufficientInstanceCapacity", "We currently do not have sufficient capacity."),
                _ => (500, "InternalError", "An internal error has occurred"),
            };
            let xml = if is_ec2 {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
                )
            } else {
                format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
                )
            };
            let mut response = Response::new(Full::new(Bytes::from(xml)));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            response.headers_mut().insert("content-type", "text/xml".parse().unwrap());
            return response;
        }
        let response = forward(client, upstream, &parts, body).await;
        if action == "DescribeTargetHealth"
            && let Some(group) = decoded.get("TargetGroupArn")
        {
            let (mut head, bytes) = response.into_parts();
            let bytes = bytes.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let xml = self.rewrite_target_health(group, &String::from_utf8_lossy(&bytes));
            head.headers.remove("content-length");
            return Response::from_parts(head, Full::new(Bytes::from(xml)));
        }
        if action.starts_with("AssumeRole") {
            let (head, bytes) = response.into_parts();
            let bytes = bytes.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let xml = String::from_utf8_lossy(&bytes);
            for tag in ["SecretAccessKey", "SessionToken"] {
                if let Some(value) =
                    xml.split(&format!("<{tag}>")).nth(1).and_then(|r| r.split(&format!("</{tag}>")).next())
                {
                    self.issued.lock().unwrap().push(value.to_owned());
                }
            }
            return Response::from_parts(head, Full::new(bytes));
        }
        response
    }

    /// Whether `text` shows any secret key or session token STS issued through the proxy.
    pub fn shows_an_issued_secret(&self, text: &str) -> bool {
        self.issued.lock().unwrap().iter().any(|s| text.contains(s.as_str()))
    }

    /// How many secrets (secret keys and session tokens) STS issued through the proxy.
    pub fn issued_secrets(&self) -> usize {
        self.issued.lock().unwrap().len()
    }
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut request = client.request(parts.method.as_str().parse().unwrap(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut response = Response::new(Full::new(bytes));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            for (name, value) in &headers {
                if name != "content-length"
                    && name != "transfer-encoding"
                    && let (Ok(n), Ok(v)) = (
                        name.as_str().parse::<hyper::header::HeaderName>(),
                        hyper::header::HeaderValue::from_bytes(value.as_bytes()),
                    )
                {
                    response.headers_mut().insert(n, v);
                }
            }
            response
        }
        Err(e) => {
            let mut response = Response::new(Full::new(Bytes::from(format!("proxy: {e}"))));
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            response
        }
    }
}
