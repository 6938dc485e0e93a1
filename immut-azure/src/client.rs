//! ARM calls: the SDKs' single requests (`.send()`) and the JSON requests they have no method
//! for, all through one pipeline whose transport paces, counts and times every attempt and
//! keeps ARM's error body; the long-running-operation poller; and the one function that maps
//! errors to [`immut_core::Error`].

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::auth::TokenCredential;
use azure_core::headers::{HeaderName, Headers};
use azure_core::{Context, Method, Policy, PolicyResult, Request, StatusCode, Url};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use immut_core::{Error, ErrorKind, PacingStats, Result};
use serde_json::Value;

use crate::auth::ARM_SCOPE;
use crate::config::{Bucket, Pacing};

/// The Compute API version of every Compute call (the SDK's `default_tag`).
pub(crate) const COMPUTE_API: &str = "2024-07-01";
/// The Network API version of the load-balancer calls (the network SDK's `default_tag`).
pub(crate) const NETWORK_API: &str = "2024-03-01";
/// The first Network API version with `LoadBalancerLoadBalancingRules_Health`.
pub(crate) const RULE_HEALTH_API: &str = "2024-05-01";

/// An unsuccessful ARM answer, kept whole by the transport: the status, ARM's error code,
/// message and target, and `Retry-After`. Only what ARM said: never a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArmFailure {
    pub status: u16,
    pub code: Option<String>,
    pub message: String,
    pub target: Option<String>,
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ArmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(c) = &self.code {
            write!(f, " {c}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ArmFailure {}

/// What failed: a call, or a long-running operation that ended `Failed` or `Canceled`.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The call failed (ARM's answer, a lost connection, a credential).
    Call(azure_core::Error),
    /// The operation ended with this status and error.
    Operation { status: String, code: String, message: String },
}

/// The codes that mean "no capacity or quota": the deployment fails closed.
const CAPACITY: &[&str] = &[
    "OperationNotAllowed",
    "SkuNotAvailable",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "QuotaExceeded",
];

fn kind_of_code(code: &str) -> Option<ErrorKind> {
    if CAPACITY.iter().any(|c| c.eq_ignore_ascii_case(code)) {
        return Some(ErrorKind::QuotaExceeded);
    }
    Some(match code {
        "ResourceNotFound"
        | "NotFound"
        | "ResourceGroupNotFound"
        | "GalleryImageNotFound"
        | "PlatformImageNotFound"
        | "ImageNotFound" => ErrorKind::NotFound,
        "TooManyRequests" | "SubscriptionRequestsThrottled" | "TenantRequestsThrottled" => ErrorKind::RateLimited,
        "PreconditionFailed" => ErrorKind::Conflict,
        "InvalidParameter"
        | "InvalidRequestContent"
        | "InvalidResourceName"
        | "InvalidResourceReference"
        | "MissingApiVersionParameter"
        | "NoRegisteredProviderFound"
        | "LocationRequired"
        | "InvalidTagNameCharacters"
        | "InvalidTagValueLength"
        | "InvalidTemplate" => ErrorKind::InvalidInput,
        "AuthenticationFailed" | "AuthorizationFailed" | "InvalidAuthenticationToken" | "LinkedAuthorizationFailed" => {
            ErrorKind::PermissionDenied
        }
        "InternalServerError" | "ServiceUnavailable" | "GatewayTimeout" | "BadGateway" | "InternalExecutionError" => {
            ErrorKind::Unavailable
        }
        _ => return None,
    })
}

/// Maps a failed call or operation to an immut error, from ARM's error body
/// (`{"error": {"code", "message", "target", "details"}}`): 429 is `RateLimited` (its
/// `Retry-After` is honoured by the pacing: see [`Pacer::hold`]), 5xx `Unavailable`;
/// `OperationNotAllowed`, `SkuNotAvailable`, `AllocationFailed` and `ZonalAllocationFailed`
/// `QuotaExceeded` (the deployment fails closed); `ResourceNotFound` `NotFound`; 412
/// `Conflict` (retried: a read-modify-write reads again); `InvalidParameter` `InvalidInput`
/// naming the field. A `Failed` or `Canceled` operation carries its error. Only ARM's codes and
/// messages are kept: never a request, a header or a token.
pub(crate) fn map_error(failure: Failure, operation: &str) -> Error {
    let (kind, message, retryable) = match &failure {
        Failure::Operation { status, code, message } => {
            let kind = kind_of_code(code).unwrap_or(if status == "Canceled" {
                ErrorKind::Cancelled
            } else {
                ErrorKind::Other
            });
            let kind = if kind == ErrorKind::Cancelled { ErrorKind::Unavailable } else { kind };
            (kind, format!("the operation ended {status}: {code}: {message}"), None)
        }
        Failure::Call(e) => match e.downcast_ref::<ArmFailure>() {
            Some(f) => {
                let by_status = match f.status {
                    429 => ErrorKind::RateLimited,
                    412 => ErrorKind::Conflict,
                    404 => ErrorKind::NotFound,
                    401 | 403 => ErrorKind::PermissionDenied,
                    409 => ErrorKind::Conflict,
                    400 => ErrorKind::InvalidInput,
                    s if s >= 500 => ErrorKind::Unavailable,
                    _ => ErrorKind::Other,
                };
                let kind = match (f.status, f.code.as_deref().and_then(kind_of_code)) {
                    (429, _) => ErrorKind::RateLimited,
                    (s, _) if s >= 500 => ErrorKind::Unavailable,
                    (_, Some(k)) => k,
                    _ => by_status,
                };
                let mut message = f.to_string();
                if let Some(after) = f.retry_after {
                    message.push_str(&format!(" (Retry-After: {}s)", after.as_secs()));
                }
                let message = match (kind, &f.target) {
                    (ErrorKind::InvalidInput, Some(target)) => format!("{target}: {message}"),
                    _ => message,
                };
                (kind, message, (f.status == 412).then_some(true))
            }
            None => match e.kind() {
                azure_core::error::ErrorKind::Io => (
                    ErrorKind::Unavailable,
                    "the request got no answer (connection failed, closed or timed out)".to_owned(),
                    None,
                ),
                azure_core::error::ErrorKind::Credential => {
                    (ErrorKind::PermissionDenied, format!("no token: {e}"), None)
                }
                azure_core::error::ErrorKind::DataConversion => {
                    (ErrorKind::Other, format!("the answer could not be read: {e}"), None)
                }
                azure_core::error::ErrorKind::HttpResponse { status, error_code } => {
                    let s = u16::from(*status);
                    let kind = if s >= 500 { ErrorKind::Unavailable } else { ErrorKind::Other };
                    (kind, format!("HTTP {s} {}", error_code.clone().unwrap_or_default()), None)
                }
                _ => (ErrorKind::Other, format!("{e}"), None),
            },
        },
    };
    let error = Error::new(kind, message).with_provider("azure").with_operation(operation.to_owned());
    match retryable {
        Some(r) => error.with_retryable(r),
        None => error,
    }
}

/// Which of ARM's buckets a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Read = 0,
    Write = 1,
    Delete = 2,
}

impl Class {
    fn of(method: &Method) -> Class {
        match method {
            Method::Get | Method::Head => Class::Read,
            Method::Delete => Class::Delete,
            _ => Class::Write,
        }
    }

    fn header(self) -> &'static str {
        ["reads", "writes", "deletes"][self as usize]
    }
}

fn limiter(bucket: Bucket) -> DefaultDirectRateLimiter {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_second(nz(bucket.per_second)).allow_burst(nz(bucket.burst)))
}

/// Client-side pacing: ARM's three buckets, what ARM last said is left in each, holds after a
/// 429's `Retry-After`, and a count of every call by operationId.
pub(crate) struct Pacer {
    buckets: [DefaultDirectRateLimiter; 3],
    refill: [u32; 3],
    low_water: u32,
    remaining: Mutex<[Option<(u64, tokio::time::Instant)>; 3]>,
    hold: Mutex<[Option<tokio::time::Instant>; 3]>,
    calls: Mutex<BTreeMap<String, u64>>,
    waits: AtomicU64,
    waited_ms: AtomicU64,
    slowdowns: AtomicU64,
}

impl Pacer {
    pub(crate) fn new(p: Pacing) -> Self {
        Pacer {
            buckets: [limiter(p.reads), limiter(p.writes), limiter(p.deletes)],
            refill: [p.reads.per_second, p.writes.per_second, p.deletes.per_second],
            low_water: p.low_water,
            remaining: Mutex::new([None; 3]),
            hold: Mutex::new([None; 3]),
            calls: Mutex::default(),
            waits: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            slowdowns: AtomicU64::new(0),
        }
    }

    /// Waits until a call of this class may go (a hold from a 429, a bucket ARM reports
    /// nearly empty, the client-side bucket), counting any wait, then counts the call.
    async fn acquire(&self, class: Class, operation: &str) {
        let start = tokio::time::Instant::now();
        let mut waited = false;
        let hold = self.hold.lock().expect("poisoned")[class as usize];
        if let Some(until) = hold.filter(|u| *u > start) {
            tracing::debug!(operation, "honouring ARM's Retry-After");
            tokio::time::sleep_until(until).await;
            waited = true;
        }
        let slow = {
            let mut remaining = self.remaining.lock().expect("poisoned");
            match &mut remaining[class as usize] {
                Some((left, seen)) if *left < u64::from(self.low_water) && seen.elapsed() < Duration::from_secs(60) => {
                    // ARM says the bucket is nearly empty: go at its refill rate, and count the
                    // call against what is left so that concurrent callers spread out.
                    let pause = Duration::from_secs_f64(1.0 / f64::from(self.refill[class as usize].max(1)));
                    *left = left.saturating_sub(1);
                    Some(pause)
                }
                _ => None,
            }
        };
        if let Some(pause) = slow {
            tracing::debug!(operation, remaining = class.header(), "ARM's bucket is nearly empty: slowing down");
            self.slowdowns.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            waited = true;
        }
        let bucket = &self.buckets[class as usize];
        if bucket.check().is_err() {
            bucket.until_ready().await;
            waited = true;
        }
        if waited {
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.waited_ms.fetch_add(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        *self.calls.lock().expect("poisoned").entry(operation.to_owned()).or_default() += 1;
    }

    /// Records what ARM says is left in the bucket of this class.
    fn observe(&self, class: Class, headers: &Headers) {
        let names = [
            format!("x-ms-ratelimit-remaining-subscription-{}", class.header()),
            format!("x-ms-ratelimit-remaining-subscription-global-{}", class.header()),
        ];
        let left = names
            .iter()
            .filter_map(|n| headers.get_optional_str(&HeaderName::from(n.clone()))?.trim().parse::<u64>().ok())
            .min();
        if let Some(left) = left {
            self.remaining.lock().expect("poisoned")[class as usize] = Some((left, tokio::time::Instant::now()));
        }
    }

    /// Holds every call of this class until `after` has passed: how a 429's `Retry-After` is
    /// honoured without a second retry layer (the engine's retry waits here too).
    fn hold(&self, class: Class, after: Duration) {
        let until = tokio::time::Instant::now() + after;
        let mut hold = self.hold.lock().expect("poisoned");
        let slot = &mut hold[class as usize];
        if slot.is_none_or(|u| u < until) {
            *slot = Some(until);
        }
    }

    pub(crate) fn stats(&self) -> PacingStats {
        PacingStats { waits: self.waits.load(Ordering::Relaxed), waited_ms: self.waited_ms.load(Ordering::Relaxed) }
    }

    pub(crate) fn slowdowns(&self) -> u64 {
        self.slowdowns.load(Ordering::Relaxed)
    }

    pub(crate) fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("poisoned").clone()
    }
}

fn retry_after(headers: &Headers) -> Option<Duration> {
    let get = |n: &'static str| headers.get_optional_str(&HeaderName::from_static(n)).map(str::trim);
    get("retry-after-ms")
        .and_then(|v| v.parse::<u64>().ok().map(Duration::from_millis))
        .or_else(|| get("x-ms-retry-after-ms").and_then(|v| v.parse::<u64>().ok().map(Duration::from_millis)))
        .or_else(|| get("retry-after").and_then(|v| v.parse::<u64>().ok().map(Duration::from_secs)))
}

/// The pipeline's transport: paces and counts every attempt, bounds it in time, records what
/// ARM says is left of its buckets, and turns an unsuccessful answer into an [`ArmFailure`]
/// that keeps ARM's error body and `Retry-After` (azure_core's own error keeps neither).
#[derive(Debug)]
pub(crate) struct Transport {
    http: Arc<dyn azure_core::HttpClient>,
    pacer: Arc<Pacer>,
    timeout: Duration,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("calls", &self.calls).finish_non_exhaustive()
    }
}

#[async_trait]
impl Policy for Transport {
    async fn send(&self, _ctx: &Context, request: &mut Request, _next: &[Arc<dyn Policy>]) -> PolicyResult {
        let class = Class::of(request.method());
        let operation = crate::fake::operation_id(request.method().as_ref(), request.url().path());
        self.pacer.acquire(class, operation).await;
        let response = match tokio::time::timeout(self.timeout, self.http.execute_request(request)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(azure_core::Error::message(azure_core::error::ErrorKind::Io, "the attempt timed out"));
            }
        };
        self.pacer.observe(class, response.headers());
        if response.status().is_success() || response.status() == StatusCode::Accepted {
            return Ok(response);
        }
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await.unwrap_or_default();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let error = parsed.get("error").unwrap_or(&parsed);
        let failure = ArmFailure {
            status: u16::from(status),
            code: error.get("code").and_then(Value::as_str).map(str::to_owned),
            message: error.get("message").and_then(Value::as_str).unwrap_or("(no error body)").to_owned(),
            target: error.get("target").and_then(Value::as_str).map(str::to_owned),
            retry_after: retry_after(&headers),
        };
        if matches!(failure.status, 429 | 503)
            && let Some(after) = failure.retry_after
        {
            self.pacer.hold(class, after);
        }
        Err(azure_core::Error::new(
            azure_core::error::ErrorKind::HttpResponse { status, error_code: failure.code.clone() },
            failure,
        ))
    }
}

/// The SDK clients, the raw pipeline, the scope of the provider, and its pacing.
pub(crate) struct Clients {
    pub compute: azure_mgmt_compute::Client,
    pub network: azure_mgmt_network::Client,
    pipeline: azure_core::Pipeline,
    credential: Arc<crate::auth::Cached>,
    pub endpoint: Url,
    pub subscription: String,
    pub group: String,
    pub location: String,
    pub pacer: Arc<Pacer>,
    poll: Duration,
    op_timeout: Duration,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("endpoint", &self.endpoint.as_str())
            .field("subscription", &self.subscription)
            .field("group", &self.group)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// What the builder hands over.
pub(crate) struct ClientSettings {
    pub endpoint: Url,
    pub subscription: String,
    pub group: String,
    pub location: String,
    pub pacing: Pacing,
    pub poll: Duration,
    pub op_timeout: Duration,
    pub attempt_timeout: Duration,
}

/// An answer read whole.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Headers,
    pub body: Value,
}

impl Clients {
    pub(crate) fn new(credential: Arc<crate::auth::Cached>, s: ClientSettings) -> Result<Self> {
        let pacer = Arc::new(Pacer::new(s.pacing));
        let transport = Arc::new(Transport {
            http: azure_core::new_http_client(),
            pacer: pacer.clone(),
            timeout: s.attempt_timeout,
        });
        // The engine owns retries (backoff with jitter): the SDK's retry policy is off, so a
        // throttled call is never retried by two layers.
        let options = || {
            azure_core::ClientOptions::new(azure_core::TransportOptions::new_custom_policy(transport.clone()))
                .retry(azure_core::RetryOptions::none())
        };
        let scopes = [ARM_SCOPE];
        let bad = |_| Error::invalid("endpoint", "the ARM clients could not be built for this endpoint");
        let compute = azure_mgmt_compute::Client::builder(credential.clone())
            .endpoint(s.endpoint.clone())
            .scopes(&scopes)
            .retry(azure_core::RetryOptions::none())
            .transport(azure_core::TransportOptions::new_custom_policy(transport.clone()))
            .build()
            .map_err(bad)?;
        let network = azure_mgmt_network::Client::builder(credential.clone())
            .endpoint(s.endpoint.clone())
            .scopes(&scopes)
            .retry(azure_core::RetryOptions::none())
            .transport(azure_core::TransportOptions::new_custom_policy(transport.clone()))
            .build()
            .map_err(bad)?;
        let pipeline = azure_core::Pipeline::new(
            Some("immut-azure"),
            Some(env!("CARGO_PKG_VERSION")),
            options(),
            Vec::new(),
            Vec::new(),
        );
        Ok(Clients {
            compute,
            network,
            pipeline,
            credential,
            endpoint: s.endpoint,
            subscription: s.subscription,
            group: s.group,
            location: s.location,
            pacer,
            poll: s.poll,
            op_timeout: s.op_timeout,
        })
    }

    /// How many tokens were fetched (a cache check for tests).
    pub(crate) fn tokens_fetched(&self) -> u64 {
        self.credential.fetched()
    }

    /// `/subscriptions/S/resourceGroups/G/providers/...` of this provider's group.
    pub(crate) fn group_path(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}/providers", self.subscription, self.group)
    }

    /// An absolute URL for a path (and query) on the ARM endpoint.
    pub(crate) fn url(&self, path_and_query: &str) -> Result<Url> {
        self.endpoint
            .join(path_and_query)
            .map_err(|_| Error::invalid("endpoint", format!("cannot join {path_and_query}")))
    }

    /// One request through the pipeline (bearer token, pacing, counting), read whole.
    pub(crate) async fn raw(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: &[(&'static str, String)],
        op: &str,
    ) -> Result<Answer> {
        let mut request = Request::new(url, method);
        let token = self.credential.get_token(&[ARM_SCOPE]).await.map_err(|e| map_error(Failure::Call(e), op))?;
        request.insert_header(azure_core::headers::AUTHORIZATION, format!("Bearer {}", token.token.secret()));
        for (k, v) in headers {
            request.insert_header(*k, v.clone());
        }
        match body {
            Some(b) => {
                request.insert_header("content-type", "application/json");
                request.set_body(serde_json::to_vec(b).expect("JSON serializes"));
            }
            None => request.set_body(azure_core::EMPTY_BODY),
        }
        let response =
            self.pipeline.send(&Context::default(), &mut request).await.map_err(|e| map_error(Failure::Call(e), op))?;
        read(response, op).await
    }

    /// Polls a long-running operation to its end, the way ARM's guidelines say: the
    /// `Azure-AsyncOperation` status resource when there is one, else `Location` (202 while it
    /// runs), else the resource's own `provisioningState`; every wait is the answer's
    /// `Retry-After` (at least the poll interval). A `Failed` or `Canceled` end is an error
    /// that carries the operation's error; one that outlasts the timeout is `Unavailable`.
    pub(crate) async fn wait(&self, first: &Headers, resource: Option<Url>, op: &str) -> Result<()> {
        self.poll(first, resource, op, false).await.map(|_| ())
    }

    /// [`Clients::wait`] for an operation whose result is what its `Location` answers at the
    /// end (a POST whose reference says `final-state-via: location`): that answer's body, read
    /// after `Azure-AsyncOperation` says `Succeeded` when both are given.
    pub(crate) async fn outcome(&self, first: &Headers, op: &str) -> Result<Value> {
        self.poll(first, None, op, true).await
    }

    async fn poll(&self, first: &Headers, resource: Option<Url>, op: &str, result_at_location: bool) -> Result<Value> {
        let header = |h: &Headers, n: &'static str| h.get_optional_str(&HeaderName::from_static(n)).map(str::to_owned);
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let mut delay = retry_after(first);
        let mut status_url = header(first, "azure-asyncoperation");
        let mut location = header(first, "location");
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the operation is not done after {:?}", self.op_timeout),
                )
                .with_provider("azure")
                .with_operation(op.to_owned()));
            }
            tokio::time::sleep(delay.unwrap_or(self.poll).max(self.poll)).await;
            if let Some(url) = &status_url {
                let url = Url::parse(url).map_err(|_| {
                    Error::new(ErrorKind::Other, "a bad Azure-AsyncOperation URL").with_provider("azure")
                })?;
                let a = self.raw(Method::Get, url, None, &[], op).await?;
                delay = retry_after(&a.headers);
                let status = a.body.get("status").and_then(Value::as_str).unwrap_or("InProgress").to_owned();
                match status.as_str() {
                    "Succeeded" if result_at_location && location.is_some() => {
                        // Done: the result is one more read away, at its Location.
                        status_url = None;
                        continue;
                    }
                    "Succeeded" => return Ok(Value::Null),
                    "Failed" | "Canceled" => {
                        let e = a.body.get("error").cloned().unwrap_or(Value::Null);
                        let code = e.get("code").and_then(Value::as_str).unwrap_or("OperationFailed").to_owned();
                        let message = e.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
                        return Err(map_error(Failure::Operation { status, code, message }, op));
                    }
                    _ => continue,
                }
            }
            if let Some(url) = location.clone() {
                let url = Url::parse(&url)
                    .map_err(|_| Error::new(ErrorKind::Other, "a bad Location URL").with_provider("azure"))?;
                match self.raw(Method::Get, url, None, &[], op).await {
                    Ok(a) if a.status == 202 => {
                        delay = retry_after(&a.headers);
                        if let Some(next) = header(&a.headers, "location") {
                            location = Some(next);
                        }
                        continue;
                    }
                    Ok(a) => return Ok(a.body),
                    // The operation's own failure is the final answer of its Location: mapped
                    // from its code like any other.
                    Err(e) => return Err(e),
                }
            }
            let Some(url) = resource.clone() else { return Ok(Value::Null) };
            let a = self.raw(Method::Get, url, None, &[], op).await?;
            match a.body.pointer("/properties/provisioningState").and_then(Value::as_str) {
                None | Some("Succeeded") => return Ok(Value::Null),
                Some(s @ ("Failed" | "Canceled")) => {
                    let (code, message) = failed_status(&a.body);
                    return Err(map_error(Failure::Operation { status: s.to_owned(), code, message }, op));
                }
                _ => delay = retry_after(&a.headers),
            }
        }
    }

    /// Polls an SDK response's operation, when it started one (201, 202, or an
    /// `Azure-AsyncOperation` header).
    pub(crate) async fn wait_response(
        &self,
        status: u16,
        headers: &Headers,
        resource: Option<Url>,
        op: &str,
    ) -> Result<()> {
        let has = |n: &'static str| headers.get_optional_str(&HeaderName::from_static(n)).is_some();
        if status == 201 || status == 202 || has("azure-asyncoperation") || has("location") {
            self.wait(headers, resource, op).await
        } else {
            Ok(())
        }
    }

    pub(crate) fn paced(&self) -> PacingStats {
        self.pacer.stats()
    }
}

/// Why a resource's provisioning failed, from its instance view when the answer has one (a VM
/// read with `$expand=instanceView` lists `ProvisioningState/failed/<code>` with the message,
/// the error its operation would have carried); `ProvisioningFailed` otherwise.
fn failed_status(resource: &Value) -> (String, String) {
    let statuses = resource.pointer("/properties/instanceView/statuses").and_then(Value::as_array);
    statuses
        .into_iter()
        .flatten()
        .find_map(|s| {
            let code = s.get("code")?.as_str()?.strip_prefix("ProvisioningState/failed/")?;
            let message = s.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
            Some((code.to_owned(), message))
        })
        .unwrap_or_else(|| ("ProvisioningFailed".into(), "the resource's provisioningState".into()))
}

/// Reads a response whole; the body as JSON (`null` when empty).
pub(crate) async fn read(response: azure_core::Response, op: &str) -> Result<Answer> {
    let (status, headers, body) = response.deconstruct();
    let bytes = body.collect().await.map_err(|e| map_error(Failure::Call(e), op))?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(ErrorKind::Other, format!("the answer is not JSON: {e}"))
                .with_provider("azure")
                .with_operation(op.to_owned())
        })?
    };
    Ok(Answer { status: u16::from(status), headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(status: u16, code: &str, message: &str, target: Option<&str>) -> Failure {
        let failure = ArmFailure {
            status,
            code: Some(code.into()),
            message: message.into(),
            target: target.map(str::to_owned),
            retry_after: (status == 429).then_some(Duration::from_secs(7)),
        };
        Failure::Call(azure_core::Error::new(
            azure_core::error::ErrorKind::HttpResponse {
                status: StatusCode::try_from(status).unwrap(),
                error_code: Some(code.into()),
            },
            failure,
        ))
    }

    #[test]
    fn arm_error_bodies_map_to_kinds() {
        for (failure, kind) in [
            (arm(429, "TooManyRequests", "throttled", None), ErrorKind::RateLimited),
            (arm(500, "InternalServerError", "x", None), ErrorKind::Unavailable),
            (arm(503, "ServiceUnavailable", "x", None), ErrorKind::Unavailable),
            (
                arm(409, "OperationNotAllowed", "exceeding approved standardBSFamily Cores quota", None),
                ErrorKind::QuotaExceeded,
            ),
            (arm(409, "SkuNotAvailable", "not available in location", None), ErrorKind::QuotaExceeded),
            (arm(404, "ResourceNotFound", "not found", None), ErrorKind::NotFound),
            (arm(412, "PreconditionFailed", "etag", None), ErrorKind::Conflict),
            (arm(400, "InvalidParameter", "bad size", Some("hardwareProfile.vmSize")), ErrorKind::InvalidInput),
            (arm(403, "AuthorizationFailed", "no role", None), ErrorKind::PermissionDenied),
            (
                Failure::Operation {
                    status: "Failed".into(),
                    code: "AllocationFailed".into(),
                    message: "no capacity".into(),
                },
                ErrorKind::QuotaExceeded,
            ),
            (
                Failure::Operation {
                    status: "Failed".into(),
                    code: "ZonalAllocationFailed".into(),
                    message: "zone 1".into(),
                },
                ErrorKind::QuotaExceeded,
            ),
            (
                Failure::Operation { status: "Canceled".into(), code: "OperationCanceled".into(), message: "".into() },
                ErrorKind::Unavailable,
            ),
        ] {
            let text = format!("{failure:?}");
            let e = map_error(failure, "VirtualMachines_CreateOrUpdate");
            assert_eq!(e.kind(), kind, "{text}: {e}");
            assert!(e.to_string().contains("[azure VirtualMachines_CreateOrUpdate]"), "{e}");
        }
        let bad = map_error(arm(400, "InvalidParameter", "bad size", Some("hardwareProfile.vmSize")), "op");
        assert!(bad.message().starts_with("hardwareProfile.vmSize: "), "{bad}");
        let throttled = map_error(arm(429, "TooManyRequests", "slow", None), "op");
        assert!(throttled.is_retryable() && throttled.message().contains("Retry-After: 7s"), "{throttled}");
        assert!(
            map_error(arm(412, "PreconditionFailed", "etag", None), "op").is_retryable(),
            "412 is read again and retried"
        );
        let failed = map_error(
            Failure::Operation {
                status: "Failed".into(),
                code: "AllocationFailed".into(),
                message: "no capacity".into(),
            },
            "op",
        );
        assert!(!failed.is_retryable() && failed.message().contains("AllocationFailed: no capacity"), "{failed}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_holds_after_retry_after_and_slows_when_arm_says_little_is_left() {
        let pacer = Pacer::new(Pacing::default());
        pacer.hold(Class::Write, Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        pacer.acquire(Class::Write, "VirtualMachines_CreateOrUpdate").await;
        assert!(start.elapsed() >= Duration::from_secs(3), "the Retry-After is waited out");
        pacer.acquire(Class::Read, "VirtualMachines_List").await;
        assert_eq!(pacer.stats().waits, 1, "reads were not held");
        let mut headers = Headers::new();
        headers.insert("x-ms-ratelimit-remaining-subscription-reads", "3");
        pacer.observe(Class::Read, &headers);
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            pacer.acquire(Class::Read, "VirtualMachines_List").await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(3 * 40 - 1),
            "at the refill rate of 25/s: {:?}",
            start.elapsed()
        );
        assert_eq!(pacer.slowdowns(), 3);
        assert_eq!(pacer.calls()["VirtualMachines_List"], 4);
    }
}
