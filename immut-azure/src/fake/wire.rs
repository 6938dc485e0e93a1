//! The wire: ARM routes, request bodies and the JSON ARM answers, following the public REST
//! reference (`specification/compute/resource-manager` and `specification/network/
//! resource-manager` of azure-rest-api-specs, with their examples). Handlers parse, call the
//! model, render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_fake::{Api, Env, Fault, Request, Response, Timeline};
use serde_json::{Map, Value, json};

use super::error::ArmError;
use super::model::{Disk, Effect, Image, Key, Lb, Model, Nic, Outcome, SIZES, Settings, Vm, check_tags, valid_vm_name};

type Result<T> = std::result::Result<T, ArmError>;

mod extensions;

/// The api-versions each resource type accepts (a subset of what Azure serves, enough for the
/// official clients of the last two years).
const COMPUTE_VERSIONS: &[&str] =
    &["2024-07-01", "2024-03-01", "2023-09-01", "2023-07-01", "2023-03-01", "2022-11-01", "2022-08-01"];
const DISK_VERSIONS: &[&str] = &["2024-03-02", "2023-10-02", "2023-04-02", "2022-07-02"];
const GALLERY_VERSIONS: &[&str] = &["2023-07-03", "2022-08-03", "2022-03-03"];
const NETWORK_VERSIONS: &[&str] =
    &["2024-05-01", "2024-03-01", "2024-01-01", "2023-11-01", "2023-09-01", "2023-06-01", "2023-05-01", "2023-04-01"];

/// What a request addresses.
#[derive(Debug, Clone)]
pub enum Route {
    /// A VM (`name`) or the VMs (`None`) of a group.
    Vm { sub: String, group: String, name: Option<String>, action: Option<String> },
    /// An extension of a VM (`name`), or its extensions (`None`).
    Extension { sub: String, group: String, vm: String, name: Option<String> },
    /// Every VM of a subscription.
    VmAll { sub: String },
    /// An operation's status (`result`: the Location form).
    Operation { namespace: &'static str, id: String, result: bool },
    /// A disk or the disks of a group.
    Disk { sub: String, group: String, name: Option<String> },
    /// A NIC or the NICs of a group.
    Nic { sub: String, group: String, name: Option<String> },
    /// A gallery image version.
    Gallery(super::gallery::VersionPath),
    /// The compute usages of a location.
    Usages { sub: String, location: String },
    /// A marketplace image version, or (`version: None`) the versions of a SKU.
    Platform { location: String, publisher: String, offer: String, sku: String, version: Option<String> },
    /// A load balancer or the load balancers of a group.
    Lb { sub: String, group: String, name: Option<String> },
    /// A backend pool of a load balancer.
    Pool { sub: String, group: String, lb: String, pool: String },
    /// The health of a load-balancing rule.
    RuleHealth { sub: String, group: String, lb: String, rule: String },
}

/// The ARM API over the model. Clones share the model.
#[derive(Debug, Clone)]
pub struct ArmApi {
    pub(crate) model: Arc<Mutex<Model>>,
}

fn body(req: &Request) -> Result<Map<String, Value>> {
    match req.json::<Value>() {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ArmError::bad_body("The request content was invalid: the body must be a JSON object.")),
        Err(e) => {
            Err(ArmError::bad_body(format!("The request content was invalid and could not be deserialized: {e}")))
        }
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn tags_of(v: Option<&Value>) -> Result<BTreeMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Null => Ok((k.clone(), String::new())),
                _ => Err(ArmError::invalid_parameter("tags", format!("The value of tag '{k}' must be a string."))),
            })
            .collect(),
        Some(_) => Err(ArmError::invalid_parameter("tags", "Tags must be an object of strings.")),
    }
}

fn vm_id(sub: &str, group: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn nic_id(sub: &str, group: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Network/networkInterfaces/{name}")
}

fn disk_id(sub: &str, group: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/disks/{name}")
}

fn lb_id(sub: &str, group: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Network/loadBalancers/{name}")
}

/// Whether `id` is a subnet id: `/subscriptions/S/resourceGroups/G/providers/Microsoft.Network/
/// virtualNetworks/V/subnets/N`.
fn valid_subnet(id: &str) -> bool {
    let parts: Vec<String> = id.split('/').map(str::to_ascii_lowercase).collect();
    parts.len() == 11
        && parts[0].is_empty()
        && parts[1] == "subscriptions"
        && parts[3] == "resourcegroups"
        && parts[5] == "providers"
        && parts[6] == "microsoft.network"
        && parts[7] == "virtualnetworks"
        && parts[9] == "subnets"
        && parts.iter().skip(1).all(|p| !p.is_empty())
}

fn status(code: &str, display: &str, time: Option<String>) -> Value {
    let mut v = json!({ "code": code, "level": "Info", "displayStatus": display });
    if let Some(t) = time {
        v["time"] = t.into();
    }
    v
}

fn instance_view(env: &Env, m: &Model, vm: &Vm, now: Duration) -> Value {
    let state = vm.provisioning_state(now);
    let mut provisioning = match (state, &vm.failure) {
        ("Failed", Some((code, message))) => json!({
            "code": format!("ProvisioningState/failed/{code}"), "level": "Error",
            "displayStatus": "Provisioning failed", "message": message,
        }),
        (s, _) => status(
            &format!("ProvisioningState/{}", s.to_ascii_lowercase()),
            &format!(
                "Provisioning {}",
                match s {
                    "Succeeded" => "succeeded",
                    "Deleting" => "deleting",
                    _ => "in progress",
                }
            ),
            None,
        ),
    };
    if state == "Succeeded" || state == "Failed" {
        provisioning["time"] = env.clock.rfc3339(vm.provisioning.end()).into();
    }
    let mut statuses = vec![provisioning];
    if state != "Failed" {
        let (power, _) = vm.power(now, &m.settings);
        let display = match power {
            "running" => "VM running",
            "starting" => "VM starting",
            "stopping" => "VM stopping",
            "deallocating" => "VM deallocating",
            "deallocated" => "VM deallocated",
            _ => "VM stopped",
        };
        statuses.push(status(&format!("PowerState/{power}"), display, None));
    }
    json!({
        "computerName": str_at(&vm.os_profile, &["computerName"]).unwrap_or(&vm.name),
        "osName": "ubuntu",
        "osVersion": "24.04",
        "hyperVGeneration": "V2",
        "disks": [{ "name": vm.disk, "statuses": [status("ProvisioningState/succeeded", "Provisioning succeeded", Some(env.clock.rfc3339(vm.created)))] }],
        "statuses": statuses,
    })
}

fn vm_json(env: &Env, m: &Model, vm: &Vm, now: Duration, expand: bool) -> Value {
    let id = vm_id(&vm.sub, &vm.group, &vm.name);
    let mut image = vm.image.clone();
    if image.get("id").is_none()
        && let Some(v) = image.get("version").cloned()
    {
        image["exactVersion"] = v;
    }
    let mut os_profile = vm.os_profile.clone();
    if let Some(o) = os_profile.as_object_mut() {
        o.remove("customData");
        o.remove("adminPassword");
        o.entry("computerName").or_insert(vm.name.clone().into());
        o.entry("secrets").or_insert(json!([]));
        o.entry("allowExtensionOperations").or_insert(true.into());
        o.entry("requireGuestProvisionSignal").or_insert(true.into());
    }
    let nic = m.nics.get(&Key::new(&vm.sub, &vm.group, &vm.nic));
    let mut props = json!({
        "vmId": vm.vm_id,
        "hardwareProfile": { "vmSize": vm.size },
        "storageProfile": {
            "imageReference": image,
            "osDisk": {
                "osType": "Linux",
                "name": vm.disk,
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": { "storageAccountType": "StandardSSD_LRS", "id": disk_id(&vm.sub, &vm.group, &vm.disk) },
                "deleteOption": if m.disks.get(&Key::new(&vm.sub, &vm.group, &vm.disk)).is_none_or(|d| d.delete_with_vm) { "Delete" } else { "Detach" },
                "diskSizeGB": 30,
            },
            "dataDisks": [],
            "diskControllerType": "SCSI",
        },
        "osProfile": os_profile,
        "networkProfile": {
            "networkApiVersion": "2020-11-01",
            "networkInterfaceConfigurations": [{
                "name": vm.nic,
                "properties": {
                    "primary": true,
                    "deleteOption": if nic.is_none_or(|n| n.delete_with_vm) { "Delete" } else { "Detach" },
                    "enableAcceleratedNetworking": false,
                    "enableIPForwarding": false,
                    "ipConfigurations": [{
                        "name": nic.map(|n| n.ip_config.clone()).unwrap_or_else(|| "ipconfig1".into()),
                        "properties": { "subnet": { "id": vm.subnet }, "primary": true, "privateIPAddressVersion": "IPv4" },
                    }],
                },
            }],
            "networkInterfaces": [{ "id": nic_id(&vm.sub, &vm.group, &vm.nic), "properties": { "primary": true, "deleteOption": "Delete" } }],
        },
        "provisioningState": vm.provisioning_state(now),
        "timeCreated": env.clock.rfc3339(vm.created),
    });
    if expand {
        props["instanceView"] = instance_view(env, m, vm, now);
    }
    let mut v = json!({
        "name": vm.name,
        "id": id,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": vm.tags,
        "etag": vm.etag,
        "properties": props,
    });
    if !vm.zones.is_empty() {
        v["zones"] = json!(vm.zones);
    }
    if !vm.extensions.is_empty() {
        v["resources"] = extensions::resources(vm);
    }
    v
}

fn nic_json(n: &Nic, sub: &str) -> Value {
    let id = nic_id(sub, &n.group, &n.name);
    let mut props = json!({
        "provisioningState": "Succeeded",
        "ipConfigurations": [{
            "name": n.ip_config,
            "id": format!("{id}/ipConfigurations/{}", n.ip_config),
            "properties": {
                "provisioningState": "Succeeded",
                "privateIPAddress": n.ip,
                "privateIPAllocationMethod": "Dynamic",
                "subnet": { "id": n.subnet },
                "primary": true,
                "privateIPAddressVersion": "IPv4",
            },
        }],
        "primary": true,
        "enableAcceleratedNetworking": false,
        "enableIPForwarding": false,
        "nicType": "Standard",
    });
    if let Some(vm) = &n.vm {
        props["virtualMachine"] = json!({ "id": vm_id(sub, &n.group, vm) });
    }
    json!({ "name": n.name, "id": id, "type": "Microsoft.Network/networkInterfaces", "location": n.location, "properties": props })
}

fn disk_json(d: &Disk, sub: &str) -> Value {
    let mut props = json!({
        "provisioningState": "Succeeded",
        "diskSizeGB": d.size_gb,
        "diskState": if d.vm.is_some() { "Attached" } else { "Unattached" },
        "osType": "Linux",
        "creationData": { "createOption": "FromImage" },
    });
    if let Some(vm) = &d.vm {
        props["managedBy"] = vm_id(sub, &d.group, vm).into();
    }
    json!({
        "name": d.name, "id": disk_id(sub, &d.group, &d.name), "type": "Microsoft.Compute/disks",
        "location": d.location, "sku": { "name": "StandardSSD_LRS", "tier": "Standard" }, "properties": props,
    })
}

fn lb_json(lb: &Lb, sub: &str, now: Duration) -> Value {
    let id = lb_id(sub, &lb.group, &lb.name);
    let mut props = lb.properties.clone();
    // NRP fills in back-references: which rules use each pool.
    let rules: Vec<(String, String)> = props
        .get("loadBalancingRules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let rule_id = r.get("id")?.as_str()?.to_owned();
                    let pool = str_at(r, &["properties", "backendAddressPool", "id"])?.to_ascii_lowercase();
                    Some((pool, rule_id))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Array(pools)) = props.get_mut("backendAddressPools") {
        for p in pools.iter_mut() {
            let pid = p.get("id").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
            let used: Vec<Value> =
                rules.iter().filter(|(pool, _)| *pool == pid).map(|(_, r)| json!({ "id": r })).collect();
            if !used.is_empty() {
                p["properties"]["loadBalancingRules"] = Value::Array(used);
            }
        }
    }
    let state = lb.life.at(now);
    props.insert("provisioningState".into(), state.into());
    for (_, v) in props.iter_mut() {
        if let Value::Array(children) = v {
            for c in children.iter_mut() {
                c["etag"] = lb.etag.clone().into();
                if let Some(p) = c.get_mut("properties").and_then(Value::as_object_mut) {
                    p.insert("provisioningState".into(), state.into());
                }
            }
        }
    }
    json!({
        "name": lb.name, "id": id, "etag": lb.etag, "type": "Microsoft.Network/loadBalancers",
        "location": lb.location, "tags": lb.tags, "sku": lb.sku, "properties": props,
    })
}

/// The collections of a load balancer whose children are addressed by id.
const LB_CHILDREN: &[&str] = &[
    "frontendIPConfigurations",
    "backendAddressPools",
    "loadBalancingRules",
    "probes",
    "inboundNatRules",
    "outboundRules",
];

/// Normalizes a load balancer's properties (ids and types of every child, pool addresses) and
/// checks the references between them, as NRP does on a PUT.
fn normalize_lb(id: &str, props: &mut Map<String, Value>) -> Result<()> {
    for collection in LB_CHILDREN {
        let Some(children) = props.get_mut(*collection) else { continue };
        let Value::Array(children) = children else {
            return Err(ArmError::invalid_parameter(collection, format!("'{collection}' must be an array.")));
        };
        let mut seen = Vec::new();
        for (i, c) in children.iter_mut().enumerate() {
            let name = c.get("name").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
                ArmError::invalid_parameter(&format!("properties.{collection}[{i}].name"), "A name is required.")
            })?;
            if seen.contains(&name.to_ascii_lowercase()) {
                return Err(ArmError::invalid_parameter(
                    &format!("properties.{collection}[{i}].name"),
                    format!("Duplicate name '{name}' in {collection}."),
                ));
            }
            seen.push(name.to_ascii_lowercase());
            c["id"] = format!("{id}/{collection}/{name}").into();
            c["type"] = format!("Microsoft.Network/loadBalancers/{collection}").into();
            if c.get("properties").is_none_or(|p| !p.is_object()) {
                c["properties"] = json!({});
            }
            if let Some(p) = c.get_mut("properties").and_then(Value::as_object_mut) {
                p.remove("provisioningState");
                p.remove("loadBalancingRules");
            }
        }
    }
    let ids = |props: &Map<String, Value>, collection: &str| -> Vec<String> {
        props
            .get(collection)
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c.get("id")?.as_str().map(str::to_ascii_lowercase)).collect())
            .unwrap_or_default()
    };
    let (pools, probes, frontends) =
        (ids(props, "backendAddressPools"), ids(props, "probes"), ids(props, "frontendIPConfigurations"));
    if let Some(Value::Array(pools_json)) = props.get_mut("backendAddressPools") {
        for (i, p) in pools_json.iter_mut().enumerate() {
            let mut ips = Vec::new();
            if let Some(Value::Array(addrs)) = p["properties"].get_mut("loadBalancerBackendAddresses") {
                for (j, a) in addrs.iter_mut().enumerate() {
                    let field =
                        format!("properties.backendAddressPools[{i}].properties.loadBalancerBackendAddresses[{j}]");
                    let ip = str_at(a, &["properties", "ipAddress"]).map(str::to_owned).ok_or_else(|| {
                        ArmError::invalid_parameter(
                            &format!("{field}.properties.ipAddress"),
                            "An IP address is required for a backend address of an IP-based pool.",
                        )
                    })?;
                    if ips.contains(&ip) {
                        return Err(ArmError::new(
                            400,
                            "LoadBalancerBackendAddressPoolWithDuplicateIpAddresses",
                            format!("The backend address pool has the IP address {ip} more than once."),
                        ));
                    }
                    if a.get("name").and_then(Value::as_str).is_none() {
                        a["name"] = ip.replace('.', "-").into();
                    }
                    ips.push(ip);
                }
            }
        }
    }
    if let Some(Value::Array(rules)) = props.get("loadBalancingRules") {
        for (i, r) in rules.iter().enumerate() {
            for (what, known, required) in [
                ("backendAddressPool", &pools, false),
                ("probe", &probes, false),
                ("frontendIPConfiguration", &frontends, true),
            ] {
                match str_at(r, &["properties", what, "id"]) {
                    Some(rid) if known.contains(&rid.to_ascii_lowercase()) => {}
                    Some(rid) => {
                        return Err(ArmError::new(
                            400,
                            "InvalidResourceReference",
                            format!(
                                "Resource {rid} referenced by resource {}/loadBalancingRules[{i}] was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.",
                                id
                            ),
                        ));
                    }
                    None if required => {
                        return Err(ArmError::invalid_parameter(
                            &format!("properties.loadBalancingRules[{i}].properties.{what}"),
                            format!("A load-balancing rule needs a {what}."),
                        ));
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// `LoadBalancerHealthPerRule` of a rule at `now`: each address of the rule's pool, `Up` when
/// the rule has a probe and the VM with that IP passes it.
fn rule_health(
    m: &Model,
    (sub, group, lb): (&str, &str, &str),
    rule: &str,
    now: Duration,
    faults: &immut_fake::Faults,
) -> Result<Value> {
    let found = m
        .lbs
        .get(&Key::new(sub, group, lb))
        .ok_or_else(|| ArmError::not_found("Microsoft.Network/loadBalancers", lb, group))?;
    let props = &found.properties;
    let r = props
        .get("loadBalancingRules")
        .and_then(Value::as_array)
        .and_then(|rs| rs.iter().find(|r| r["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(rule))))
        .ok_or_else(|| {
            ArmError::not_found("Microsoft.Network/loadBalancers/loadBalancingRules", &format!("{lb}/{rule}"), group)
        })?;
    let probed = str_at(r, &["properties", "probe", "id"]).is_some();
    let pool_id = str_at(r, &["properties", "backendAddressPool", "id"]).map(str::to_ascii_lowercase);
    let addrs: Vec<String> = props
        .get("backendAddressPools")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p["id"].as_str().map(str::to_ascii_lowercase) == pool_id))
        .and_then(|p| p["properties"]["loadBalancerBackendAddresses"].as_array())
        .map(|a| a.iter().filter_map(|a| str_at(a, &["properties", "ipAddress"]).map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut up = 0;
    let entries: Vec<Value> = addrs
        .iter()
        .map(|ip| {
            let vm = m.vm_by_ip(sub, ip);
            let healthy = probed && vm.is_some_and(|vm| m.healthy(vm, now, faults));
            up += usize::from(healthy);
            let mut e = json!({
                "ipAddress": ip,
                "state": if healthy { "Up" } else { "Down" },
                "reason": if healthy { "Up_Probe_Success" } else if vm.is_none() { "Down_Unreachable" } else { "Down_Probe_Failure" },
            });
            // A reference to the NIC's IP configuration (`NetworkInterfaceIPConfiguration` in
            // the reference: an object with its id, not a string).
            if let Some(vm) = vm {
                let config = m.nics.get(&Key::new(&vm.sub, &vm.group, &vm.nic)).map_or("ipconfig1", |n| &n.ip_config);
                let id = format!("{}/ipConfigurations/{config}", nic_id(&vm.sub, &vm.group, &vm.nic));
                e["networkInterfaceIPConfigurationId"] = json!({ "id": id });
            }
            e
        })
        .collect();
    Ok(json!({ "up": up, "down": entries.len() - up, "loadBalancerBackendAddresses": entries }))
}

impl ArmApi {
    /// An API over a fresh model.
    pub fn new(settings: Settings) -> Self {
        ArmApi { model: Arc::new(Mutex::new(Model::new(settings))) }
    }

    fn lro_headers(
        env: &Env,
        m: &Model,
        sub: &str,
        namespace: &str,
        location: &str,
        op: &str,
        api: &str,
    ) -> Vec<(String, String)> {
        let base = format!("{}/subscriptions/{sub}/providers/{namespace}/locations/{location}", env.base_url);
        let mut headers = vec![("retry-after".into(), m.settings.retry_after_s.to_string())];
        if m.settings.async_operation_header {
            headers.push(("azure-asyncoperation".into(), format!("{base}/operations/{op}?api-version={api}")));
        }
        headers
    }

    fn with_location(
        mut headers: Vec<(String, String)>,
        env: &Env,
        sub: &str,
        namespace: &str,
        location: &str,
        op: &str,
        api: &str,
    ) -> Vec<(String, String)> {
        headers.push((
            "location".into(),
            format!("{}/subscriptions/{sub}/providers/{namespace}/locations/{location}/operationResults/{op}?api-version={api}", env.base_url),
        ));
        headers
    }

    fn serve(&self, route: Route, req: &Request, env: &Env) -> Result<Response> {
        let now = env.clock.now();
        let api = req.param("api-version").unwrap_or_default().to_owned();
        let mut m = self.model.lock().expect("model poisoned");
        m.tick(now);
        let faults = &env.faults;
        match route {
            Route::Vm { sub, group, name: None, .. } => {
                let expand = req.param("$expand").is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
                let vms: Vec<(String, Value)> = m
                    .vms
                    .iter()
                    .filter(|(k, _)| k.sub == sub.to_ascii_lowercase() && k.group == group.to_ascii_lowercase())
                    .map(|(k, vm)| (k.name.clone(), vm_json(env, &m, vm, now, expand)))
                    .collect();
                self.page(m.settings.page_size, req, env, vms)
            }
            Route::Extension { sub, group, vm, name } => {
                self.serve_extension(&mut m, req, env, (&sub, &group, &vm), name.as_deref(), &api, now)
            }
            Route::VmAll { sub } => {
                let vms: Vec<(String, Value)> = m
                    .vms
                    .iter()
                    .filter(|(k, _)| k.sub == sub.to_ascii_lowercase())
                    .map(|(k, vm)| (format!("{}/{}", k.group, k.name), vm_json(env, &m, vm, now, false)))
                    .collect();
                self.page(m.settings.page_size, req, env, vms)
            }
            Route::Vm { sub, group, name: Some(name), action } => {
                let key = Key::new(&sub, &group, &name);
                match (req.method.as_str(), action.as_deref()) {
                    ("GET", None) => {
                        let vm = m
                            .vms
                            .get(&key)
                            .ok_or_else(|| ArmError::not_found("Microsoft.Compute/virtualMachines", &name, &group))?;
                        let expand = req.param("$expand").is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
                        Ok(Response::ok(&vm_json(env, &m, vm, now, expand)))
                    }
                    ("GET", Some("instanceview")) => {
                        let vm = m
                            .vms
                            .get(&key)
                            .ok_or_else(|| ArmError::not_found("Microsoft.Compute/virtualMachines", &name, &group))?;
                        Ok(Response::ok(&instance_view(env, &m, vm, now)))
                    }
                    ("PUT", None) => self.put_vm(&mut m, env, req, &sub, &group, &name, &api, now),
                    ("PATCH", None) => {
                        let b = body(req)?;
                        let etag = m.etag();
                        let vm = m
                            .vms
                            .get_mut(&key)
                            .ok_or_else(|| ArmError::not_found("Microsoft.Compute/virtualMachines", &name, &group))?;
                        if let Some(want) = header(req, "if-match")
                            && want != "*"
                            && want != vm.etag
                        {
                            return Err(ArmError::precondition_failed("The ETag does not match."));
                        }
                        if let Some(patch) = b.get("properties").and_then(|p| p.get("osProfile")) {
                            let has_extensions = !vm.extensions.is_empty();
                            extensions::patch_os_profile(&mut vm.os_profile, patch, has_extensions)?;
                        }
                        if b.keys().any(|k| k != "tags") {
                            vm.updates += 1;
                        }
                        if let Some(size) =
                            str_at(&Value::Object(b.clone()), &["properties", "hardwareProfile", "vmSize"])
                        {
                            vm.size = size.to_owned();
                        }
                        if b.contains_key("tags") {
                            let tags = tags_of(b.get("tags"))?;
                            check_tags(&tags)?;
                            vm.tags = tags;
                        }
                        vm.etag = etag;
                        let location = vm.location.clone();
                        let took = Duration::from_millis(m.settings.lb_update_ms);
                        let op = m.start_op(
                            "Microsoft.Compute",
                            &location,
                            took,
                            now,
                            None,
                            Effect::None,
                            vm_id(&sub, &group, &name),
                        );
                        let vm = &m.vms[&key];
                        let mut r = Response::ok(&vm_json(env, &m, vm, now, false));
                        r.headers.extend(Self::lro_headers(env, &m, &sub, "Microsoft.Compute", &location, &op, &api));
                        Ok(r)
                    }
                    ("DELETE", None) => {
                        let Some(vm) = m.vms.get_mut(&key) else {
                            return Ok(Response { status: 204, headers: Vec::new(), body: Vec::new() });
                        };
                        if vm.deleting.is_none() {
                            vm.deleting = Some(now);
                        }
                        let location = vm.location.clone();
                        let mut took = Duration::from_millis(m.settings.delete_ms);
                        if let Some(Fault::SlowOperation { extra_ms }) =
                            faults.take("VirtualMachines_Delete", &name, |f| matches!(f, Fault::SlowOperation { .. }))
                        {
                            took += Duration::from_millis(extra_ms);
                        }
                        let op = m.start_op(
                            "Microsoft.Compute",
                            &location,
                            took,
                            now,
                            None,
                            Effect::DeleteVm(key),
                            vm_id(&sub, &group, &name),
                        );
                        let headers = Self::with_location(
                            Self::lro_headers(env, &m, &sub, "Microsoft.Compute", &location, &op, &api),
                            env,
                            &sub,
                            "Microsoft.Compute",
                            &location,
                            &op,
                            &api,
                        );
                        Ok(Response { status: 202, headers, body: Vec::new() })
                    }
                    ("POST", Some("deallocate")) => {
                        let vm = m
                            .vms
                            .get_mut(&key)
                            .ok_or_else(|| ArmError::not_found("Microsoft.Compute/virtualMachines", &name, &group))?;
                        vm.deallocated = Some(now);
                        let location = vm.location.clone();
                        let took = Duration::from_millis(m.settings.deallocate_ms);
                        let op = m.start_op(
                            "Microsoft.Compute",
                            &location,
                            took,
                            now,
                            None,
                            Effect::None,
                            vm_id(&sub, &group, &name),
                        );
                        let headers = Self::with_location(
                            Self::lro_headers(env, &m, &sub, "Microsoft.Compute", &location, &op, &api),
                            env,
                            &sub,
                            "Microsoft.Compute",
                            &location,
                            &op,
                            &api,
                        );
                        Ok(Response { status: 202, headers, body: Vec::new() })
                    }
                    _ => Err(ArmError::no_route(&req.path)),
                }
            }
            Route::Operation { namespace, id, result } => {
                let op =
                    m.ops.get(&id).cloned().ok_or_else(|| {
                        ArmError::new(404, "NotFound", format!("The operation '{id}' was not found."))
                    })?;
                if op.namespace != namespace {
                    return Err(ArmError::new(404, "NotFound", format!("The operation '{id}' was not found.")));
                }
                let state = op.life.at(now);
                if result {
                    return Ok(match (state, &op.error) {
                        ("InProgress", _) => {
                            let sub = op.resource.split('/').nth(2).unwrap_or("").to_owned();
                            let headers = Self::with_location(
                                vec![("retry-after".into(), m.settings.retry_after_s.to_string())],
                                env,
                                &sub,
                                namespace,
                                &op.location,
                                &op.id,
                                &api,
                            );
                            Response { status: 202, headers, body: Vec::new() }
                        }
                        (_, Some((code, message))) => ArmError::new(409, code.clone(), message.clone()).into_response(),
                        _ => match &op.outcome {
                            Outcome::Nothing => Response { status: 204, headers: Vec::new(), body: Vec::new() },
                            Outcome::RuleHealth { sub, group, lb, rule } => {
                                Response::ok(&rule_health(&m, (sub, group, lb), rule, now, faults)?)
                            }
                        },
                    });
                }
                let mut v = json!({ "name": op.id, "status": state, "startTime": env.clock.rfc3339(op.life.start()) });
                if state != "InProgress" {
                    v["endTime"] = env.clock.rfc3339(op.life.end()).into();
                }
                if let (false, Some((code, message))) = (state == "InProgress", &op.error) {
                    v["error"] = json!({ "code": code, "message": message, "details": [] });
                }
                let mut r = Response::ok(&v);
                if state == "InProgress" {
                    r.headers.push(("retry-after".into(), m.settings.retry_after_s.to_string()));
                }
                Ok(r)
            }
            Route::Disk { sub, group, name } => match name {
                Some(n) => {
                    let d = m
                        .disks
                        .get(&Key::new(&sub, &group, &n))
                        .ok_or_else(|| ArmError::not_found("Microsoft.Compute/disks", &n, &group))?;
                    Ok(Response::ok(&disk_json(d, &sub)))
                }
                None => {
                    let items: Vec<(String, Value)> = m
                        .disks
                        .iter()
                        .filter(|(k, _)| k.sub == sub.to_ascii_lowercase() && k.group == group.to_ascii_lowercase())
                        .map(|(k, d)| (k.name.clone(), disk_json(d, &sub)))
                        .collect();
                    self.page(m.settings.page_size, req, env, items)
                }
            },
            Route::Nic { sub, group, name } => match name {
                Some(n) => {
                    let nic = m
                        .nics
                        .get(&Key::new(&sub, &group, &n))
                        .ok_or_else(|| ArmError::not_found("Microsoft.Network/networkInterfaces", &n, &group))?;
                    Ok(Response::ok(&nic_json(nic, &sub)))
                }
                None => {
                    let items: Vec<(String, Value)> = m
                        .nics
                        .iter()
                        .filter(|(k, _)| k.sub == sub.to_ascii_lowercase() && k.group == group.to_ascii_lowercase())
                        .map(|(k, n)| (k.name.clone(), nic_json(n, &sub)))
                        .collect();
                    self.page(m.settings.page_size, req, env, items)
                }
            },
            Route::Gallery(path) => super::gallery::serve(&mut m, req, &path),
            Route::Usages { sub, location } => {
                let items = super::usage::usages(&m, &sub, &location, now);
                self.page(m.settings.page_size, req, env, items)
            }
            Route::Platform { location, publisher, offer, sku, version } => {
                let prefix = format!("{publisher}:{offer}:{sku}:").to_ascii_lowercase();
                let base = format!(
                    "/Subscriptions/{}/Providers/Microsoft.Compute/Locations/{location}/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions",
                    req.segments().get(1).copied().unwrap_or("")
                );
                match version {
                    Some(v) => {
                        let urn = format!("{prefix}{v}");
                        let img = m.image(&urn).ok_or_else(|| {
                            ArmError::new(404, "ImageNotFound", format!("Artifact: VMImage was not found. Publisher '{publisher}', offer '{offer}', sku '{sku}', version '{v}'."))
                        })?;
                        let version = img.id.rsplit(':').next().unwrap_or_default().to_owned();
                        Ok(Response::ok(&json!({
                            "id": format!("{base}/{version}"), "name": version, "location": location,
                            "properties": { "osDiskImage": { "operatingSystem": "Linux", "sizeInGb": 30 }, "hyperVGeneration": "V2", "architecture": "x64", "imageDeprecationStatus": { "imageState": "Active" } },
                        })))
                    }
                    None => {
                        let list: Vec<Value> = m
                            .images
                            .iter()
                            .filter(|(k, _)| k.starts_with(&prefix))
                            .map(|(_, i)| {
                                let v = i.id.rsplit(':').next().unwrap_or_default();
                                json!({ "id": format!("{base}/{v}"), "name": v, "location": location })
                            })
                            .collect();
                        Ok(Response::ok(&Value::Array(list)))
                    }
                }
            }
            Route::Lb { sub, group, name: None } => {
                let items: Vec<(String, Value)> = m
                    .lbs
                    .iter()
                    .filter(|(k, _)| k.sub == sub.to_ascii_lowercase() && k.group == group.to_ascii_lowercase())
                    .map(|(k, lb)| (k.name.clone(), lb_json(lb, &sub, now)))
                    .collect();
                self.page(m.settings.page_size, req, env, items)
            }
            Route::Lb { sub, group, name: Some(name) } => {
                let key = Key::new(&sub, &group, &name);
                match req.method.as_str() {
                    "GET" => {
                        let lb = m
                            .lbs
                            .get(&key)
                            .ok_or_else(|| ArmError::not_found("Microsoft.Network/loadBalancers", &name, &group))?;
                        Ok(Response::ok(&lb_json(lb, &sub, now)))
                    }
                    "DELETE" => Ok(match m.lbs.remove(&key) {
                        Some(_) => Response { status: 200, headers: Vec::new(), body: Vec::new() },
                        None => Response { status: 204, headers: Vec::new(), body: Vec::new() },
                    }),
                    "PUT" => {
                        let mut b = body(req)?;
                        let existing = m.lbs.get(&key).cloned();
                        match (header(req, "if-match"), header(req, "if-none-match"), &existing) {
                            (_, Some("*"), Some(_)) => {
                                return Err(ArmError::precondition_failed("The load balancer exists."));
                            }
                            (Some(want), _, Some(lb)) if want != "*" && want != lb.etag => {
                                return Err(ArmError::precondition_failed(
                                    "The ETag given in If-Match does not match the resource's.",
                                ));
                            }
                            (Some(_), _, None) => {
                                return Err(ArmError::precondition_failed("The load balancer does not exist."));
                            }
                            _ => {}
                        }
                        let location =
                            b.get("location").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
                                ArmError::new(
                                    400,
                                    "LocationRequired",
                                    "The location property is required for this definition.",
                                )
                            })?;
                        let mut props = match b.remove("properties") {
                            Some(Value::Object(p)) => p,
                            None => Map::new(),
                            Some(_) => return Err(ArmError::bad_body("'properties' must be an object.")),
                        };
                        normalize_lb(&lb_id(&sub, &group, &name), &mut props)?;
                        let etag = m.etag();
                        let took = Duration::from_millis(m.settings.lb_update_ms);
                        let lb = Lb {
                            name: existing.as_ref().map(|l| l.name.clone()).unwrap_or_else(|| name.clone()),
                            group: group.clone(),
                            location: location.clone(),
                            sku: b.get("sku").cloned().unwrap_or(json!({ "name": "Standard", "tier": "Regional" })),
                            tags: b.get("tags").cloned().unwrap_or(json!({})),
                            properties: props,
                            etag,
                            life: Timeline::new(now, [("Updating", took)], "Succeeded"),
                        };
                        m.lbs.insert(key.clone(), lb);
                        let op = m.start_op(
                            "Microsoft.Network",
                            &location,
                            took,
                            now,
                            None,
                            Effect::None,
                            lb_id(&sub, &group, &name),
                        );
                        let mut r = Response::json(
                            if existing.is_some() { 200 } else { 201 },
                            &lb_json(&m.lbs[&key], &sub, now),
                        );
                        r.headers.extend(Self::lro_headers(env, &m, &sub, "Microsoft.Network", &location, &op, &api));
                        Ok(r)
                    }
                    _ => Err(ArmError::no_route(&req.path)),
                }
            }
            Route::Pool { sub, group, lb, pool } => {
                let found = m
                    .lbs
                    .get(&Key::new(&sub, &group, &lb))
                    .ok_or_else(|| ArmError::not_found("Microsoft.Network/loadBalancers", &lb, &group))?;
                let rendered = lb_json(found, &sub, now);
                let p = rendered["properties"]["backendAddressPools"]
                    .as_array()
                    .and_then(|ps| {
                        ps.iter().find(|p| p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&pool)))
                    })
                    .cloned()
                    .ok_or_else(|| {
                        ArmError::not_found(
                            "Microsoft.Network/loadBalancers/backendAddressPools",
                            &format!("{lb}/{pool}"),
                            &group,
                        )
                    })?;
                Ok(Response::ok(&p))
            }
            Route::RuleHealth { sub, group, lb, rule } => {
                // Checked now, so that a missing rule is a 404 whether or not it is computed later.
                let health = rule_health(&m, (&sub, &group, &lb), &rule, now, faults)?;
                if m.settings.rule_health_ms == 0 {
                    return Ok(Response::ok(&health));
                }
                let location = m.lbs[&Key::new(&sub, &group, &lb)].location.clone();
                let took = Duration::from_millis(m.settings.rule_health_ms);
                let op = m.start_op(
                    "Microsoft.Network",
                    &location,
                    took,
                    now,
                    None,
                    Effect::None,
                    format!("{}/loadBalancingRules/{rule}", lb_id(&sub, &group, &lb)),
                );
                let outcome = Outcome::RuleHealth { sub: sub.clone(), group: group.clone(), lb, rule };
                m.ops.get_mut(&op).expect("just started").outcome = outcome;
                let headers = Self::with_location(
                    Self::lro_headers(env, &m, &sub, "Microsoft.Network", &location, &op, &api),
                    env,
                    &sub,
                    "Microsoft.Network",
                    &location,
                    &op,
                    &api,
                );
                Ok(Response { status: 202, headers, body: Vec::new() })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put_vm(
        &self,
        m: &mut Model,
        env: &Env,
        req: &Request,
        sub: &str,
        group: &str,
        name: &str,
        api: &str,
        now: Duration,
    ) -> Result<Response> {
        let key = Key::new(sub, group, name);
        let b = Value::Object(body(req)?);
        let existing = m.vms.get(&key).cloned();
        match (header(req, "if-match"), header(req, "if-none-match"), &existing) {
            (_, Some("*"), Some(_)) => {
                return Err(ArmError::precondition_failed(&format!(
                    "The virtual machine '{name}' already exists and If-None-Match is '*'."
                )));
            }
            (_, Some(other), _) if other != "*" => {
                return Err(ArmError::invalid_parameter("If-None-Match", "Only '*' is supported."));
            }
            (Some(want), _, Some(vm)) if want != "*" && want != vm.etag => {
                return Err(ArmError::precondition_failed("The ETag given in If-Match does not match the resource's."));
            }
            (Some(_), _, None) => {
                return Err(ArmError::precondition_failed(&format!("The virtual machine '{name}' does not exist.")));
            }
            _ => {}
        }
        let size = str_at(&b, &["properties", "hardwareProfile", "vmSize"]).map(str::to_owned);
        let tags = tags_of(b.get("tags"))?;
        check_tags(&tags)?;
        if let Some(vm) = existing {
            // An update in place: what ARM allows, and what immut never does.
            if vm.deleting.is_some() {
                return Err(ArmError::conflict(
                    "OperationNotAllowed",
                    format!("The virtual machine '{name}' is being deleted."),
                ));
            }
            let etag = m.etag();
            let v = m.vms.get_mut(&key).expect("exists");
            v.updates += 1;
            v.tags = tags;
            if let Some(s) = size {
                v.size = s;
            }
            v.etag = etag;
            let location = v.location.clone();
            let took = Duration::from_millis(m.settings.lb_update_ms);
            let op = m.start_op("Microsoft.Compute", &location, took, now, None, Effect::None, vm_id(sub, group, name));
            let mut r = Response::ok(&vm_json(env, m, &m.vms[&key], now, false));
            r.headers.extend(Self::lro_headers(env, m, sub, "Microsoft.Compute", &location, &op, api));
            return Ok(r);
        }
        if !valid_vm_name(name) {
            return Err(ArmError::new(
                400,
                "InvalidResourceName",
                format!(
                    "The resource name '{name}' is invalid. A VM name has 1 to 64 letters, digits, '-', '_' or '.', and does not end in '.' or '-'."
                ),
            ));
        }
        let location = b.get("location").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
            ArmError::new(400, "LocationRequired", "The location property is required for this definition.")
        })?;
        let size = size.ok_or_else(|| {
            ArmError::invalid_parameter(
                "hardwareProfile.vmSize",
                "The value of parameter hardwareProfile.vmSize is invalid.",
            )
        })?;
        if !SIZES.iter().any(|s| s.eq_ignore_ascii_case(&size)) {
            if size.starts_with("Standard_") || size.starts_with("Basic_") {
                return Err(ArmError::new(
                    409,
                    "SkuNotAvailable",
                    format!(
                        "The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: {size}' is currently not available in location '{location}'. Please try another size or deploy to a different location or different zone."
                    ),
                ));
            }
            return Err(ArmError::invalid_parameter(
                "hardwareProfile.vmSize",
                format!("The value {size} provided for the VM size is not valid."),
            ));
        }
        let image = b["properties"]["storageProfile"]["imageReference"].clone();
        let image_text = match (image.get("id").and_then(Value::as_str), image.get("publisher").and_then(Value::as_str))
        {
            (Some(id), _) => {
                let found = m.image(id).map(|i| i.id.clone());
                found.ok_or_else(|| {
                    ArmError::new(
                        404,
                        "GalleryImageNotFound",
                        format!("The gallery image version '{id}' is not found."),
                    )
                })?
            }
            (None, Some(publisher)) => {
                let part = |k: &str| image.get(k).and_then(Value::as_str).unwrap_or("");
                let urn = format!("{publisher}:{}:{}:{}", part("offer"), part("sku"), part("version"));
                let found = m.image(&urn).map(|i| i.id.clone());
                found.ok_or_else(|| ArmError::new(404, "PlatformImageNotFound", format!("The platform image '{urn}' is not available. Verify that all fields in the storage profile are correct.")))?
            }
            _ => {
                return Err(ArmError::invalid_parameter(
                    "storageProfile.imageReference",
                    "The image reference needs an id or publisher, offer, sku and version.",
                ));
            }
        };
        let os_disk = &b["properties"]["storageProfile"]["osDisk"];
        if os_disk.get("createOption").and_then(Value::as_str).is_some_and(|c| !c.eq_ignore_ascii_case("FromImage")) {
            return Err(ArmError::invalid_parameter(
                "storageProfile.osDisk.createOption",
                "Only FromImage is served by this fake.",
            ));
        }
        let disk_delete =
            os_disk.get("deleteOption").and_then(Value::as_str).is_some_and(|d| d.eq_ignore_ascii_case("Delete"));
        let os_profile = b["properties"]["osProfile"].clone();
        if os_profile.get("adminUsername").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ArmError::invalid_parameter(
                "osProfile.adminUsername",
                "Required parameter 'adminUsername' is missing (null).",
            ));
        }
        if let Some(cd) = os_profile.get("customData").and_then(Value::as_str) {
            use base64::Engine;
            if base64::engine::general_purpose::STANDARD.decode(cd).is_err() {
                return Err(ArmError::invalid_parameter(
                    "osProfile.customData",
                    "Custom data in OSProfile must be in Base64 encoding.",
                ));
            }
        }
        let net = &b["properties"]["networkProfile"];
        let configs = net["networkInterfaceConfigurations"].as_array().cloned().unwrap_or_default();
        let Some(nic) = configs.first() else {
            return Err(ArmError::invalid_parameter(
                "networkProfile",
                "The VM needs a network interface: give networkInterfaceConfigurations.",
            ));
        };
        if net.get("networkApiVersion").and_then(Value::as_str).is_none() {
            return Err(ArmError::invalid_parameter(
                "networkProfile.networkApiVersion",
                "networkApiVersion is required when networkInterfaceConfigurations are given.",
            ));
        }
        let nic_name = nic.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        if nic_name.is_empty() {
            return Err(ArmError::invalid_parameter(
                "networkProfile.networkInterfaceConfigurations[0].name",
                "A name is required.",
            ));
        }
        let nic_delete = str_at(nic, &["properties", "deleteOption"]).is_some_and(|d| d.eq_ignore_ascii_case("Delete"));
        let ip_config = &nic["properties"]["ipConfigurations"][0];
        let subnet = str_at(ip_config, &["properties", "subnet", "id"]).unwrap_or("").to_owned();
        if !valid_subnet(&subnet) {
            return Err(ArmError::invalid_parameter(
                "networkProfile.networkInterfaceConfigurations[0].properties.ipConfigurations[0].properties.subnet.id",
                format!("Subnet id '{subnet}' is not a valid subnet resource id."),
            ));
        }
        let nic_key = Key::new(sub, group, &nic_name);
        if m.nics.contains_key(&nic_key) {
            return Err(ArmError::conflict(
                "NicInUse",
                format!("Network interface '{nic_name}' already exists in resource group '{group}'."),
            ));
        }
        let zones: Vec<String> = b
            .get("zones")
            .and_then(Value::as_array)
            .map(|z| z.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let faults = &env.faults;
        let mut took = Duration::from_millis(m.settings.create_ms);
        if let Some(Fault::SlowOperation { extra_ms }) =
            faults.take("VirtualMachines_CreateOrUpdate", name, |f| matches!(f, Fault::SlowOperation { .. }))
        {
            took += Duration::from_millis(extra_ms);
        }
        let failure =
            match faults.take("VirtualMachines_CreateOrUpdate", name, |f| matches!(f, Fault::OperationError { .. })) {
                Some(Fault::OperationError { code, message }) => Some((code, message)),
                _ => None,
            };
        let provisioning =
            Timeline::new(now, [("Creating", took)], if failure.is_some() { "Failed" } else { "Succeeded" });
        let ip = m.ip();
        let vm_guid = m.guid();
        let disk_guid = m.guid();
        let etag = m.etag();
        let disk = os_disk
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}_OsDisk_1_{}", disk_guid.replace('-', "")));
        let ip_config_name = ip_config.get("name").and_then(Value::as_str).unwrap_or("ipconfig1").to_owned();
        m.nics.insert(
            nic_key,
            Nic {
                name: nic_name.clone(),
                group: group.to_owned(),
                location: location.clone(),
                vm: Some(name.to_owned()),
                ip: ip.clone(),
                subnet: subnet.clone(),
                delete_with_vm: nic_delete,
                ip_config: ip_config_name,
            },
        );
        m.disks.insert(
            Key::new(sub, group, &disk),
            Disk {
                name: disk.clone(),
                group: group.to_owned(),
                location: location.clone(),
                vm: Some(name.to_owned()),
                size_gb: 30,
                delete_with_vm: disk_delete,
            },
        );
        let vm = Vm {
            name: name.to_owned(),
            group: group.to_owned(),
            sub: sub.to_owned(),
            location: location.clone(),
            vm_id: vm_guid,
            tags,
            zones,
            size,
            image,
            image_text,
            disk,
            nic: nic_name,
            subnet,
            ip,
            os_profile,
            provisioning,
            failure: failure.clone(),
            deleting: None,
            deallocated: None,
            etag,
            updates: 0,
            created: now,
            extensions: BTreeMap::new(),
        };
        m.vms.insert(key.clone(), vm);
        let op = m.start_op("Microsoft.Compute", &location, took, now, failure, Effect::None, vm_id(sub, group, name));
        let mut r = Response::json(201, &vm_json(env, m, &m.vms[&key], now, false));
        r.headers.extend(Self::lro_headers(env, m, sub, "Microsoft.Compute", &location, &op, api));
        Ok(r)
    }

    /// Pages a list keyed by name: `{"value": [...], "nextLink": "<absolute URL>"}`.
    fn page(&self, size: u64, req: &Request, env: &Env, mut items: Vec<(String, Value)>) -> Result<Response> {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let scope = format!("{}?{}", req.path.to_ascii_lowercase(), req.param("$expand").unwrap_or(""));
        let token = req.param("$skiptoken");
        let page = immut_fake::paging::page(
            items,
            |(k, _)| k.clone(),
            &scope,
            Some(size.max(1)),
            token,
            size.max(1),
            size.max(1),
        )
        .map_err(|_| {
            ArmError::invalid_parameter("$skiptoken", "The skip token is invalid or belongs to another query.")
        })?;
        let mut v = json!({ "value": page.items.into_iter().map(|(_, v)| v).collect::<Vec<_>>() });
        if let Some(t) = page.next_token {
            let mut query: Vec<String> = req
                .query
                .iter()
                .filter(|(k, _)| k != "$skiptoken")
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            query.push(format!("$skiptoken={}", encode(&t)));
            v["nextLink"] = format!("{}{}?{}", env.base_url, req.path, query.join("&")).into();
        }
        Ok(Response::ok(&v))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'$' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl ArmError {
    fn into_response(self) -> Response {
        immut_fake::CloudError::render(&self)
    }
}

/// The operation name (the REST reference's operationId), the api-versions it accepts, and the
/// route, of a method and path.
fn route(method: &str, path: &str) -> Option<(&'static str, &'static [&'static str], Route)> {
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let low: Vec<String> = seg.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = low.iter().map(String::as_str).collect();
    let s = |i: usize| seg[i].to_owned();
    let m = method;
    let found = match l.as_slice() {
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "virtualmachines"]
            if m == "GET" =>
        {
            ("VirtualMachines_List", COMPUTE_VERSIONS, Route::Vm { sub: s(1), group: s(3), name: None, action: None })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "virtualmachines", _] => {
            let op = match m {
                "GET" => "VirtualMachines_Get",
                "PUT" => "VirtualMachines_CreateOrUpdate",
                "PATCH" => "VirtualMachines_Update",
                "DELETE" => "VirtualMachines_Delete",
                _ => return None,
            };
            (op, COMPUTE_VERSIONS, Route::Vm { sub: s(1), group: s(3), name: Some(s(7)), action: None })
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachines",
            _,
            "extensions",
        ] if m == "GET" => {
            let route = Route::Extension { sub: s(1), group: s(3), vm: s(7), name: None };
            ("VirtualMachineExtensions_List", COMPUTE_VERSIONS, route)
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachines",
            _,
            "extensions",
            _,
        ] => {
            let op = match m {
                "GET" => "VirtualMachineExtensions_Get",
                "PUT" => "VirtualMachineExtensions_CreateOrUpdate",
                _ => return None,
            };
            (op, COMPUTE_VERSIONS, Route::Extension { sub: s(1), group: s(3), vm: s(7), name: Some(s(9)) })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "virtualmachines", _, action] => {
            let op = match (m, *action) {
                ("GET", "instanceview") => "VirtualMachines_InstanceView",
                ("POST", "deallocate") => "VirtualMachines_Deallocate",
                _ => return None,
            };
            (
                op,
                COMPUTE_VERSIONS,
                Route::Vm { sub: s(1), group: s(3), name: Some(s(7)), action: Some((*action).to_owned()) },
            )
        }
        ["subscriptions", _, "providers", "microsoft.compute", "virtualmachines"] if m == "GET" => {
            ("VirtualMachines_ListAll", COMPUTE_VERSIONS, Route::VmAll { sub: s(1) })
        }
        [
            "subscriptions",
            _,
            "providers",
            ns @ ("microsoft.compute" | "microsoft.network"),
            "locations",
            _,
            kind @ ("operations" | "operationresults"),
            _,
        ] if m == "GET" => {
            let (namespace, versions, op): (&'static str, &'static [&'static str], &'static str) = match (*ns, *kind) {
                ("microsoft.compute", "operations") => ("Microsoft.Compute", COMPUTE_VERSIONS, "ComputeOperations_Get"),
                ("microsoft.compute", _) => ("Microsoft.Compute", COMPUTE_VERSIONS, "ComputeOperationResults_Get"),
                (_, "operations") => ("Microsoft.Network", NETWORK_VERSIONS, "NetworkOperations_Get"),
                _ => ("Microsoft.Network", NETWORK_VERSIONS, "NetworkOperationResults_Get"),
            };
            (op, versions, Route::Operation { namespace, id: s(7), result: *kind == "operationresults" })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "disks"] if m == "GET" => {
            ("Disks_ListByResourceGroup", DISK_VERSIONS, Route::Disk { sub: s(1), group: s(3), name: None })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", "disks", _] if m == "GET" => {
            ("Disks_Get", DISK_VERSIONS, Route::Disk { sub: s(1), group: s(3), name: Some(s(7)) })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "networkinterfaces"]
            if m == "GET" =>
        {
            ("NetworkInterfaces_List", NETWORK_VERSIONS, Route::Nic { sub: s(1), group: s(3), name: None })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "networkinterfaces", _]
            if m == "GET" =>
        {
            ("NetworkInterfaces_Get", NETWORK_VERSIONS, Route::Nic { sub: s(1), group: s(3), name: Some(s(7)) })
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "galleries",
            _,
            "images",
            _,
            "versions",
            _,
        ] => {
            let op = match m {
                "GET" => "GalleryImageVersions_Get",
                "PUT" => "GalleryImageVersions_CreateOrUpdate",
                "DELETE" => "GalleryImageVersions_Delete",
                _ => return None,
            };
            let path =
                super::gallery::VersionPath { sub: s(1), group: s(3), gallery: s(7), image: s(9), version: s(11) };
            (op, GALLERY_VERSIONS, Route::Gallery(path))
        }
        ["subscriptions", _, "providers", "microsoft.compute", "locations", _, "usages"] if m == "GET" => {
            ("Usage_List", COMPUTE_VERSIONS, Route::Usages { sub: s(1), location: s(5) })
        }
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.compute",
            "locations",
            _,
            "publishers",
            _,
            "artifacttypes",
            "vmimage",
            "offers",
            _,
            "skus",
            _,
            "versions",
        ] if m == "GET" => (
            "VirtualMachineImages_List",
            COMPUTE_VERSIONS,
            Route::Platform { location: s(5), publisher: s(7), offer: s(11), sku: s(13), version: None },
        ),
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.compute",
            "locations",
            _,
            "publishers",
            _,
            "artifacttypes",
            "vmimage",
            "offers",
            _,
            "skus",
            _,
            "versions",
            _,
        ] if m == "GET" => (
            "VirtualMachineImages_Get",
            COMPUTE_VERSIONS,
            Route::Platform { location: s(5), publisher: s(7), offer: s(11), sku: s(13), version: Some(s(15)) },
        ),
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "loadbalancers"] if m == "GET" => {
            ("LoadBalancers_List", NETWORK_VERSIONS, Route::Lb { sub: s(1), group: s(3), name: None })
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "loadbalancers", _] => {
            let op = match m {
                "GET" => "LoadBalancers_Get",
                "PUT" => "LoadBalancers_CreateOrUpdate",
                "DELETE" => "LoadBalancers_Delete",
                _ => return None,
            };
            (op, NETWORK_VERSIONS, Route::Lb { sub: s(1), group: s(3), name: Some(s(7)) })
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.network",
            "loadbalancers",
            _,
            "backendaddresspools",
            _,
        ] if m == "GET" => (
            "LoadBalancerBackendAddressPools_Get",
            NETWORK_VERSIONS,
            Route::Pool { sub: s(1), group: s(3), lb: s(7), pool: s(9) },
        ),
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.network",
            "loadbalancers",
            _,
            "loadbalancingrules",
            _,
            "health",
        ] if m == "POST" => (
            "LoadBalancerLoadBalancingRules_Health",
            NETWORK_VERSIONS,
            Route::RuleHealth { sub: s(1), group: s(3), lb: s(7), rule: s(9) },
        ),
        _ => return None,
    };
    Some(found)
}

impl Api for ArmApi {
    type Route = (&'static [&'static str], Route);
    type Error = ArmError;

    fn route(&self, request: &Request) -> Result<(String, Self::Route)> {
        match route(&request.method, &request.path) {
            Some((op, versions, r)) => Ok((op.to_owned(), (versions, r))),
            None => Err(ArmError::no_route(&request.path)),
        }
    }

    fn handle(&self, (versions, route): Self::Route, request: &Request, env: &Env) -> Result<Response> {
        let token = self.model.lock().expect("model poisoned").settings.token.clone();
        match header(request, "authorization").and_then(|h| h.strip_prefix("Bearer ")) {
            None => return Err(ArmError::unauthenticated("The 'Authorization' header is missing.")),
            Some(t) if t.trim().is_empty() => return Err(ArmError::unauthenticated("The access token is empty.")),
            Some(t) if token.as_deref().is_some_and(|want| want != t) => {
                return Err(ArmError::unauthenticated("The access token is invalid."));
            }
            Some(_) => {}
        }
        match request.param("api-version") {
            None | Some("") => return Err(ArmError::missing_api_version()),
            Some(v) if !versions.contains(&v) => {
                let namespace =
                    request.path.split('/').skip_while(|s| !s.eq_ignore_ascii_case("providers")).nth(1).unwrap_or("");
                return Err(ArmError::unknown_api_version(namespace, v, versions));
            }
            Some(_) => {}
        }
        let class = match request.method.as_str() {
            "GET" | "HEAD" => 0,
            "DELETE" => 2,
            _ => 1,
        };
        let sub = request.path.split('/').nth(2).unwrap_or("").to_owned();
        let left = self.model.lock().expect("model poisoned").take_token(&sub, class, env.clock.now());
        let left = match left {
            Ok(left) => left,
            Err(wait) => return Err(ArmError::throttled(wait)),
        };
        let mut response = self.serve(route, request, env)?;
        let name = ["reads", "writes", "deletes"][class];
        response.headers.push((format!("x-ms-ratelimit-remaining-subscription-{name}"), left.to_string()));
        Ok(response)
    }

    fn fault_error(&self, fault: &Fault) -> ArmError {
        match fault {
            Fault::RateLimited { status } => ArmError { status: *status, ..ArmError::throttled(1) },
            Fault::ServerError { status } => ArmError::server_error(*status),
            _ => ArmError::server_error(500),
        }
    }

    fn reset(&self) {
        self.model.lock().expect("model poisoned").reset();
    }

    fn state(&self, env: &Env) -> Value {
        let now = env.clock.now();
        let mut m = self.model.lock().expect("model poisoned");
        m.tick(now);
        let m: &Model = &m;
        let vms: Vec<Value> = m
            .vms
            .values()
            .map(|vm| {
                json!({
                    "subscription": vm.sub, "group": vm.group, "name": vm.name,
                    "provisioningState": vm.provisioning_state(now), "power": vm.power(now, &m.settings).0,
                    "image": vm.image_text, "size": vm.size, "ip": vm.ip, "tags": vm.tags,
                    "nic": vm.nic, "disk": vm.disk, "updates": vm.updates,
                    "osProfile": {
                        "linuxConfiguration": vm.os_profile.get("linuxConfiguration"),
                        "allowExtensionOperations": vm.os_profile.get("allowExtensionOperations"),
                    },
                    "extensions": vm.extensions.keys().collect::<Vec<_>>(),
                    "healthy": m.healthy(vm, now, &env.faults),
                })
            })
            .collect();
        let nics: Vec<Value> =
            m.nics.values().map(|n| json!({ "group": n.group, "name": n.name, "vm": n.vm, "ip": n.ip })).collect();
        let disks: Vec<Value> =
            m.disks.values().map(|d| json!({ "group": d.group, "name": d.name, "vm": d.vm })).collect();
        let lbs: Vec<Value> = m
            .lbs
            .values()
            .map(|lb| {
                let pools: BTreeMap<String, Vec<String>> = lb
                    .properties
                    .get("backendAddressPools")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let members = p["properties"]["loadBalancerBackendAddresses"]
                                    .as_array()
                                    .map(|a| a.iter().filter_map(|a| a["name"].as_str().map(str::to_owned)).collect())
                                    .unwrap_or_default();
                                (p["name"].as_str().unwrap_or("").to_owned(), members)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let rules: BTreeMap<String, String> = lb
                    .properties
                    .get("loadBalancingRules")
                    .and_then(Value::as_array)
                    .map(|rs| {
                        rs.iter()
                            .map(|r| {
                                let pool = str_at(r, &["properties", "backendAddressPool", "id"])
                                    .and_then(|p| p.rsplit('/').next())
                                    .unwrap_or("")
                                    .to_owned();
                                (r["name"].as_str().unwrap_or("").to_owned(), pool)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!({ "group": lb.group, "name": lb.name, "etag": lb.etag, "pools": pools, "rules": rules })
            })
            .collect();
        json!({ "virtualMachines": vms, "networkInterfaces": nics, "disks": disks, "loadBalancers": lbs, "operations": m.ops.len() })
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

/// The operationId of a request (`VirtualMachines_CreateOrUpdate`, ...), or `unknown`: the name
/// the fake records calls under and the provider counts its calls by.
pub(crate) fn operation_id(method: &str, path: &str) -> &'static str {
    route(method, path).map(|(op, _, _)| op).unwrap_or("unknown")
}

/// Publishes an image (a gallery image version id, or a marketplace `publisher:offer:sku:version`).
pub(crate) fn publish(model: &Mutex<Model>, id: &str, location: &str) {
    model.lock().expect("model poisoned").images.insert(id.to_ascii_lowercase(), Image::new(id, location));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_rest_reference() {
        let vm = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-1";
        assert_eq!(route("PUT", vm).unwrap().0, "VirtualMachines_CreateOrUpdate");
        assert_eq!(route("DELETE", vm).unwrap().0, "VirtualMachines_Delete");
        assert_eq!(route("GET", &format!("{vm}/instanceView")).unwrap().0, "VirtualMachines_InstanceView");
        assert_eq!(route("get", "/x").map(|r| r.0), None);
        let lb = "/subscriptions/s/resourcegroups/rg/providers/microsoft.network/loadBalancers/lb/loadBalancingRules/http/health";
        assert_eq!(route("POST", lb).unwrap().0, "LoadBalancerLoadBalancingRules_Health");
        assert_eq!(
            route("GET", "/subscriptions/s/providers/Microsoft.Compute/locations/westeurope/operations/abc").unwrap().0,
            "ComputeOperations_Get"
        );
        assert!(valid_subnet(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/default"
        ));
        assert!(!valid_subnet("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v"));
        assert_eq!(encode("a b/c$"), "a%20b%2Fc$");
    }
}
