//! Compute calls through the official client, paced by client-side token buckets and counted;
//! the long-running-operation loop; and the one function that maps errors to
//! [`immut_core::Error`].

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use google_cloud_compute_v1::client::{BackendServices, Disks, Images, InstanceGroups, Instances, Regions};
use google_cloud_compute_v1::model;
use google_cloud_gax::error::rpc::StatusDetails;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use immut_core::{Error, ErrorKind, PacingStats, Result};

use crate::config::{Bucket, Pacing};

/// What failed: a call the API answered with an error (or that never got an answer), or a
/// long-running operation that reached `DONE` with an `error`.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The call failed.
    Call(google_cloud_gax::error::Error),
    /// The operation ended with these `(code, message)` errors and this HTTP status.
    Operation { errors: Vec<(String, String)>, http_status: Option<i32> },
}

/// The reasons (`rateLimitExceeded`, `notFound`, ...) and the message of an API error body.
fn reasons(e: &google_cloud_gax::error::Error) -> (Vec<String>, String) {
    match e.status() {
        Some(s) => (
            s.details
                .iter()
                .filter_map(|d| match d {
                    StatusDetails::ErrorInfo(info) => Some(info.reason.clone()),
                    _ => None,
                })
                .collect(),
            s.message.clone(),
        ),
        None => (Vec::new(), String::new()),
    }
}

/// The field a 400 names: Compute words it `Invalid value for field 'resource.machineType'`.
fn field_of(message: &str) -> Option<&str> {
    let rest = message.split("for field '").nth(1)?;
    rest.split('\'').next()
}

/// Maps a failed call or operation to an immut error. The HTTP status decides first (the
/// client reports Compute errors with an `Unknown` code, since Compute's bodies carry no
/// `status` string), then the reasons of the body; operation errors by their code. Only the
/// API's codes, reasons and messages are kept: never a request, a header or a credential.
pub(crate) fn map_error(failure: Failure, operation: &'static str) -> Error {
    let (kind, message, retryable) = match &failure {
        Failure::Operation { errors, http_status } => {
            let codes: Vec<&str> = errors.iter().map(|(c, _)| c.as_str()).collect();
            let text = errors.iter().map(|(c, m)| format!("{c}: {m}")).collect::<Vec<_>>().join("; ");
            let kind = if codes.iter().any(|c| {
                c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED")
                    || c.ends_with("QUOTA_EXCEEDED")
                    || *c == "RESOURCE_POOL_EXHAUSTED"
                    || *c == "RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
            }) {
                ErrorKind::QuotaExceeded
            } else if codes.contains(&"RATE_LIMIT_EXCEEDED") {
                ErrorKind::RateLimited
            } else if codes.iter().any(|c| *c == "RESOURCE_NOT_FOUND" || *c == "NOT_FOUND") {
                ErrorKind::NotFound
            } else {
                match http_status {
                    Some(s) if *s >= 500 => ErrorKind::Unavailable,
                    Some(404) => ErrorKind::NotFound,
                    Some(403) => ErrorKind::PermissionDenied,
                    Some(400) => ErrorKind::InvalidInput,
                    _ => ErrorKind::Other,
                }
            };
            (kind, format!("the operation failed: {text}"), None)
        }
        Failure::Call(e) => {
            let (reasons, text) = reasons(e);
            let has = |r: &str| reasons.iter().any(|x| x == r);
            let status = e.http_status_code();
            let kind = match status {
                Some(429) => ErrorKind::RateLimited,
                Some(403) if has("rateLimitExceeded") || has("userRateLimitExceeded") => ErrorKind::RateLimited,
                Some(403) if has("quotaExceeded") => ErrorKind::QuotaExceeded,
                Some(401 | 403) => ErrorKind::PermissionDenied,
                Some(404) => ErrorKind::NotFound,
                Some(409) => ErrorKind::Conflict,
                Some(412) => ErrorKind::Conflict,
                Some(400) => ErrorKind::InvalidInput,
                Some(s) if s >= 500 => ErrorKind::Unavailable,
                Some(_) => ErrorKind::Other,
                None if e.is_authentication() => ErrorKind::PermissionDenied,
                None if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() => ErrorKind::Unavailable,
                None if e.is_binding() || e.is_serialization() => ErrorKind::InvalidInput,
                None if e.is_deserialization() => ErrorKind::Other,
                None => ErrorKind::Unavailable,
            };
            let message = match (status, text.is_empty()) {
                (Some(s), false) => {
                    let reason = reasons.first().map(|r| format!(" {r}")).unwrap_or_default();
                    format!("HTTP {s}{reason}: {text}")
                }
                (Some(s), true) => format!("HTTP {s} without an error body"),
                (None, _) if e.is_authentication() => {
                    "the credentials could not be loaded or were refused; check Application Default Credentials"
                        .to_owned()
                }
                (None, _) if e.is_timeout() => "the call timed out".to_owned(),
                (None, _) if e.is_binding() => "the request is missing a path parameter".to_owned(),
                // The decoder's message names the field and the type it expected, nothing more.
                (None, _) if e.is_deserialization() => format!("the answer could not be read: {e}"),
                (None, _) => "the request got no answer (connection failed or closed)".to_owned(),
            };
            let message = match (kind, field_of(&text)) {
                (ErrorKind::InvalidInput, Some(field)) => format!("{field}: {message}"),
                _ => message,
            };
            // A stale fingerprint means someone changed the resource: read it again and retry.
            (kind, message, (status == Some(412)).then_some(true))
        }
    };
    let error = Error::new(kind, message).with_provider("gcp").with_operation(operation);
    match retryable {
        Some(r) => error.with_retryable(r),
        None => error,
    }
}

fn limiter(bucket: Bucket) -> DefaultDirectRateLimiter {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_minute(nz(bucket.per_minute)).allow_burst(nz(bucket.burst)))
}

/// Which rate quota a call draws from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    Mutate,
    Read,
    List,
    OperationRead,
}

/// Where an operation lives.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    Zone(String),
    Global,
}

/// The clients, the project, pacing, and a count of every call by API method.
pub(crate) struct Clients {
    pub project: String,
    pub instances: Instances,
    pub images: Images,
    pub groups: InstanceGroups,
    pub backends: BackendServices,
    pub disks: Disks,
    pub regions: Regions,
    mutate: DefaultDirectRateLimiter,
    read: DefaultDirectRateLimiter,
    list: DefaultDirectRateLimiter,
    operation_read: DefaultDirectRateLimiter,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    paced: AtomicU64,
    paced_ms: AtomicU64,
    pub page_size: u32,
    poll: Duration,
    op_timeout: Duration,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("project", &self.project).field("calls", &self.calls).finish_non_exhaustive()
    }
}

/// The official clients, built once by the builder.
pub(crate) struct Sdk {
    pub instances: Instances,
    pub images: Images,
    pub groups: InstanceGroups,
    pub backends: BackendServices,
    pub disks: Disks,
    pub regions: Regions,
}

/// Settings the clients need besides the SDK.
pub(crate) struct ClientSettings {
    pub project: String,
    pub pacing: Pacing,
    pub page_size: u32,
    pub poll: Duration,
    pub op_timeout: Duration,
}

impl Clients {
    pub fn new(sdk: Sdk, s: ClientSettings) -> Self {
        Clients {
            project: s.project,
            instances: sdk.instances,
            images: sdk.images,
            groups: sdk.groups,
            backends: sdk.backends,
            disks: sdk.disks,
            regions: sdk.regions,
            mutate: limiter(s.pacing.mutate),
            read: limiter(s.pacing.read),
            list: limiter(s.pacing.list),
            operation_read: limiter(s.pacing.operation_read),
            calls: Mutex::default(),
            paced: AtomicU64::new(0),
            paced_ms: AtomicU64::new(0),
            page_size: s.page_size,
            poll: s.poll,
            op_timeout: s.op_timeout,
        }
    }

    /// Waits for a token of the call's bucket (counting the wait), then counts the call.
    pub async fn pace(&self, pace: Pace, method: &'static str) {
        let bucket = match pace {
            Pace::Mutate => &self.mutate,
            Pace::Read => &self.read,
            Pace::List => &self.list,
            Pace::OperationRead => &self.operation_read,
        };
        if bucket.check().is_err() {
            tracing::debug!(method, "client-side rate limit: waiting for the bucket");
            let start = std::time::Instant::now();
            bucket.until_ready().await;
            self.paced.fetch_add(1, Ordering::Relaxed);
            self.paced_ms.fetch_add(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        *self.calls.lock().expect("poisoned").entry(method).or_default() += 1;
    }

    pub fn paced(&self) -> PacingStats {
        PacingStats { waits: self.paced.load(Ordering::Relaxed), waited_ms: self.paced_ms.load(Ordering::Relaxed) }
    }

    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("poisoned").iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    /// `projects/P/zones/Z/...` as the API wants references.
    pub fn zone_path(&self, zone: &str) -> String {
        format!("projects/{}/zones/{zone}", self.project)
    }

    /// Polls an operation until it is `DONE`, then checks its `error`: the official poller
    /// returns `Ok` for an operation that failed, so this loop never reads a `DONE` as success
    /// without looking. An operation that outlasts the timeout is `Unavailable`, so the engine
    /// retries the call, and the request id brings back the same operation.
    pub async fn wait(&self, first: model::Operation, scope: Scope, method: &'static str) -> Result<model::Operation> {
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let mut op = first;
        loop {
            let done = op.status.as_ref().and_then(|s| s.name()) == Some("DONE");
            if done {
                if let Some(error) = &op.error
                    && !error.errors.is_empty()
                {
                    let errors = error
                        .errors
                        .iter()
                        .map(|e| (e.code.clone().unwrap_or_default(), e.message.clone().unwrap_or_default()))
                        .collect();
                    return Err(map_error(
                        Failure::Operation { errors, http_status: op.http_error_status_code },
                        method,
                    ));
                }
                if op.http_error_status_code.is_some_and(|s| s >= 400) {
                    let message = op.http_error_message.clone().unwrap_or_default();
                    let errors = vec![("HTTP_ERROR".to_owned(), message)];
                    return Err(map_error(
                        Failure::Operation { errors, http_status: op.http_error_status_code },
                        method,
                    ));
                }
                return Ok(op);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "operation {} is not done after {:?}; the retry resumes it under the same request id",
                        op.name.as_deref().unwrap_or("?"),
                        self.op_timeout
                    ),
                )
                .with_provider("gcp")
                .with_operation(method));
            }
            tokio::time::sleep(self.poll).await;
            let name = op.name.clone().unwrap_or_default();
            op = match &scope {
                Scope::Zone(zone) => {
                    self.pace(Pace::OperationRead, "zoneOperations.get").await;
                    self.instances
                        .get_operation()
                        .set_project(&self.project)
                        .set_zone(zone)
                        .set_operation(name)
                        .send()
                        .await
                        .map_err(|e| map_error(Failure::Call(e), "zoneOperations.get"))?
                }
                Scope::Global => {
                    self.pace(Pace::OperationRead, "globalOperations.get").await;
                    self.backends
                        .get_operation()
                        .set_project(&self.project)
                        .set_operation(name)
                        .send()
                        .await
                        .map_err(|e| map_error(Failure::Call(e), "globalOperations.get"))?
                }
            };
        }
    }

    /// An image by project and name, or the newest of a family; `None` when it does not exist.
    pub async fn image(&self, project: &str, name: Option<&str>, family: Option<&str>) -> Result<Option<model::Image>> {
        let got = match (name, family) {
            (_, Some(family)) => {
                self.pace(Pace::Read, "images.getFromFamily").await;
                self.images
                    .get_from_family()
                    .set_project(project)
                    .set_family(family)
                    .send()
                    .await
                    .map_err(|e| map_error(Failure::Call(e), "images.getFromFamily"))
            }
            (Some(name), None) => {
                self.pace(Pace::Read, "images.get").await;
                self.images
                    .get()
                    .set_project(project)
                    .set_image(name)
                    .send()
                    .await
                    .map_err(|e| map_error(Failure::Call(e), "images.get"))
            }
            (None, None) => return Ok(None),
        };
        match got {
            Ok(image) => Ok(Some(image)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A region of this project, with its quotas; `None` when there is no such region.
    pub async fn region(&self, region: &str) -> Result<Option<model::Region>> {
        self.pace(Pace::Read, "regions.get").await;
        match self.regions.get().set_project(&self.project).set_region(region).send().await {
            Ok(r) => Ok(Some(r)),
            Err(e) => match map_error(Failure::Call(e), "regions.get") {
                e if e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// One bulkInsert, polled to `DONE`.
    pub async fn bulk_insert(
        &self,
        zone: &str,
        request_id: &str,
        body: model::BulkInsertInstanceResource,
    ) -> Result<model::Operation> {
        self.pace(Pace::Mutate, "instances.bulkInsert").await;
        let op = self
            .instances
            .bulk_insert()
            .set_project(&self.project)
            .set_zone(zone)
            .set_request_id(request_id)
            .set_body(body)
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), "instances.bulkInsert"))?;
        self.wait(op, Scope::Zone(zone.to_owned()), "instances.bulkInsert").await
    }

    /// Every page of instances.list in a zone for this filter.
    pub async fn list_instances(&self, zone: &str, filter: Option<&str>) -> Result<Vec<model::Instance>> {
        let mut token: Option<String> = None;
        let mut found = Vec::new();
        loop {
            self.pace(Pace::List, "instances.list").await;
            let mut call =
                self.instances.list().set_project(&self.project).set_zone(zone).set_max_results(self.page_size);
            if let Some(f) = filter {
                call = call.set_filter(f);
            }
            if let Some(t) = token.take() {
                call = call.set_page_token(t);
            }
            let page = call.send().await.map_err(|e| map_error(Failure::Call(e), "instances.list"))?;
            found.extend(page.items);
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(found);
            }
        }
    }

    /// An instance; `None` when it does not exist.
    pub async fn get_instance(&self, zone: &str, name: &str) -> Result<Option<model::Instance>> {
        self.pace(Pace::Read, "instances.get").await;
        match self.instances.get().set_project(&self.project).set_zone(zone).set_instance(name).send().await {
            Ok(i) => Ok(Some(i)),
            Err(e) => match map_error(Failure::Call(e), "instances.get") {
                e if e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Replaces an instance's labels (guarded by its label fingerprint), polled to `DONE`.
    pub async fn set_labels(&self, vm: &model::Instance, zone: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let name = vm.name.clone().unwrap_or_default();
        let mut body = model::InstancesSetLabelsRequest::new().set_labels(labels);
        if let Some(fp) = vm.label_fingerprint.clone() {
            body = body.set_label_fingerprint(fp);
        }
        self.pace(Pace::Mutate, "instances.setLabels").await;
        let op = self
            .instances
            .set_labels()
            .set_project(&self.project)
            .set_zone(zone)
            .set_instance(name)
            .set_body(body)
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), "instances.setLabels"))?;
        self.wait(op, Scope::Zone(zone.to_owned()), "instances.setLabels").await.map(|_| ())
    }

    /// The image a disk was made from (`sourceImage`).
    pub async fn disk_image(&self, zone: &str, disk: &str) -> Result<Option<String>> {
        self.pace(Pace::Read, "disks.get").await;
        match self.disks.get().set_project(&self.project).set_zone(zone).set_disk(disk).send().await {
            Ok(d) => Ok(d.source_image),
            Err(e) => match map_error(Failure::Call(e), "disks.get") {
                e if e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Deletes an instance and waits for it to be gone; already gone is `Ok`.
    pub async fn delete_instance(&self, zone: &str, name: &str) -> Result<()> {
        self.pace(Pace::Mutate, "instances.delete").await;
        let sent = self.instances.delete().set_project(&self.project).set_zone(zone).set_instance(name).send().await;
        let op = match sent.map_err(|e| map_error(Failure::Call(e), "instances.delete")) {
            Ok(op) => op,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.wait(op, Scope::Zone(zone.to_owned()), "instances.delete").await {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The members of an unmanaged instance group (instance paths), every page.
    pub async fn group_members(&self, zone: &str, group: &str) -> Result<Vec<String>> {
        let mut token: Option<String> = None;
        let mut found = Vec::new();
        loop {
            self.pace(Pace::List, "instanceGroups.listInstances").await;
            let mut call = self
                .groups
                .list_instances()
                .set_project(&self.project)
                .set_zone(zone)
                .set_instance_group(group)
                .set_max_results(self.page_size)
                .set_body(model::InstanceGroupsListInstancesRequest::new().set_instance_state("ALL"));
            if let Some(t) = token.take() {
                call = call.set_page_token(t);
            }
            let page = call.send().await.map_err(|e| map_error(Failure::Call(e), "instanceGroups.listInstances"))?;
            found.extend(page.items.into_iter().filter_map(|i| i.instance).map(|i| relative(&i)));
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(found);
            }
        }
    }

    /// Adds or removes instances (paths) in one call, polled to `DONE`.
    pub async fn change_members(&self, zone: &str, group: &str, instances: &[String], add: bool) -> Result<()> {
        let refs: Vec<model::InstanceReference> =
            instances.iter().map(|i| model::InstanceReference::new().set_instance(i.clone())).collect();
        let method = if add { "instanceGroups.addInstances" } else { "instanceGroups.removeInstances" };
        self.pace(Pace::Mutate, method).await;
        let op = if add {
            self.groups
                .add_instances()
                .set_project(&self.project)
                .set_zone(zone)
                .set_instance_group(group)
                .set_body(model::InstanceGroupsAddInstancesRequest::new().set_instances(refs))
                .send()
                .await
        } else {
            self.groups
                .remove_instances()
                .set_project(&self.project)
                .set_zone(zone)
                .set_instance_group(group)
                .set_body(model::InstanceGroupsRemoveInstancesRequest::new().set_instances(refs))
                .send()
                .await
        }
        .map_err(|e| map_error(Failure::Call(e), method))?;
        self.wait(op, Scope::Zone(zone.to_owned()), method).await.map(|_| ())
    }

    pub async fn backend_service(&self, name: &str) -> Result<model::BackendService> {
        self.pace(Pace::Read, "backendServices.get").await;
        self.backends
            .get()
            .set_project(&self.project)
            .set_backend_service(name)
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), "backendServices.get"))
    }

    /// One backendServices.patch, polled to `DONE`.
    pub async fn patch_backend_service(&self, name: &str, body: model::BackendService) -> Result<()> {
        self.pace(Pace::Mutate, "backendServices.patch").await;
        let op = self
            .backends
            .patch()
            .set_project(&self.project)
            .set_backend_service(name)
            .set_body(body)
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), "backendServices.patch"))?;
        self.wait(op, Scope::Global, "backendServices.patch").await.map(|_| ())
    }

    /// `(instance path, healthState)` of a group's members as the backend service probes
    /// them; `None` when the group is not one of its backends (then it is not probed at all).
    pub async fn group_health(&self, backend_service: &str, group_path: &str) -> Result<Option<Vec<(String, String)>>> {
        self.pace(Pace::Read, "backendServices.getHealth").await;
        let got = self
            .backends
            .get_health()
            .set_project(&self.project)
            .set_backend_service(backend_service)
            .set_body(model::ResourceGroupReference::new().set_group(group_path))
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), "backendServices.getHealth"));
        match got {
            Ok(h) => Ok(Some(
                h.health_status
                    .into_iter()
                    .filter_map(|s| {
                        let instance = relative(s.instance.as_deref()?);
                        let state = s.health_state.as_ref().and_then(|h| h.name()).unwrap_or("UNKNOWN").to_owned();
                        Some((instance, state))
                    })
                    .collect(),
            )),
            Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `projects/...` of a full resource URL.
pub(crate) fn relative(url: &str) -> String {
    match url.find("projects/") {
        Some(i) => url[i..].to_owned(),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: u16, reason: &str, message: &str) -> Failure {
        let body = serde_json::json!({
            "error": { "code": status, "message": message, "errors": [{ "reason": reason, "domain": "global", "message": message }] }
        });
        let bytes = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
        let status_body = google_cloud_gax::error::rpc::Status::try_from(&bytes).unwrap();
        Failure::Call(google_cloud_gax::error::Error::service_with_http_metadata(status_body, Some(status), None))
    }

    #[test]
    fn statuses_reasons_and_operation_codes_map_to_kinds() {
        for (failure, kind) in [
            (api_error(429, "rateLimitExceeded", "slow down"), ErrorKind::RateLimited),
            (api_error(403, "rateLimitExceeded", "Quota exceeded for quota metric 'Queries'"), ErrorKind::RateLimited),
            (api_error(403, "userRateLimitExceeded", "slow down"), ErrorKind::RateLimited),
            (api_error(403, "quotaExceeded", "Quota 'CPUS' exceeded"), ErrorKind::QuotaExceeded),
            (
                api_error(403, "forbidden", "Required 'compute.instances.create' permission"),
                ErrorKind::PermissionDenied,
            ),
            (api_error(404, "notFound", "The resource 'x' was not found"), ErrorKind::NotFound),
            (api_error(503, "backendError", "unavailable"), ErrorKind::Unavailable),
            (api_error(500, "backendError", "internal"), ErrorKind::Unavailable),
            (
                api_error(400, "invalid", "Invalid value for field 'resource.machineType': 'x'."),
                ErrorKind::InvalidInput,
            ),
            (
                Failure::Operation {
                    errors: vec![("ZONE_RESOURCE_POOL_EXHAUSTED".into(), "no capacity".into())],
                    http_status: Some(503),
                },
                ErrorKind::QuotaExceeded,
            ),
            (
                Failure::Operation {
                    errors: vec![("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS".into(), "no capacity".into())],
                    http_status: Some(503),
                },
                ErrorKind::QuotaExceeded,
            ),
            (
                Failure::Operation { errors: vec![("QUOTA_EXCEEDED".into(), "CPUS".into())], http_status: Some(403) },
                ErrorKind::QuotaExceeded,
            ),
            (
                Failure::Operation { errors: vec![("INTERNAL_ERROR".into(), "x".into())], http_status: Some(500) },
                ErrorKind::Unavailable,
            ),
        ] {
            let text = format!("{failure:?}");
            let e = map_error(failure, "instances.bulkInsert");
            assert_eq!(e.kind(), kind, "{text}: {e}");
            assert!(e.to_string().contains("[gcp instances.bulkInsert]"), "{e}");
        }
        let bad = map_error(api_error(400, "invalid", "Invalid value for field 'resource.machineType': 'x'."), "op");
        assert!(bad.message().starts_with("resource.machineType: "), "{bad}");
        let throttled = map_error(api_error(403, "rateLimitExceeded", "slow"), "op");
        assert!(throttled.is_retryable() && throttled.message().contains("rateLimitExceeded"), "{throttled}");
        let quota = map_error(
            Failure::Operation {
                errors: vec![("ZONE_RESOURCE_POOL_EXHAUSTED".into(), "x".into())],
                http_status: Some(503),
            },
            "op",
        );
        assert!(!quota.is_retryable(), "capacity fails closed");
        let stale = map_error(api_error(412, "conditionNotMet", "fingerprint"), "op");
        assert!(stale.is_retryable(), "a stale fingerprint is read again and retried");
    }

    #[test]
    fn fields_are_read_from_compute_messages() {
        assert_eq!(field_of("Invalid value for field 'resource.name': 'Foo'. Must be"), Some("resource.name"));
        assert_eq!(field_of("no field here"), None);
        assert_eq!(relative("https://x/compute/v1/projects/p/zones/z/instances/i"), "projects/p/zones/z/instances/i");
    }
}
