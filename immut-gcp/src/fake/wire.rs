//! The wire: Compute API routes, request bodies and the JSON the API answers, following the
//! public reference (`compute/v1` discovery document). Handlers parse, call the model, render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_fake::{Api, Env, Fault, Request, Response};
use serde_json::{Map, Value, json};

use super::error::GceError;
use super::filter::Filter;
use super::model::{Backend, Effect, Group, Image, Model, Op, Settings, Vm, VmSpec, normalize, valid_name};

/// Where a request goes: the project, and the zone and resource name when the path has them.
#[derive(Debug, Clone, Default)]
pub struct Target {
    project: String,
    zone: Option<String>,
    name: Option<String>,
}

/// The Compute API over the model. Clones share the model.
#[derive(Debug, Clone)]
pub struct GceApi {
    pub(crate) model: Arc<Mutex<Model>>,
}

type Result<T> = std::result::Result<T, GceError>;

/// An int64 field, which JSON clients send as a number or, following the proto3 JSON mapping
/// (Google's Python client does), as a string.
pub fn int64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn link(env: &Env, path: &str) -> String {
    format!("{}/compute/v1/{path}", env.base_url)
}

fn body(req: &Request) -> Result<Map<String, Value>> {
    match req.json::<Value>() {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(GceError::bad_request("parseError", "The request body must be a JSON object.")),
        Err(e) => Err(GceError::bad_request("parseError", format!("Invalid JSON payload received. {e}"))),
    }
}

fn string(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|l| l.as_object())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

fn required(m: &Map<String, Value>, key: &str, field: &str) -> Result<String> {
    string(m, key)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| GceError::bad_request("required", format!("Required field '{field}' not specified")))
}

/// The instance fields shared by `instances.insert` (an Instance) and `bulkInsert`
/// (`instanceProperties`).
fn vm_spec(m: &Map<String, Value>, name: String) -> VmSpec {
    let disks = m.get("disks").and_then(|d| d.as_array()).cloned().unwrap_or_default();
    let boot = disks.iter().find(|d| d.get("boot").and_then(Value::as_bool).unwrap_or(false)).or(disks.first());
    let init = boot.and_then(|d| d.get("initializeParams"));
    let nic = m.get("networkInterfaces").and_then(|n| n.as_array()).and_then(|n| n.first()).cloned();
    let metadata = m
        .get("metadata")
        .and_then(|md| md.get("items"))
        .and_then(|i| i.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| Some((i.get("key")?.as_str()?.to_owned(), i.get("value")?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    VmSpec {
        name,
        machine_type: string(m, "machineType").unwrap_or_default(),
        labels: labels_of(m.get("labels")),
        metadata,
        source_image: init.and_then(|i| i.get("sourceImage")).and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
        disk_size_gb: int64(init.and_then(|i| i.get("diskSizeGb"))).unwrap_or(0),
        network: nic.as_ref().and_then(|n| n.get("network")).and_then(|s| s.as_str()).map(str::to_owned),
        subnetwork: nic.as_ref().and_then(|n| n.get("subnetwork")).and_then(|s| s.as_str()).map(str::to_owned),
        external: nic
            .as_ref()
            .and_then(|n| n.get("accessConfigs"))
            .and_then(|a| a.as_array())
            .is_some_and(|a| !a.is_empty()),
        service_accounts: m.get("serviceAccounts").cloned().unwrap_or(Value::Array(Vec::new())),
        tags: m
            .get("tags")
            .and_then(|t| t.get("items"))
            .and_then(|i| i.as_array())
            .map(|i| i.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        description: string(m, "description").unwrap_or_default(),
    }
}

fn vm_json(env: &Env, project: &str, vm: &Vm, now: Duration) -> Value {
    let zone_path = format!("projects/{project}/zones/{}", vm.zone);
    let absolute = |p: &str| link(env, &normalize(project, p));
    let mut nic = json!({
        "kind": "compute#networkInterface",
        "name": "nic0",
        "network": absolute(&vm.network),
        "subnetwork": absolute(&vm.subnetwork),
        "networkIP": vm.network_ip,
        "stackType": "IPV4_ONLY",
        "fingerprint": "c2Vlbm9uY2U=",
    });
    if let Some(ip) = &vm.external_ip {
        nic["accessConfigs"] = json!([{
            "kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": "External NAT",
            "natIP": ip, "networkTier": "PREMIUM",
        }]);
    }
    let status = vm.status(now);
    let mut v = json!({
        "kind": "compute#instance",
        "id": vm.id.to_string(),
        "creationTimestamp": env.clock.rfc3339(vm.created),
        "name": vm.name,
        "description": vm.description,
        "tags": { "items": vm.tags, "fingerprint": "42WmSpB8rSM=" },
        "machineType": link(env, &format!("{zone_path}/machineTypes/{}", vm.machine_type)),
        "status": status,
        "zone": link(env, &zone_path),
        "canIpForward": false,
        "networkInterfaces": [nic],
        "disks": [{
            "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
            "source": link(env, &format!("{zone_path}/disks/{}", vm.name)),
            "deviceName": "persistent-disk-0", "index": 0, "boot": true, "autoDelete": true,
            "interface": "SCSI", "diskSizeGb": vm.disk_size_gb.to_string(),
        }],
        "metadata": super::metadata::render(&vm.metadata, &vm.metadata_fingerprint),
        "serviceAccounts": vm.service_accounts,
        "selfLink": link(env, &format!("{zone_path}/instances/{}", vm.name)),
        "scheduling": { "onHostMaintenance": "MIGRATE", "automaticRestart": true, "preemptible": false },
        "cpuPlatform": "Intel Broadwell",
        "labels": vm.labels,
        "labelFingerprint": vm.label_fingerprint,
        "startRestricted": false,
        "deletionProtection": false,
        "fingerprint": "dGVzdGZpbmdlcnA=",
    });
    if status == "RUNNING" {
        v["lastStartTimestamp"] = env.clock.rfc3339(vm.life.since(now)).into();
    }
    v
}

fn op_json(env: &Env, project: &str, op: &Op, now: Duration) -> Value {
    let status = op.life.at(now);
    let scope = match &op.zone {
        Some(z) => format!("projects/{project}/zones/{z}"),
        None => format!("projects/{project}/global"),
    };
    let mut v = json!({
        "kind": "compute#operation",
        "id": op.id.to_string(),
        "name": op.name,
        "operationType": op.op_type,
        "targetLink": link(env, &op.target),
        "status": status,
        "user": "immut-fake@example.com",
        "progress": op.life.percent(now),
        "insertTime": env.clock.rfc3339(op.life.start()),
        "selfLink": link(env, &format!("{scope}/operations/{}", op.name)),
    });
    if let Some(id) = op.target_id {
        v["targetId"] = id.to_string().into();
    }
    if let Some(z) = &op.zone {
        v["zone"] = link(env, &format!("projects/{project}/zones/{z}")).into();
    }
    if status != "PENDING" {
        v["startTime"] = env.clock.rfc3339(op.life.start() + Duration::from_millis(1)).into();
    }
    if status == "DONE" {
        v["endTime"] = env.clock.rfc3339(op.life.end()).into();
        if let (Some((code, message)), Some((http, http_message))) = (&op.error, op.http_error()) {
            v["error"] = json!({ "errors": [{ "code": code, "message": message }] });
            v["httpErrorStatusCode"] = http.into();
            v["httpErrorMessage"] = http_message.into();
        }
    }
    v
}

fn image_json(env: &Env, project: &str, i: &Image) -> Value {
    let mut v = json!({
        "kind": "compute#image",
        "id": i.id.to_string(),
        "creationTimestamp": env.clock.rfc3339(i.created),
        "name": i.name,
        "description": i.description,
        "sourceType": "RAW",
        "status": "READY",
        "archiveSizeBytes": "1073741824",
        "diskSizeGb": i.disk_size_gb.to_string(),
        "labels": i.labels,
        "selfLink": link(env, &format!("projects/{project}/global/images/{}", i.name)),
        "architecture": "X86_64",
    });
    if let Some(f) = &i.family {
        v["family"] = f.clone().into();
    }
    if let Some(state) = &i.deprecation {
        v["deprecated"] = json!({ "state": state });
        if let Some(r) = &i.replacement {
            v["deprecated"]["replacement"] = r.clone().into();
        }
    }
    v
}

fn group_json(env: &Env, project: &str, g: &Group) -> Value {
    let zone_path = format!("projects/{project}/zones/{}", g.zone);
    json!({
        "kind": "compute#instanceGroup",
        "id": g.id.to_string(),
        "creationTimestamp": env.clock.rfc3339(g.created),
        "name": g.name,
        "description": g.description,
        "namedPorts": g.named_ports,
        "network": link(env, &normalize(project, &g.network)),
        "fingerprint": "42WmSpB8rSM=",
        "zone": link(env, &zone_path),
        "size": g.members.len(),
        "selfLink": link(env, &format!("{zone_path}/instanceGroups/{}", g.name)),
    })
}

fn backend_json(env: &Env, project: &str, name: &str, b: &Backend) -> Value {
    let mut r = b.resource.clone();
    if let Some(Value::Array(backends)) = r.get_mut("backends") {
        for backend in backends.iter_mut() {
            if let Some(g) = backend.get("group").and_then(|g| g.as_str()).map(str::to_owned) {
                backend["group"] = link(env, &g).into();
            }
        }
    }
    r.insert("kind".into(), "compute#backendService".into());
    r.insert("id".into(), b.id.to_string().into());
    r.insert("name".into(), name.into());
    r.insert("creationTimestamp".into(), env.clock.rfc3339(b.created).into());
    r.insert("fingerprint".into(), b.fingerprint.clone().into());
    r.insert("selfLink".into(), link(env, &format!("projects/{project}/global/backendServices/{name}")).into());
    Value::Object(r)
}

/// Filters, orders and pages a list; items are keyed by name.
fn list(req: &Request, items: Vec<(String, Value)>) -> Result<(Vec<Value>, Option<String>)> {
    let filter = req.param("filter").unwrap_or("");
    let parsed = Filter::parse(filter)
        .map_err(|e| GceError::invalid_field("filter", filter, &format!("Invalid filter: {e}")))?;
    let order = req.param("orderBy").unwrap_or("");
    if !matches!(order, "" | "name" | "creationTimestamp desc") {
        return Err(GceError::invalid_field(
            "orderBy",
            order,
            "Only sorting by name or 'creationTimestamp desc' is supported.",
        ));
    }
    let mut kept: Vec<(String, Value)> =
        items.into_iter().filter(|(_, v)| parsed.as_ref().is_none_or(|f| f.matches(v))).collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    if order == "creationTimestamp desc" {
        // Keyset paging needs a unique, ordered key: the timestamp (reversed) plus the name.
        kept = kept
            .into_iter()
            .map(|(k, v)| {
                let ts = v.get("creationTimestamp").and_then(|t| t.as_str()).unwrap_or("").to_owned();
                let rev: String =
                    ts.chars().map(|c| if c.is_ascii_digit() { (b'9' - c as u8 + b'0') as char } else { c }).collect();
                (format!("{rev}/{k}"), v)
            })
            .collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let size = match req.param("maxResults") {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| GceError::invalid_field("maxResults", s, "Must be an integer between 0 and 500."))?,
        ),
    };
    let scope = format!("{}?{filter}&{order}", req.path);
    let page = immut_fake::paging::page(kept, |(k, _)| k.clone(), &scope, size, req.param("pageToken"), 500, 500)
        .map_err(|e| match e {
            immut_fake::PagingError::InvalidToken => {
                GceError::invalid_field("pageToken", req.param("pageToken").unwrap_or(""), "Invalid page token.")
            }
            immut_fake::PagingError::PageSizeTooLarge { asked, .. } => {
                GceError::invalid_field("maxResults", &asked.to_string(), "Must be less than or equal to 500")
            }
        })?;
    Ok((page.items.into_iter().map(|(_, v)| v).collect(), page.next_token))
}

fn list_response(env: &Env, req: &Request, kind: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut v = json!({
        "kind": kind,
        "id": req.path.trim_start_matches("/compute/v1/"),
        "selfLink": format!("{}{}", env.base_url, req.path),
    });
    if !items.is_empty() {
        v["items"] = Value::Array(items);
    }
    if let Some(t) = next {
        v["nextPageToken"] = t.into();
    }
    Response::ok(&v)
}

fn zone_checked(zone: &str) -> Result<()> {
    let parts: Vec<&str> = zone.split('-').collect();
    let ok = parts.len() == 3
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1].bytes().any(|b| b.is_ascii_digit())
        && parts[2].len() == 1;
    if ok { Ok(()) } else { Err(GceError::invalid_field("zone", zone, "Unknown zone.")) }
}

impl GceApi {
    /// An API over a fresh model.
    pub fn new(settings: Settings) -> Self {
        GceApi { model: Arc::new(Mutex::new(Model::new(settings))) }
    }

    /// Answers a mutation that starts an operation: the same `requestId` gives the same
    /// operation back and changes nothing (`dedup`), else `start` runs and its operation is
    /// remembered under the request id.
    fn mutate(
        &self,
        t: &Target,
        req: &Request,
        env: &Env,
        start: impl FnOnce(&mut Model, Duration) -> Result<String>,
    ) -> Result<Response> {
        let now = env.clock.now();
        let mut m = self.model.lock().expect("model poisoned");
        let request_id = req.param("requestId");
        let name = match m.deduplicated(&t.project, request_id)? {
            Some(name) => name,
            None => {
                let name = start(&mut m, now)?;
                m.remember(&t.project, request_id, &name);
                name
            }
        };
        let op = m.project(&t.project).operations.get(&name).expect("just made").clone();
        Ok(Response::ok(&op_json(env, &t.project, &op, now)))
    }

    #[allow(clippy::too_many_lines)]
    fn serve(&self, method: &str, t: Target, req: &Request, env: &Env) -> Result<Response> {
        let now = env.clock.now();
        self.model.lock().expect("model poisoned").tick(now);
        let p = t.project.clone();
        let zone = t.zone.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let zone_path = format!("projects/{p}/zones/{zone}");
        if !zone.is_empty() {
            zone_checked(&zone)?;
        }
        let faults = &env.faults;
        match method {
            "compute.instances.list" => {
                let mut m = self.model.lock().expect("model poisoned");
                let items = m
                    .project(&p)
                    .instances
                    .values()
                    .filter(|vm| vm.zone == zone)
                    .map(|vm| (vm.name.clone(), vm_json(env, &p, vm, now)))
                    .collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#instanceList", items, next))
            }
            "compute.instances.aggregatedList" => {
                let mut m = self.model.lock().expect("model poisoned");
                let items = m
                    .project(&p)
                    .instances
                    .values()
                    .map(|vm| (format!("{}/{}", vm.zone, vm.name), vm_json(env, &p, vm, now)))
                    .collect();
                let (items, next) = list(req, items)?;
                let mut by_zone: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                for v in items {
                    let z = v["zone"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
                    by_zone.entry(format!("zones/{z}")).or_default().push(v);
                }
                let items: Map<String, Value> =
                    by_zone.into_iter().map(|(z, vs)| (z, json!({ "instances": vs }))).collect();
                let mut v = json!({
                    "kind": "compute#instanceAggregatedList",
                    "id": format!("projects/{p}/aggregated/instances"),
                    "items": items,
                    "selfLink": format!("{}{}", env.base_url, req.path),
                });
                if let Some(t) = next {
                    v["nextPageToken"] = t.into();
                }
                Ok(Response::ok(&v))
            }
            "compute.instances.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                let vm = m.vm(&p, &zone, &name)?.clone();
                Ok(Response::ok(&vm_json(env, &p, &vm, now)))
            }
            "compute.disks.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                let vm = m
                    .vm(&p, &zone, &name)
                    .map_err(|_| GceError::not_found(&format!("{zone_path}/disks/{name}")))?
                    .clone();
                let status = if vm.status(now) == "PROVISIONING" { "CREATING" } else { "READY" };
                Ok(Response::ok(&json!({
                    "kind": "compute#disk",
                    "id": (vm.id + 1).to_string(),
                    "creationTimestamp": env.clock.rfc3339(vm.created),
                    "name": vm.name,
                    "sizeGb": vm.disk_size_gb.to_string(),
                    "zone": link(env, &zone_path),
                    "status": status,
                    "sourceImage": link(env, &vm.image),
                    "sourceImageId": vm.image_id.to_string(),
                    "type": link(env, &format!("{zone_path}/diskTypes/pd-balanced")),
                    "labels": vm.labels,
                    "users": [link(env, &format!("{zone_path}/instances/{}", vm.name))],
                    "selfLink": link(env, &format!("{zone_path}/disks/{}", vm.name)),
                })))
            }
            "compute.instances.insert" => {
                let b = body(req)?;
                let spec = vm_spec(&b, required(&b, "name", "resource.name")?);
                self.mutate(&t, req, env, |m, now| {
                    m.check_spec(&p, &zone, &spec, "resource")?;
                    if m.project(&p).instances.contains_key(&(zone.clone(), spec.name.clone())) {
                        return Err(GceError::already_exists(&format!("{zone_path}/instances/{}", spec.name)));
                    }
                    let target = format!("{zone_path}/instances/{}", spec.name);
                    let (op, failed) = m.start_op(&p, Some(&zone), method, "insert", target, None, None, faults, now);
                    if !failed {
                        let id = m.create_vm(&p, &zone, spec, now);
                        m.project(&p).operations.get_mut(&op).expect("just made").target_id = Some(id);
                    }
                    Ok(op)
                })
            }
            "compute.instances.bulkInsert" => {
                let b = body(req)?;
                if b.contains_key("sourceInstanceTemplate") {
                    return Err(GceError::bad_request(
                        "invalid",
                        "sourceInstanceTemplate is not supported by this fake; give instanceProperties",
                    ));
                }
                let count = int64(b.get("count")).ok_or_else(|| {
                    GceError::bad_request("required", "Required field 'resource.count' not specified")
                })?;
                let min = int64(b.get("minCount")).unwrap_or(count);
                if !(1..=1000).contains(&count) || min < 1 || min > count {
                    return Err(GceError::invalid_field(
                        "resource.minCount",
                        &min.to_string(),
                        "count must be between 1 and 1000, and minCount between 1 and count.",
                    ));
                }
                let props = b.get("instanceProperties").and_then(|v| v.as_object()).cloned().ok_or_else(|| {
                    GceError::bad_request("required", "Required field 'resource.instanceProperties' not specified")
                })?;
                let explicit: Vec<String> = b
                    .get("perInstanceProperties")
                    .and_then(|v| v.as_object())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let pattern = string(&b, "namePattern");
                self.mutate(&t, req, env, |m, now| {
                    let mut names = explicit.clone();
                    let missing = (count as usize).saturating_sub(names.len());
                    if missing > 0 {
                        let pattern = pattern.clone().ok_or_else(|| {
                            GceError::bad_request("required", "Required field 'resource.namePattern' not specified")
                        })?;
                        names.extend(m.bulk_names(&p, &zone, &pattern, missing)?);
                    }
                    let specs: Vec<VmSpec> = names.iter().map(|n| vm_spec(&props, n.clone())).collect();
                    for spec in &specs {
                        m.check_spec(&p, &zone, spec, "resource.instanceProperties")?;
                        if m.project(&p).instances.contains_key(&(zone.clone(), spec.name.clone())) {
                            return Err(GceError::already_exists(&format!("{zone_path}/instances/{}", spec.name)));
                        }
                    }
                    let target = format!("{zone_path}/instances/{}", names.first().cloned().unwrap_or_default());
                    let (op, failed) =
                        m.start_op(&p, Some(&zone), method, "bulkInsert", target, None, None, faults, now);
                    // minCount = count: all or nothing, so a failed operation makes none.
                    if !failed {
                        for spec in specs {
                            m.create_vm(&p, &zone, spec, now);
                        }
                    }
                    Ok(op)
                })
            }
            "compute.instances.delete" => self.mutate(&t, req, env, |m, now| {
                let id = m.vm(&p, &zone, &name)?.id;
                let target = format!("{zone_path}/instances/{name}");
                let effect = Effect::DeleteInstance { zone: zone.clone(), name: name.clone() };
                let (op, failed) =
                    m.start_op(&p, Some(&zone), method, "delete", target, Some(id), Some(effect), faults, now);
                if !failed {
                    m.vm(&p, &zone, &name)?.deleting = true;
                }
                Ok(op)
            }),
            "compute.instances.stop" | "compute.instances.start" => self.mutate(&t, req, env, |m, now| {
                let stopping = method.ends_with("stop");
                let stop_ms = Duration::from_millis(m.settings.stopping_ms);
                let staging = Duration::from_millis(m.settings.staging_ms);
                let vm = m.vm(&p, &zone, &name)?;
                let (id, status) = (vm.id, vm.status(now));
                if !stopping && status != "TERMINATED" {
                    return Err(GceError::bad_request("resourceNotReady", format!("The instance is {status}")));
                }
                let target = format!("{zone_path}/instances/{name}");
                let kind = if stopping { "stop" } else { "start" };
                let (op, failed) = m.start_op(&p, Some(&zone), method, kind, target, Some(id), None, faults, now);
                if !failed {
                    let vm = m.vm(&p, &zone, &name)?;
                    vm.life = if stopping {
                        immut_fake::Timeline::new(now, [("STOPPING", stop_ms)], "TERMINATED")
                    } else {
                        immut_fake::Timeline::new(now, [("STAGING", staging)], "RUNNING")
                    };
                }
                Ok(op)
            }),
            "compute.instances.setLabels" => {
                let b = body(req)?;
                let labels = labels_of(b.get("labels"));
                let fp = string(&b, "labelFingerprint");
                self.mutate(&t, req, env, |m, now| {
                    let vm = m.vm(&p, &zone, &name)?;
                    if fp.as_deref() != Some(vm.label_fingerprint.as_str()) {
                        return Err(GceError::condition_not_met(
                            "Labels fingerprint either invalid or resource labels have changed",
                        ));
                    }
                    let id = vm.id;
                    let target = format!("{zone_path}/instances/{name}");
                    let probe = VmSpec { labels: labels.clone(), ..VmSpec::default() };
                    if probe.labels.len() > 64 {
                        return Err(GceError::bad_request("invalid", "At most 64 labels"));
                    }
                    let (op, failed) =
                        m.start_op(&p, Some(&zone), method, "setLabels", target, Some(id), None, faults, now);
                    if !failed {
                        let fresh = m.new_fingerprint();
                        let vm = m.vm(&p, &zone, &name)?;
                        vm.labels = labels;
                        vm.label_fingerprint = fresh;
                    }
                    Ok(op)
                })
            }
            "compute.instances.setMetadata" => {
                let set = super::metadata::parse(&body(req)?)?;
                self.mutate(&t, req, env, |m, now| {
                    let vm = m.vm(&p, &zone, &name)?;
                    super::metadata::check_fingerprint(set.fingerprint.as_deref(), &vm.metadata_fingerprint)?;
                    let id = vm.id;
                    let target = format!("{zone_path}/instances/{name}");
                    let (op, failed) =
                        m.start_op(&p, Some(&zone), method, "setMetadata", target, Some(id), None, faults, now);
                    if !failed {
                        let fresh = m.new_fingerprint();
                        let vm = m.vm(&p, &zone, &name)?;
                        vm.metadata = set.items;
                        vm.metadata_fingerprint = fresh;
                    }
                    Ok(op)
                })
            }
            "compute.zoneOperations.get" | "compute.zoneOperations.wait" => {
                // wait may return before the operation is DONE, as the reference allows.
                let mut m = self.model.lock().expect("model poisoned");
                let op = m.operation(&p, Some(&zone), &name)?.clone();
                Ok(Response::ok(&op_json(env, &p, &op, now)))
            }
            "compute.globalOperations.get" | "compute.globalOperations.wait" => {
                let mut m = self.model.lock().expect("model poisoned");
                let op = m.operation(&p, None, &name)?.clone();
                Ok(Response::ok(&op_json(env, &p, &op, now)))
            }
            "compute.zoneOperations.list" | "compute.globalOperations.list" => {
                let mut m = self.model.lock().expect("model poisoned");
                let want = t.zone.clone();
                let items = m
                    .project(&p)
                    .operations
                    .values()
                    .filter(|op| op.zone == want)
                    .map(|op| (op.name.clone(), op_json(env, &p, op, now)))
                    .collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#operationList", items, next))
            }
            "compute.images.list" => {
                let mut m = self.model.lock().expect("model poisoned");
                let items = m.project(&p).images.values().map(|i| (i.name.clone(), image_json(env, &p, i))).collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#imageList", items, next))
            }
            "compute.images.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                let i = m.image(&p, &name)?.clone();
                Ok(Response::ok(&image_json(env, &p, &i)))
            }
            "compute.images.getFromFamily" => {
                let mut m = self.model.lock().expect("model poisoned");
                let i = m.image_from_family(&p, &name)?.clone();
                Ok(Response::ok(&image_json(env, &p, &i)))
            }
            "compute.images.insert" => {
                let b = body(req)?;
                let image_name = required(&b, "name", "resource.name")?;
                self.mutate(&t, req, env, |m, now| {
                    if !valid_name(&image_name) {
                        return Err(GceError::invalid_field("resource.name", &image_name, "Must be a valid name."));
                    }
                    if m.project(&p).images.contains_key(&image_name) {
                        return Err(GceError::already_exists(&format!("projects/{p}/global/images/{image_name}")));
                    }
                    let image = Image {
                        id: m.id(),
                        name: image_name.clone(),
                        family: string(&b, "family"),
                        created: now,
                        deprecation: None,
                        replacement: None,
                        labels: labels_of(b.get("labels")),
                        disk_size_gb: int64(b.get("diskSizeGb")).unwrap_or(10),
                        description: string(&b, "description").unwrap_or_default(),
                    };
                    let target = format!("projects/{p}/global/images/{image_name}");
                    let id = image.id;
                    let (op, _) = m.start_op(
                        &p,
                        None,
                        method,
                        "insert",
                        target,
                        Some(id),
                        Some(Effect::CreateImage(image)),
                        faults,
                        now,
                    );
                    Ok(op)
                })
            }
            "compute.images.deprecate" => {
                let b = body(req)?;
                let state = string(&b, "state").unwrap_or_else(|| "ACTIVE".into());
                if !matches!(state.as_str(), "ACTIVE" | "DEPRECATED" | "OBSOLETE" | "DELETED") {
                    return Err(GceError::invalid_field("resource.state", &state, "Unknown deprecation state."));
                }
                self.mutate(&t, req, env, |m, now| {
                    let id = m.image(&p, &name)?.id;
                    let effect =
                        Effect::Deprecate { image: name.clone(), state, replacement: string(&b, "replacement") };
                    let target = format!("projects/{p}/global/images/{name}");
                    Ok(m.start_op(&p, None, method, "deprecate", target, Some(id), Some(effect), faults, now).0)
                })
            }
            "compute.regions.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                Ok(Response::ok(&super::region::region_json(env, &mut m, &p, &name, now)?))
            }
            "compute.instanceGroups.list" => {
                let mut m = self.model.lock().expect("model poisoned");
                let items = m
                    .project(&p)
                    .groups
                    .values()
                    .filter(|g| g.zone == zone)
                    .map(|g| (g.name.clone(), group_json(env, &p, g)))
                    .collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#instanceGroupList", items, next))
            }
            "compute.instanceGroups.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                let g = m
                    .project(&p)
                    .groups
                    .get(&(zone.clone(), name.clone()))
                    .cloned()
                    .ok_or_else(|| GceError::not_found(&format!("{zone_path}/instanceGroups/{name}")))?;
                Ok(Response::ok(&group_json(env, &p, &g)))
            }
            "compute.instanceGroups.insert" => {
                let b = body(req)?;
                let group_name = required(&b, "name", "resource.name")?;
                self.mutate(&t, req, env, |m, now| {
                    if !valid_name(&group_name) {
                        return Err(GceError::invalid_field("resource.name", &group_name, "Must be a valid name."));
                    }
                    if m.project(&p).groups.contains_key(&(zone.clone(), group_name.clone())) {
                        return Err(GceError::already_exists(&format!("{zone_path}/instanceGroups/{group_name}")));
                    }
                    let group = Group {
                        id: m.id(),
                        name: group_name.clone(),
                        zone: zone.clone(),
                        members: Default::default(),
                        named_ports: b.get("namedPorts").cloned().unwrap_or(Value::Array(Vec::new())),
                        network: string(&b, "network").unwrap_or_else(|| "global/networks/default".into()),
                        description: string(&b, "description").unwrap_or_default(),
                        created: now,
                    };
                    let (id, target) = (group.id, format!("{zone_path}/instanceGroups/{group_name}"));
                    let effect = Some(Effect::CreateGroup(group));
                    Ok(m.start_op(&p, Some(&zone), method, "insert", target, Some(id), effect, faults, now).0)
                })
            }
            "compute.instanceGroups.delete" => self.mutate(&t, req, env, |m, now| {
                let key = (zone.clone(), name.clone());
                let id = m
                    .project(&p)
                    .groups
                    .get(&key)
                    .map(|g| g.id)
                    .ok_or_else(|| GceError::not_found(&format!("{zone_path}/instanceGroups/{name}")))?;
                let effect = Some(Effect::DeleteGroup { zone: zone.clone(), name: name.clone() });
                let target = format!("{zone_path}/instanceGroups/{name}");
                Ok(m.start_op(&p, Some(&zone), method, "delete", target, Some(id), effect, faults, now).0)
            }),
            "compute.instanceGroups.addInstances" | "compute.instanceGroups.removeInstances" => {
                let b = body(req)?;
                let adding = method.ends_with("addInstances");
                let refs: Vec<String> = b
                    .get("instances")
                    .and_then(|i| i.as_array())
                    .map(|i| i.iter().filter_map(|r| r.get("instance")?.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if refs.is_empty() {
                    return Err(GceError::bad_request("required", "Required field 'resource.instances' not specified"));
                }
                self.mutate(&t, req, env, |m, now| {
                    let key = (zone.clone(), name.clone());
                    let group = m
                        .project(&p)
                        .groups
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| GceError::not_found(&format!("{zone_path}/instanceGroups/{name}")))?;
                    let mut names = Vec::new();
                    for r in &refs {
                        let path = normalize(&p, r);
                        let parts: Vec<&str> = path.split('/').collect();
                        let ["projects", rp, "zones", rz, "instances", n] = parts.as_slice() else {
                            return Err(GceError::invalid_field("resource.instances", r, "Expected an instance URL."));
                        };
                        if *rp != p || *rz != zone {
                            return Err(GceError::bad_request(
                                "invalid",
                                format!("Instance '{path}' is not in the zone of instance group '{}'", group.name),
                            ));
                        }
                        if !m.project(&p).instances.contains_key(&(zone.clone(), (*n).to_owned())) {
                            return Err(GceError::not_found(&path));
                        }
                        if adding && group.members.contains(*n) {
                            return Err(GceError::bad_request(
                                "memberAlreadyExists",
                                format!("Resource '{path}' is already a member of '{zone_path}/instanceGroups/{name}'"),
                            ));
                        }
                        names.push((*n).to_owned());
                    }
                    let effect = if adding {
                        Effect::AddMembers { zone: zone.clone(), group: name.clone(), names }
                    } else {
                        Effect::RemoveMembers { zone: zone.clone(), group: name.clone(), names }
                    };
                    let kind = if adding { "addInstances" } else { "removeInstances" };
                    let target = format!("{zone_path}/instanceGroups/{name}");
                    Ok(m.start_op(&p, Some(&zone), method, kind, target, Some(group.id), Some(effect), faults, now).0)
                })
            }
            "compute.instanceGroups.listInstances" => {
                let b = body(req)?;
                let state = string(&b, "instanceState").unwrap_or_else(|| "ALL".into());
                let mut m = self.model.lock().expect("model poisoned");
                let project = m.project(&p);
                let group = project
                    .groups
                    .get(&(zone.clone(), name.clone()))
                    .ok_or_else(|| GceError::not_found(&format!("{zone_path}/instanceGroups/{name}")))?;
                let items = group
                    .members
                    .iter()
                    .filter_map(|n| project.instances.get(&(zone.clone(), n.clone())))
                    .filter(|vm| state != "RUNNING" || vm.status(now) == "RUNNING")
                    .map(|vm| {
                        let v = json!({
                            "instance": link(env, &format!("{zone_path}/instances/{}", vm.name)),
                            "status": vm.status(now),
                            "namedPorts": group.named_ports,
                        });
                        (vm.name.clone(), v)
                    })
                    .collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#instanceGroupsListInstances", items, next))
            }
            "compute.backendServices.list" => {
                let mut m = self.model.lock().expect("model poisoned");
                let items =
                    m.project(&p).backends.iter().map(|(n, b)| (n.clone(), backend_json(env, &p, n, b))).collect();
                let (items, next) = list(req, items)?;
                Ok(list_response(env, req, "compute#backendServiceList", items, next))
            }
            "compute.backendServices.get" => {
                let mut m = self.model.lock().expect("model poisoned");
                let b = m
                    .project(&p)
                    .backends
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| GceError::not_found(&format!("projects/{p}/global/backendServices/{name}")))?;
                Ok(Response::ok(&backend_json(env, &p, &name, &b)))
            }
            "compute.backendServices.insert" => {
                let mut resource = body(req)?;
                let bs_name = required(&resource, "name", "resource.name")?;
                self.mutate(&t, req, env, |m, now| {
                    if !valid_name(&bs_name) {
                        return Err(GceError::invalid_field("resource.name", &bs_name, "Must be a valid name."));
                    }
                    if m.project(&p).backends.contains_key(&bs_name) {
                        return Err(GceError::already_exists(&format!(
                            "projects/{p}/global/backendServices/{bs_name}"
                        )));
                    }
                    for k in ["kind", "id", "selfLink", "fingerprint", "creationTimestamp", "name"] {
                        resource.remove(k);
                    }
                    for (k, v) in [
                        ("protocol", json!("HTTP")),
                        ("port", json!(80)),
                        ("portName", json!("http")),
                        ("timeoutSec", json!(30)),
                        ("loadBalancingScheme", json!("EXTERNAL")),
                        ("sessionAffinity", json!("NONE")),
                        ("connectionDraining", json!({ "drainingTimeoutSec": 300 })),
                        ("backends", json!([])),
                    ] {
                        resource.entry(k).or_insert(v);
                    }
                    m.check_backends(&p, &mut resource)?;
                    let backend = Backend {
                        id: m.id(),
                        created: now,
                        resource: resource.clone(),
                        fingerprint: m.new_fingerprint(),
                    };
                    let (id, target) = (backend.id, format!("projects/{p}/global/backendServices/{bs_name}"));
                    let effect = Some(Effect::PutBackend(bs_name.clone(), backend));
                    Ok(m.start_op(&p, None, method, "insert", target, Some(id), effect, faults, now).0)
                })
            }
            "compute.backendServices.patch" | "compute.backendServices.update" => {
                let given = body(req)?;
                let patching = method.ends_with("patch");
                self.mutate(&t, req, env, |m, now| {
                    let current =
                        m.project(&p).backends.get(&name).cloned().ok_or_else(|| {
                            GceError::not_found(&format!("projects/{p}/global/backendServices/{name}"))
                        })?;
                    if let Some(fp) = string(&given, "fingerprint")
                        && fp != current.fingerprint
                    {
                        return Err(GceError::condition_not_met(
                            "Invalid fingerprint: the resource changed since it was read; get it again and retry.",
                        ));
                    }
                    if let Some(n) = string(&given, "name")
                        && n != name
                    {
                        return Err(GceError::invalid_field("resource.name", &n, "The name cannot be changed."));
                    }
                    let mut resource = if patching { current.resource.clone() } else { Map::new() };
                    for (k, v) in given.iter() {
                        if ["kind", "id", "selfLink", "fingerprint", "creationTimestamp", "name"].contains(&k.as_str())
                        {
                            continue;
                        }
                        merge(&mut resource, k, v.clone());
                    }
                    m.check_backends(&p, &mut resource)?;
                    let backend = Backend {
                        id: current.id,
                        created: current.created,
                        resource,
                        fingerprint: m.new_fingerprint(),
                    };
                    let target = format!("projects/{p}/global/backendServices/{name}");
                    let effect = Some(Effect::PutBackend(name.clone(), backend));
                    let kind = if patching { "patch" } else { "update" };
                    Ok(m.start_op(&p, None, method, kind, target, Some(current.id), effect, faults, now).0)
                })
            }
            "compute.backendServices.delete" => {
                self.mutate(&t, req, env, |m, now| {
                    let id =
                        m.project(&p).backends.get(&name).map(|b| b.id).ok_or_else(|| {
                            GceError::not_found(&format!("projects/{p}/global/backendServices/{name}"))
                        })?;
                    let target = format!("projects/{p}/global/backendServices/{name}");
                    Ok(m.start_op(
                        &p,
                        None,
                        method,
                        "delete",
                        target,
                        Some(id),
                        Some(Effect::DeleteBackend(name.clone())),
                        faults,
                        now,
                    )
                    .0)
                })
            }
            "compute.backendServices.getHealth" => {
                let b = body(req)?;
                let group_ref = required(&b, "group", "resource.group")?;
                let group_path = normalize(&p, &group_ref);
                let mut m = self.model.lock().expect("model poisoned");
                let bs = m
                    .project(&p)
                    .backends
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| GceError::not_found(&format!("projects/{p}/global/backendServices/{name}")))?;
                // A backend service probes only the groups it serves (capacityScaler 0 included).
                if !bs.groups().iter().any(|(g, _)| *g == group_path) {
                    return Err(GceError::invalid_field(
                        "resource.group",
                        &group_ref,
                        &format!("The instance group is not a backend of backend service '{name}'."),
                    ));
                }
                let parts: Vec<&str> = group_path.split('/').collect();
                let (gz, gn) = (parts.get(3).copied().unwrap_or(""), parts.get(5).copied().unwrap_or(""));
                let port = bs.resource.get("port").cloned().unwrap_or(json!(80));
                let model: &Model = &m;
                let group = model.projects.get(&p).and_then(|proj| proj.groups.get(&(gz.to_owned(), gn.to_owned())));
                let statuses: Vec<Value> = group
                    .map(|g| {
                        g.members
                            .iter()
                            .filter_map(|n| model.projects[&p].instances.get(&(gz.to_owned(), n.clone())))
                            .map(|vm| {
                                let state = if model.healthy(vm, now, faults) { "HEALTHY" } else { "UNHEALTHY" };
                                json!({
                                    "instance": link(env, &format!("projects/{p}/zones/{gz}/instances/{}", vm.name)),
                                    "ipAddress": vm.network_ip,
                                    "port": port,
                                    "healthState": state,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut v = json!({ "kind": "compute#backendServiceGroupHealth" });
                if !statuses.is_empty() {
                    v["healthStatus"] = Value::Array(statuses);
                }
                Ok(Response::ok(&v))
            }
            other => Err(GceError::bad_request("invalid", format!("{other} is not served by this fake"))),
        }
    }
}

/// JSON merge for patch: objects merge field by field, anything else replaces, `null` removes.
fn merge(into: &mut Map<String, Value>, key: &str, value: Value) {
    match (into.get_mut(key), value) {
        (_, Value::Null) => {
            into.remove(key);
        }
        (Some(Value::Object(existing)), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(existing, &k, v);
            }
        }
        (_, v) => {
            into.insert(key.to_owned(), v);
        }
    }
}

fn route(method: &str, segments: &[&str]) -> Option<(&'static str, Target)> {
    let ["compute", "v1", "projects", project, rest @ ..] = segments else { return None };
    let t = |zone: Option<&str>, name: Option<&str>| Target {
        project: (*project).to_owned(),
        zone: zone.map(str::to_owned),
        name: name.map(str::to_owned),
    };
    let found = match (method, rest) {
        ("GET", ["zones", z, "instances"]) => ("compute.instances.list", t(Some(z), None)),
        ("POST", ["zones", z, "instances"]) => ("compute.instances.insert", t(Some(z), None)),
        ("POST", ["zones", z, "instances", "bulkInsert"]) => ("compute.instances.bulkInsert", t(Some(z), None)),
        ("GET", ["zones", z, "instances", n]) => ("compute.instances.get", t(Some(z), Some(n))),
        ("DELETE", ["zones", z, "instances", n]) => ("compute.instances.delete", t(Some(z), Some(n))),
        ("POST", ["zones", z, "instances", n, "stop"]) => ("compute.instances.stop", t(Some(z), Some(n))),
        ("POST", ["zones", z, "instances", n, "start"]) => ("compute.instances.start", t(Some(z), Some(n))),
        ("POST", ["zones", z, "instances", n, "setLabels"]) => ("compute.instances.setLabels", t(Some(z), Some(n))),
        ("POST", ["zones", z, "instances", n, "setMetadata"]) => ("compute.instances.setMetadata", t(Some(z), Some(n))),
        ("GET", ["aggregated", "instances"]) => ("compute.instances.aggregatedList", t(None, None)),
        ("GET", ["zones", z, "disks", n]) => ("compute.disks.get", t(Some(z), Some(n))),
        ("GET", ["zones", z, "operations"]) => ("compute.zoneOperations.list", t(Some(z), None)),
        ("GET", ["zones", z, "operations", n]) => ("compute.zoneOperations.get", t(Some(z), Some(n))),
        ("POST", ["zones", z, "operations", n, "wait"]) => ("compute.zoneOperations.wait", t(Some(z), Some(n))),
        ("GET", ["global", "operations"]) => ("compute.globalOperations.list", t(None, None)),
        ("GET", ["global", "operations", n]) => ("compute.globalOperations.get", t(None, Some(n))),
        ("POST", ["global", "operations", n, "wait"]) => ("compute.globalOperations.wait", t(None, Some(n))),
        ("GET", ["global", "images"]) => ("compute.images.list", t(None, None)),
        ("POST", ["global", "images"]) => ("compute.images.insert", t(None, None)),
        ("GET", ["global", "images", "family", f]) => ("compute.images.getFromFamily", t(None, Some(f))),
        ("GET", ["global", "images", n]) => ("compute.images.get", t(None, Some(n))),
        ("POST", ["global", "images", n, "deprecate"]) => ("compute.images.deprecate", t(None, Some(n))),
        ("GET", ["regions", r]) => ("compute.regions.get", t(None, Some(r))),
        ("GET", ["zones", z, "instanceGroups"]) => ("compute.instanceGroups.list", t(Some(z), None)),
        ("POST", ["zones", z, "instanceGroups"]) => ("compute.instanceGroups.insert", t(Some(z), None)),
        ("GET", ["zones", z, "instanceGroups", g]) => ("compute.instanceGroups.get", t(Some(z), Some(g))),
        ("DELETE", ["zones", z, "instanceGroups", g]) => ("compute.instanceGroups.delete", t(Some(z), Some(g))),
        ("POST", ["zones", z, "instanceGroups", g, "addInstances"]) => {
            ("compute.instanceGroups.addInstances", t(Some(z), Some(g)))
        }
        ("POST", ["zones", z, "instanceGroups", g, "removeInstances"]) => {
            ("compute.instanceGroups.removeInstances", t(Some(z), Some(g)))
        }
        ("POST", ["zones", z, "instanceGroups", g, "listInstances"]) => {
            ("compute.instanceGroups.listInstances", t(Some(z), Some(g)))
        }
        ("GET", ["global", "backendServices"]) => ("compute.backendServices.list", t(None, None)),
        ("POST", ["global", "backendServices"]) => ("compute.backendServices.insert", t(None, None)),
        ("GET", ["global", "backendServices", b]) => ("compute.backendServices.get", t(None, Some(b))),
        ("PATCH", ["global", "backendServices", b]) => ("compute.backendServices.patch", t(None, Some(b))),
        ("PUT", ["global", "backendServices", b]) => ("compute.backendServices.update", t(None, Some(b))),
        ("DELETE", ["global", "backendServices", b]) => ("compute.backendServices.delete", t(None, Some(b))),
        ("POST", ["global", "backendServices", b, "getHealth"]) => {
            ("compute.backendServices.getHealth", t(None, Some(b)))
        }
        _ => return None,
    };
    Some(found)
}

impl Api for GceApi {
    type Route = (&'static str, Target);
    type Error = GceError;

    fn route(&self, request: &Request) -> Result<(String, Self::Route)> {
        match route(&request.method, &request.segments()) {
            Some((method, target)) => Ok((method.to_owned(), (method, target))),
            None => Err(GceError::not_found(request.path.trim_start_matches("/compute/v1/"))),
        }
    }

    fn handle(&self, (method, target): Self::Route, request: &Request, env: &Env) -> Result<Response> {
        self.serve(method, target, request, env)
    }

    fn fault_error(&self, fault: &Fault) -> GceError {
        match fault {
            Fault::RateLimited { status } => GceError::rate_limited(*status),
            Fault::ServerError { status } => GceError::backend_error(*status),
            _ => GceError::backend_error(500),
        }
    }

    fn reset(&self) {
        self.model.lock().expect("model poisoned").reset();
    }

    fn state(&self, env: &Env) -> Value {
        let now = env.clock.now();
        let mut m = self.model.lock().expect("model poisoned");
        m.tick(now);
        let model: &Model = &m;
        let projects: Map<String, Value> = model
            .projects
            .iter()
            .map(|(name, p)| {
                let instances: Vec<Value> = p
                    .instances
                    .values()
                    .map(|vm| {
                        json!({
                            "zone": vm.zone, "name": vm.name, "status": vm.status(now), "image": vm.image,
                            "machineType": vm.machine_type, "networkIP": vm.network_ip, "labels": vm.labels,
                            "metadata": super::metadata::render(&vm.metadata, &vm.metadata_fingerprint),
                            "healthy": model.healthy(vm, now, &env.faults),
                        })
                    })
                    .collect();
                let groups: Vec<Value> = p
                    .groups
                    .values()
                    .map(|g| json!({ "zone": g.zone, "name": g.name, "members": g.members }))
                    .collect();
                let backends: Vec<Value> = p
                    .backends
                    .iter()
                    .map(|(n, b)| {
                        // What receives traffic: members of groups with a capacity above zero.
                        let serving: Vec<String> = b
                            .groups()
                            .iter()
                            .filter(|(_, scaler)| *scaler > 0.0)
                            .filter_map(|(g, _)| {
                                let parts: Vec<&str> = g.split('/').collect();
                                p.groups.get(&((*parts.get(3)?).to_owned(), (*parts.get(5)?).to_owned()))
                            })
                            .flat_map(|g| g.members.iter().map(move |m| format!("{}/{m}", g.zone)))
                            .collect();
                        json!({ "name": n, "backends": b.resource.get("backends"), "serving": serving })
                    })
                    .collect();
                let images: Vec<&String> = p.images.keys().collect();
                let value = json!({
                    "instances": instances, "instanceGroups": groups, "backendServices": backends,
                    "images": images, "operations": p.operations.len(),
                });
                (name.clone(), value)
            })
            .collect();
        json!({ "projects": projects })
    }

    fn settings(&self) -> Value {
        serde_json::to_value(&self.model.lock().expect("model poisoned").settings).expect("settings serialize")
    }

    fn configure(&self, settings: Value) -> std::result::Result<(), String> {
        let mut m = self.model.lock().expect("model poisoned");
        let mut current = serde_json::to_value(&m.settings).expect("settings serialize");
        let Value::Object(given) = settings else { return Err("settings must be a JSON object".into()) };
        for (k, v) in given {
            current[k] = v;
        }
        m.settings = serde_json::from_value(current).map_err(|e| format!("bad settings: {e}"))?;
        Ok(())
    }
}
