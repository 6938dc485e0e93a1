use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::{Method, Url};
use azure_mgmt_compute::models;
use futures_util::{StreamExt, TryStreamExt};
use immut_core::model::{LabelCharset, Observed, label_keys};
use immut_core::{
    Adopt, Capabilities, Error, ErrorKind, Health, HealthCheck, Instance, InstanceId, InstanceState, LaunchRequest,
    PacingStats, Provenance, Provider, Query, Readiness, Release, Result, Traffic,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::{Clients, Failure, NETWORK_API, RULE_HEALTH_API, map_error, read};

/// Azure tags take any string (names without `<>%&\?/`).
pub(crate) const CHARSET: LabelCharset = LabelCharset::Any;

/// Azure's tag limits: 50 tags per resource, names up to 512 characters, values up to 256.
pub const MAX_TAGS: usize = 50;
/// The longest tag name.
pub const MAX_TAG_KEY: usize = 512;
/// The longest tag value.
pub const MAX_TAG_VALUE: usize = 256;

/// What the provider fills in when a baseline leaves it out.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub vm_size: String,
    pub subnet: Option<String>,
    pub admin_username: String,
    pub ssh_public_key: Option<String>,
    pub zones: Vec<String>,
    pub max_launch_batch: usize,
    pub max_terminate_batch: usize,
    pub concurrency: usize,
}

/// An artifact's image: a Compute Gallery image version, or a marketplace image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageRef {
    /// `/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/galleries/GAL/images/IMG/versions/V`.
    Gallery { id: String, sub: String, group: String, gallery: String, image: String, version: String },
    /// `publisher:offer:sku:version`, with a pinned version.
    Marketplace { publisher: String, offer: String, sku: String, version: String },
}

/// Parses an artifact's image reference. `latest` is refused: an artifact is immutable, so
/// its image version is pinned.
pub(crate) fn parse_image(reference: &str) -> Result<ImageRef> {
    let r = reference.trim();
    let bad = |why: &str| {
        Error::invalid(
            "artifact.image",
            format!(
                "{r:?} {why}; use a gallery image version id (/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/galleries/GAL/images/IMG/versions/1.0.0) or a marketplace URN publisher:offer:sku:version"
            ),
        )
    };
    if r.starts_with('/') {
        let parts: Vec<&str> = r.split('/').collect();
        let low: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        let l: Vec<&str> = low.iter().map(String::as_str).collect();
        return match l.as_slice() {
            [
                "",
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
                v,
            ] if !v.is_empty() && parts.iter().skip(1).all(|p| !p.is_empty()) => {
                if *v == "latest" {
                    return Err(bad("names the latest version, which changes"));
                }
                Ok(ImageRef::Gallery {
                    id: r.to_owned(),
                    sub: parts[2].into(),
                    group: parts[4].into(),
                    gallery: parts[8].into(),
                    image: parts[10].into(),
                    version: parts[12].into(),
                })
            }
            _ => Err(bad("is not a gallery image version id")),
        };
    }
    let parts: Vec<&str> = r.split(':').collect();
    match parts.as_slice() {
        [p, o, s, v] if [p, o, s, v].iter().all(|x| !x.is_empty()) => {
            if v.eq_ignore_ascii_case("latest") {
                return Err(bad("names the latest version, which changes"));
            }
            Ok(ImageRef::Marketplace {
                publisher: (*p).into(),
                offer: (*o).into(),
                sku: (*s).into(),
                version: (*v).into(),
            })
        }
        _ => Err(bad("is not an Azure image")),
    }
}

impl ImageRef {
    fn reference(&self) -> Value {
        match self {
            ImageRef::Gallery { id, .. } => json!({ "id": id }),
            ImageRef::Marketplace { publisher, offer, sku, version } => {
                json!({ "publisher": publisher, "offer": offer, "sku": sku, "version": version })
            }
        }
    }
}

/// The VM name of the `index`-th VM of a launch: the service, 8 hex digits of the hash of the
/// token and the launch's count, and the index. Deterministic, so a retried PUT targets the
/// same name; a shortfall launch after adoption (another count) gets new names.
pub(crate) fn vm_name(service: &str, token: &str, count: usize, index: usize) -> String {
    let hash = Sha256::digest(format!("immut:azure:{token}/{count}").as_bytes());
    format!("{service}-{:02x}{:02x}{:02x}{:02x}-{index:03}", hash[0], hash[1], hash[2], hash[3])
}

fn zone_of(token: &str, zones: &[String]) -> Option<String> {
    if zones.is_empty() {
        return None;
    }
    let hash = Sha256::digest(token.as_bytes());
    let n = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"));
    Some(zones[(n % zones.len() as u64) as usize].clone())
}

/// The lifecycle state of a VM from its provisioning state and power state (from
/// `instanceView`). Deallocated, stopped and failed VMs still exist (with their disk, and
/// possibly quota): they are `Stopped`, so the engine counts them and cleans them up; a
/// deleting VM is `Terminating`.
pub(crate) fn state_of(provisioning: Option<&str>, power: Option<&str>) -> InstanceState {
    match (provisioning.map(str::to_ascii_lowercase).as_deref(), power) {
        (Some("deleting"), _) => InstanceState::Terminating,
        (Some("failed" | "canceled"), _) => InstanceState::Stopped,
        (_, Some("stopping" | "stopped" | "deallocating" | "deallocated")) => InstanceState::Stopped,
        (Some("creating"), _) => InstanceState::Pending,
        (_, Some("running")) => InstanceState::Running,
        (_, Some("starting")) => InstanceState::Pending,
        (Some("succeeded"), None) => InstanceState::Running,
        _ => InstanceState::Pending,
    }
}

/// Virtual machines in one resource group, one PUT per VM, tagged with their provenance.
#[derive(Debug, Clone)]
pub struct AzureProvider {
    pub(crate) clients: Arc<Clients>,
    defaults: Arc<Defaults>,
    /// Images checked once, not per wave.
    images: Arc<Mutex<HashSet<String>>>,
    /// Private IPs by NIC id: a NIC keeps its address for its life.
    addresses: Arc<Mutex<HashMap<String, String>>>,
}

fn tags_of(vm: &models::VirtualMachine) -> BTreeMap<String, String> {
    vm.resource
        .tags
        .as_ref()
        .and_then(Value::as_object)
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

fn observed_image(vm: &models::VirtualMachine) -> Option<String> {
    let image = vm.properties.as_ref()?.storage_profile.as_ref()?.image_reference.as_ref()?;
    if let Some(id) = &image.sub_resource.id {
        return Some(id.clone());
    }
    Some(format!(
        "{}:{}:{}:{}",
        image.publisher.as_deref()?,
        image.offer.as_deref()?,
        image.sku.as_deref()?,
        image.exact_version.as_deref().or(image.version.as_deref())?
    ))
}

fn vm_size(vm: &models::VirtualMachine) -> Option<String> {
    let size = vm.properties.as_ref()?.hardware_profile.as_ref()?.vm_size.as_ref()?;
    serde_json::to_value(size).ok()?.as_str().map(str::to_owned)
}

fn power_of(vm: &models::VirtualMachine) -> Option<String> {
    let view = vm.properties.as_ref()?.instance_view.as_ref()?;
    view.statuses.iter().filter_map(|s| s.code.as_deref()?.strip_prefix("PowerState/")).next().map(str::to_owned)
}

fn nic_of(vm: &models::VirtualMachine) -> Option<String> {
    let net = vm.properties.as_ref()?.network_profile.as_ref()?;
    net.network_interfaces.first()?.sub_resource.id.clone()
}

impl AzureProvider {
    pub(crate) fn new(clients: Arc<Clients>, defaults: Defaults) -> Self {
        AzureProvider { clients, defaults: Arc::new(defaults), images: Arc::default(), addresses: Arc::default() }
    }

    /// A builder.
    pub fn builder() -> crate::AzureBuilder {
        crate::AzureBuilder::new()
    }

    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.clients.subscription
    }

    /// The resource group the VMs live in.
    pub fn resource_group(&self) -> &str {
        &self.clients.group
    }

    /// The location of the VMs.
    pub fn location(&self) -> &str {
        &self.clients.location
    }

    /// Every ARM call made through this provider and its traffic, by operationId.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.clients.pacer.calls()
    }

    /// How often ARM's `x-ms-ratelimit-remaining-*` headers made calls slow down.
    pub fn slowdowns(&self) -> u64 {
        self.clients.pacer.slowdowns()
    }

    /// How many tokens the provider fetched from its credential (cached between calls).
    pub fn tokens_fetched(&self) -> u64 {
        self.clients.tokens_fetched()
    }

    /// The Compute client (azure_mgmt_compute), with this provider's credential, pacing and
    /// counting, for what the provider does not cover. Await none of its long-running
    /// builders: use `.send()` (its own loop re-sends PUTs).
    pub fn compute_client(&self) -> &azure_mgmt_compute::Client {
        &self.clients.compute
    }

    /// The Network client (azure_mgmt_network), likewise.
    pub fn network_client(&self) -> &azure_mgmt_network::Client {
        &self.clients.network
    }

    /// Rolling and canary traffic: one backend pool of a Standard Load Balancer in the
    /// provider's resource group. Attach and detach add and remove the VMs' addresses
    /// (an IP-based pool) by read-modify-write of the load balancer under `If-Match`.
    pub fn backend_pool(&self, load_balancer: impl Into<String>, pool: impl Into<String>) -> Result<AzureTraffic> {
        let (lb, pool) = (load_balancer.into(), pool.into());
        check_name("load_balancer", &lb)?;
        check_name("pool", &pool)?;
        Ok(AzureTraffic { provider: self.clone(), lb, mode: Mode::Single { pool } })
    }

    /// Blue/green traffic: two pools of one load balancer. `rule` (the serving
    /// load-balancing rule) points at the active pool; `test_rule` (on a test port, with the
    /// same probe) points at the idle one, so the idle pool is probed but gets no production
    /// traffic. The switch points the two rules at each other's pool in one update, so a
    /// rollback is one switch back.
    pub fn pool_switch(
        &self,
        load_balancer: impl Into<String>,
        rule: impl Into<String>,
        test_rule: impl Into<String>,
        blue_pool: impl Into<String>,
        green_pool: impl Into<String>,
    ) -> Result<AzureTraffic> {
        let (lb, rule, test_rule, blue, green) =
            (load_balancer.into(), rule.into(), test_rule.into(), blue_pool.into(), green_pool.into());
        for (f, v) in [
            ("load_balancer", &lb),
            ("rule", &rule),
            ("test_rule", &test_rule),
            ("blue_pool", &blue),
            ("green_pool", &green),
        ] {
            check_name(f, v)?;
        }
        if blue.eq_ignore_ascii_case(&green) {
            return Err(Error::invalid("green_pool", "is the blue pool; give two different pools"));
        }
        if rule.eq_ignore_ascii_case(&test_rule) {
            return Err(Error::invalid("test_rule", "is the serving rule; give the rule on the test port"));
        }
        Ok(AzureTraffic { provider: self.clone(), lb, mode: Mode::Switch { rule, test_rule, pools: [blue, green] } })
    }

    /// Checks the artifact's image before its first launch: the gallery image version must
    /// exist and be `Succeeded`, the marketplace version must exist in the location.
    async fn ensure_image(&self, reference: &str) -> Result<ImageRef> {
        let parsed = parse_image(reference)?;
        if self.images.lock().expect("poisoned").contains(reference) {
            return Ok(parsed);
        }
        let c = &self.clients;
        let (got, op) = match &parsed {
            ImageRef::Gallery { sub, group, gallery, image, version, .. } => (
                c.compute
                    .gallery_image_versions_client()
                    .get(sub, group, gallery, image, version)
                    .send()
                    .await
                    .map(|r| r.into_raw_response()),
                "GalleryImageVersions_Get",
            ),
            ImageRef::Marketplace { publisher, offer, sku, version } => (
                c.compute
                    .virtual_machine_images_client()
                    .get(&c.location, publisher, offer, sku, version, &c.subscription)
                    .send()
                    .await
                    .map(|r| r.into_raw_response()),
                "VirtualMachineImages_Get",
            ),
        };
        let answer = match got {
            Ok(r) => read(r, op).await?,
            Err(e) => {
                let e = map_error(Failure::Call(e), op);
                if e.kind() == ErrorKind::NotFound {
                    return Err(Error::invalid(
                        "artifact.image",
                        format!("{reference} does not exist (or this subscription may not use it in {}); check the reference", c.location),
                    )
                    .with_provider("azure")
                    .with_operation(op));
                }
                return Err(e);
            }
        };
        if let Some(state) = answer.body.pointer("/properties/provisioningState").and_then(Value::as_str)
            && state != "Succeeded"
        {
            return Err(Error::invalid(
                "artifact.image",
                format!("{reference} is {state}, not Succeeded: wait for its replication or pick another version"),
            )
            .with_provider("azure"));
        }
        self.images.lock().expect("poisoned").insert(reference.to_owned());
        Ok(parsed)
    }

    fn body(&self, request: &LaunchRequest, image: &ImageRef, name: &str) -> Result<models::VirtualMachine> {
        let spec = &request.release.baseline().spec;
        let size = spec.machine_type.clone().unwrap_or_else(|| self.defaults.vm_size.clone());
        let subnet = spec
            .network
            .clone()
            .or_else(|| spec.params.get("subnet").cloned())
            .or_else(|| self.defaults.subnet.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "baseline.network",
                    "no subnet: give the baseline's network (a subnet id) or the provider's .subnet(..)",
                )
            })?;
        let mut os_profile = json!({
            "computerName": name,
            "adminUsername": spec.params.get("admin_username").cloned().unwrap_or_else(|| self.defaults.admin_username.clone()),
            "linuxConfiguration": { "disablePasswordAuthentication": true },
        });
        if let Some(key) = crate::access::login_key(spec, self.defaults.ssh_public_key.as_ref())? {
            let user = os_profile["adminUsername"].as_str().unwrap_or("azureuser").to_owned();
            os_profile["linuxConfiguration"]["ssh"] =
                json!({ "publicKeys": [{ "path": format!("/home/{user}/.ssh/authorized_keys"), "keyData": key }] });
        }
        if spec.sealed {
            crate::access::seal(&mut os_profile);
        }
        if let Some(data) = &spec.user_data {
            use base64::Engine;
            os_profile["customData"] = base64::engine::general_purpose::STANDARD.encode(data).into();
        }
        let mut vm = json!({
            "location": self.clients.location,
            "tags": request.labels(CHARSET),
            "properties": {
                "hardwareProfile": { "vmSize": size },
                "storageProfile": {
                    "imageReference": image.reference(),
                    "osDisk": {
                        "createOption": "FromImage",
                        "deleteOption": "Delete",
                        "caching": "ReadWrite",
                        "managedDisk": { "storageAccountType": spec.params.get("os_disk_type").cloned().unwrap_or_else(|| "StandardSSD_LRS".into()) },
                    },
                },
                "osProfile": os_profile,
                "networkProfile": {
                    "networkApiVersion": "2020-11-01",
                    "networkInterfaceConfigurations": [{
                        "name": format!("{name}-nic"),
                        "properties": {
                            "primary": true,
                            "deleteOption": "Delete",
                            "ipConfigurations": [{ "name": "ipconfig1", "properties": { "primary": true, "subnet": { "id": subnet } } }],
                        },
                    }],
                },
            },
        });
        if let Some(zone) =
            spec.params.get("zone").cloned().or_else(|| zone_of(request.token.as_str(), &self.defaults.zones))
        {
            vm["zones"] = json!([zone]);
        }
        serde_json::from_value(vm)
            .map_err(|e| Error::invalid("baseline", format!("the VM body does not fit the Compute model: {e}")))
    }

    /// The VM, or `None`.
    async fn get_vm(&self, name: &str) -> Result<Option<models::VirtualMachine>> {
        let c = &self.clients;
        match c.compute.virtual_machines_client().get(&c.group, name, &c.subscription).send().await {
            Ok(r) => Ok(Some(r.into_body().await.map_err(|e| map_error(Failure::Call(e), "VirtualMachines_Get"))?)),
            Err(e) => match map_error(Failure::Call(e), "VirtualMachines_Get") {
                e if e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Creates one VM with `If-None-Match: *` and polls its operation to the end. A name that
    /// exists is adopted when it carries this launch's token, and is an error otherwise: a
    /// PUT never updates a VM in place.
    async fn create(&self, request: &LaunchRequest, image: &ImageRef, name: String) -> Result<String> {
        let c = &self.clients;
        let body = self.body(request, image, &name)?;
        let op = "VirtualMachines_CreateOrUpdate";
        let sent = c
            .compute
            .virtual_machines_client()
            .create_or_update(&c.group, &name, body, &c.subscription)
            .if_none_match("*")
            .send()
            .await;
        match sent {
            Ok(r) => {
                let raw = r.into_raw_response();
                let status = u16::from(raw.status());
                let headers = raw.headers().clone();
                // With its instance view: when only the provisioningState tells the progress,
                // a failure's code (AllocationFailed, ...) is there.
                let resource = c.url(&format!(
                    "{}/Microsoft.Compute/virtualMachines/{name}?api-version={}&$expand=instanceView",
                    c.group_path(),
                    crate::client::COMPUTE_API
                ))?;
                c.wait_response(status, &headers, Some(resource), op)
                    .await
                    .map_err(|e| e.with_ids([InstanceId::new(&name)]))?;
                Ok(name)
            }
            Err(e) => {
                let e = map_error(Failure::Call(e), op);
                if e.kind() != ErrorKind::Conflict || !e.message().contains("412") {
                    return Err(e.with_ids([InstanceId::new(&name)]));
                }
                // The name exists: a retry after a lost answer, or someone else's VM.
                let Some(vm) = self.get_vm(&name).await? else {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("{name} exists (412) but cannot be read; retry"),
                    )
                    .with_provider("azure"));
                };
                let tags = tags_of(&vm);
                match tags.get(label_keys::TOKEN) {
                    Some(t) if t == request.token.as_str() => {
                        tracing::debug!(vm = name, "adopting the VM a lost answer made");
                        Ok(name)
                    }
                    other => Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "a VM named {name} exists and was not launched under token {} (its token: {}); it is never updated in place: delete it or use another service name",
                            request.token,
                            other.map(String::as_str).unwrap_or("none")
                        ),
                    )
                    .with_provider("azure")
                    .with_operation(op)
                    .with_ids([InstanceId::new(&name)])),
                }
            }
        }
    }

    /// Every VM of the resource group with its instance view, every page.
    async fn list_vms(&self) -> Result<Vec<models::VirtualMachine>> {
        let c = &self.clients;
        let mut pages =
            c.compute.virtual_machines_client().list(&c.group, &c.subscription).expand("instanceView").into_stream();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_error(Failure::Call(e), "VirtualMachines_List"))?;
            found.extend(page.value);
        }
        Ok(found)
    }

    /// The compute usages of the provider's location, every page.
    async fn usages(&self) -> Result<Vec<models::Usage>> {
        let c = &self.clients;
        let mut pages = c.compute.usage_client().list(&c.location, &c.subscription).into_stream();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            found.extend(page.map_err(|e| map_error(Failure::Call(e), "Usage_List"))?.value);
        }
        Ok(found)
    }

    /// The private IP of each NIC not seen before.
    async fn observe(&self, vms: &[models::VirtualMachine]) -> Result<()> {
        let unseen: Vec<String> = {
            let known = self.addresses.lock().expect("poisoned");
            vms.iter()
                .filter(|vm| vm.properties.as_ref().and_then(|p| p.provisioning_state.as_deref()) != Some("Deleting"))
                .filter_map(nic_of)
                .filter(|n| !known.contains_key(&n.to_ascii_lowercase()))
                .collect()
        };
        let c = &self.clients;
        let reads = futures_util::stream::iter(unseen.into_iter().map(|nic| async move {
            let name = nic.rsplit('/').next().unwrap_or_default().to_owned();
            let got = c.network.network_interfaces_client().get(&c.group, &name, &c.subscription).send().await;
            let ip = match got {
                Ok(r) => {
                    let a = read(r.into_raw_response(), "NetworkInterfaces_Get").await?;
                    a.body
                        .pointer("/properties/ipConfigurations/0/properties/privateIPAddress")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }
                Err(e) => match map_error(Failure::Call(e), "NetworkInterfaces_Get") {
                    e if e.kind() == ErrorKind::NotFound => None,
                    e => return Err(e),
                },
            };
            Ok::<_, Error>((nic.to_ascii_lowercase(), ip))
        }))
        .buffer_unordered(self.defaults.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
        let mut known = self.addresses.lock().expect("poisoned");
        for (nic, ip) in reads {
            if let Some(ip) = ip {
                known.insert(nic, ip);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let vms = self.list_vms().await?;
        self.observe(&vms).await?;
        let known = self.addresses.lock().expect("poisoned").clone();
        Ok(vms.iter().map(|vm| to_instance(vm, &known)).collect())
    }

    pub(crate) fn defaults_subnet(&self) -> Option<String> {
        self.defaults.subnet.clone()
    }

    /// The VNet of the provider's subnet (for IP-based pool members).
    pub(crate) fn vnet(&self) -> Option<String> {
        self.defaults.subnet.as_ref().and_then(|s| s.to_ascii_lowercase().find("/subnets/").map(|i| s[..i].to_owned()))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let c = &self.clients;
        let op = "VirtualMachines_Delete";
        match c.compute.virtual_machines_client().delete(&c.group, name, &c.subscription).send().await {
            Ok(r) => {
                let raw = r.into_raw_response();
                let status = u16::from(raw.status());
                let headers = raw.headers().clone();
                if status == 204 {
                    return Ok(());
                }
                match c.wait_response(status, &headers, None, op).await {
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
            Err(e) => match map_error(Failure::Call(e), op) {
                e if e.kind() == ErrorKind::NotFound => Ok(()),
                e => Err(e.with_ids([InstanceId::new(name)])),
            },
        }
    }
}

/// The body of a GET, or `None` when ARM says the resource is not there.
async fn answer_or_none(got: azure_core::Result<azure_core::Response>, op: &str) -> Result<Option<Value>> {
    match got {
        Ok(r) => Ok(Some(read(r, op).await?.body)),
        Err(e) => match map_error(Failure::Call(e), op) {
            e if e.kind() == ErrorKind::NotFound => Ok(None),
            e => Err(e),
        },
    }
}

fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{name:?} is not an Azure resource name (1 to 80 of letters, digits, '-', '_', '.')"),
        ))
    }
}

/// An immut instance from what ARM reports.
pub(crate) fn to_instance(vm: &models::VirtualMachine, addresses: &HashMap<String, String>) -> Instance {
    let labels = tags_of(vm);
    let provisioning = vm.properties.as_ref().and_then(|p| p.provisioning_state.clone());
    let power = power_of(vm);
    Instance {
        id: InstanceId::new(vm.resource.name.clone().unwrap_or_default()),
        state: state_of(provisioning.as_deref(), power.as_deref()),
        provenance: Provenance::from_labels(&labels, CHARSET).map(Arc::new),
        labels: Arc::new(labels),
        observed: Arc::new(Observed {
            image: observed_image(vm),
            machine_type: vm_size(vm),
            access: Some(crate::access::access(vm)),
        }),
        address: nic_of(vm).and_then(|n| addresses.get(&n.to_ascii_lowercase()).cloned()),
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        "azure"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_launch_batch: self.defaults.max_launch_batch,
            max_terminate_batch: self.defaults.max_terminate_batch,
            // VM names are derived from the token and created with If-None-Match: *, so the
            // same launch again adopts what the first made.
            honours_token: true,
            label_charset: CHARSET,
            max_label_value_len: MAX_TAG_VALUE,
            max_label_key_len: MAX_TAG_KEY,
            max_labels: MAX_TAGS,
            // A VM is listed as soon as its PUT is accepted, and launch waits for its end.
            consistency_window: Duration::ZERO,
            // Failed, stopped and deallocated VMs keep their disks (and NICs) until deleted.
            lingering_holds_quota: true,
            // ARM meters reads per subscription, and one observation is several reads (VMs, NICs, pool).
            min_poll_interval: std::time::Duration::from_secs(2),
        }
    }

    /// The release's image version asked afresh, past the launch-time cache (a version deleted
    /// since the last launch is exactly what this must see), and the room the location's
    /// usages leave for its VM size. Usages that cannot be read leave the room unknown; they
    /// never block.
    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let reference = &release.artifact().image;
        let c = &self.clients;
        let readiness = match &parse_image(reference)? {
            ImageRef::Gallery { sub, group, gallery, image, version, .. } => {
                let op = "GalleryImageVersions_Get";
                let got =
                    c.compute.gallery_image_versions_client().get(sub, group, gallery, image, version).send().await;
                let version = answer_or_none(got.map(|r| r.into_raw_response()), op).await?;
                crate::readiness::gallery_readiness(reference, version.as_ref(), time::OffsetDateTime::now_utc())
            }
            ImageRef::Marketplace { publisher, offer, sku, version } => {
                let op = "VirtualMachineImages_Get";
                let got = c
                    .compute
                    .virtual_machine_images_client()
                    .get(&c.location, publisher, offer, sku, version, &c.subscription)
                    .send()
                    .await;
                let version = answer_or_none(got.map(|r| r.into_raw_response()), op).await?;
                crate::readiness::marketplace_readiness(reference, version.as_ref())
            }
        };
        if readiness.is_blocked() {
            return Ok(readiness);
        }
        let size = release.baseline().spec.machine_type.clone().unwrap_or_else(|| self.defaults.vm_size.clone());
        match self.usages().await {
            Ok(usages) => Ok(match crate::readiness::room(&usages, &size) {
                Some(room) => readiness.with_room(room),
                None => readiness,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the location's usages could not be read; the room is unknown");
                Ok(readiness)
            }
        }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        for key in request.labels(CHARSET).keys() {
            if key.contains(['<', '>', '%', '&', '\\', '?', '/']) {
                return Err(Error::invalid(
                    &format!("baseline.labels.{key}"),
                    "Azure tag names may not hold < > % & \\ ? /",
                ));
            }
        }
        // A sealed baseline with a login key fails here, before any call (body() repeats it).
        crate::access::login_key(&request.release.baseline().spec, self.defaults.ssh_public_key.as_ref())?;
        let image = self.ensure_image(&request.release.artifact().image).await?;
        let service = request.release.service();
        let names: Vec<String> =
            (0..request.count).map(|i| vm_name(service, request.token.as_str(), request.count, i)).collect();
        // One PUT per VM, concurrently; the pacing bounds the rate.
        let made: Vec<String> =
            futures_util::stream::iter(names.iter().cloned().map(|n| self.create(request, &image, n)))
                .buffer_unordered(self.defaults.concurrency)
                .try_collect()
                .await?;
        let made: BTreeSet<String> = made.into_iter().collect();
        Ok(self.list().await?.into_iter().filter(|i| made.contains(i.id.as_str())).collect())
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        if query.ids.as_ref().is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        // ARM cannot filter VMs by tag: the group is listed (paged) and filtered here.
        Ok(self.list().await?.into_iter().filter(|i| query.matches(i)).collect())
    }

    fn pacing(&self) -> PacingStats {
        self.clients.paced()
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let names: Vec<String> = ids.iter().map(InstanceId::to_string).collect();
        futures_util::stream::iter(names.into_iter().map(|name| async move { self.delete(&name).await }))
            .buffer_unordered(self.defaults.concurrency)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

/// Adoption tags VMs made outside immut with a provenance (release zero), by one
/// `VirtualMachines_Update` (PATCH) of their tags each: tags are the only change made. Their
/// other tags are kept.
#[async_trait]
impl Adopt for AzureProvider {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let c = &self.clients;
        for id in ids {
            let Some(vm) = self.get_vm(id.as_str()).await? else {
                return Err(Error::new(ErrorKind::NotFound, "cannot adopt a VM that does not exist")
                    .with_provider("azure")
                    .with_operation("VirtualMachines_Get")
                    .with_ids([id.clone()]));
            };
            let mut tags = tags_of(&vm);
            tags.extend(provenance.signed_labels(CHARSET, signature));
            let update: models::VirtualMachineUpdate =
                serde_json::from_value(json!({ "tags": tags })).expect("a tags update");
            let op = "VirtualMachines_Update";
            let r = c
                .compute
                .virtual_machines_client()
                .update(&c.group, id.as_str(), update, &c.subscription)
                .send()
                .await
                .map_err(|e| map_error(Failure::Call(e), op))?
                .into_raw_response();
            c.wait_response(u16::from(r.status()), &r.headers().clone(), None, op).await?;
        }
        self.describe(&Query::ids(ids.to_vec()).with_unmanaged()).await
    }
}

/// Which pools carry the traffic.
#[derive(Debug, Clone)]
enum Mode {
    Single { pool: String },
    Switch { rule: String, test_rule: String, pools: [String; 2] },
}

/// A Standard Load Balancer's IP-based backend pools. A `HealthCheck` too: the load balancer's
/// own view of backend health, per rule (`LoadBalancerLoadBalancingRules_Health`).
#[derive(Debug, Clone)]
pub struct AzureTraffic {
    provider: AzureProvider,
    lb: String,
    mode: Mode,
}

/// One read of the load balancer.
struct Lb {
    body: Value,
    etag: String,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Lb {
    fn children(&self, collection: &str) -> Vec<&Value> {
        self.body
            .pointer(&format!("/properties/{collection}"))
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    fn child(&self, collection: &str, name: &str) -> Option<&Value> {
        self.children(collection).into_iter().find(|c| c["name"].as_str().is_some_and(|n| eq(n, name)))
    }

    /// The pool a rule points at.
    fn rule_pool(&self, rule: &str) -> Option<String> {
        let r = self.child("loadBalancingRules", rule)?;
        r.pointer("/properties/backendAddressPool/id")?.as_str()?.rsplit('/').next().map(str::to_owned)
    }

    /// The rules that use a pool.
    fn rules_of(&self, pool: &str) -> Vec<String> {
        self.children("loadBalancingRules")
            .into_iter()
            .filter(|r| {
                r.pointer("/properties/backendAddressPool/id")
                    .and_then(Value::as_str)
                    .and_then(|p| p.rsplit('/').next())
                    .is_some_and(|p| eq(p, pool))
            })
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// `(name, ip)` of a pool's members.
    fn members(&self, pool: &str) -> Vec<(String, String)> {
        self.child("backendAddressPools", pool)
            .and_then(|p| p.pointer("/properties/loadBalancerBackendAddresses"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some((m["name"].as_str()?.to_owned(), m.pointer("/properties/ipAddress")?.as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn drain(&self, pool: &str) -> Duration {
        let secs = self
            .child("backendAddressPools", pool)
            .and_then(|p| p.pointer("/properties/drainPeriodInSeconds"))
            .and_then(Value::as_u64);
        Duration::from_secs(secs.unwrap_or(0))
    }

    fn vnet(&self) -> Option<String> {
        let subnet = self
            .children("frontendIPConfigurations")
            .into_iter()
            .find_map(|f| f.pointer("/properties/subnet/id")?.as_str().map(str::to_owned))?;
        subnet.to_ascii_lowercase().find("/subnets/").map(|i| subnet[..i].to_owned())
    }

    fn pool_mut(&mut self, pool: &str) -> Option<&mut Value> {
        self.body
            .pointer_mut("/properties/backendAddressPools")?
            .as_array_mut()?
            .iter_mut()
            .find(|p| p["name"].as_str().is_some_and(|n| eq(n, pool)))
    }

    /// Sets a pool's members, keeping the entries of those that stay as they were.
    fn set_members(&mut self, pool: &str, members: &[(String, String)], vnet: Option<&str>) -> bool {
        let Some(p) = self.pool_mut(pool) else { return false };
        if !p["properties"].is_object() {
            p["properties"] = json!({});
        }
        let current: Vec<Value> =
            p["properties"]["loadBalancerBackendAddresses"].as_array().cloned().unwrap_or_default();
        let next: Vec<Value> = members
            .iter()
            .map(|(name, ip)| {
                current.iter().find(|c| c["name"].as_str() == Some(name.as_str())).cloned().unwrap_or_else(|| {
                    let mut props = json!({ "ipAddress": ip });
                    if let Some(v) = vnet {
                        props["virtualNetwork"] = json!({ "id": v });
                    }
                    json!({ "name": name, "properties": props })
                })
            })
            .collect();
        p["properties"]["loadBalancerBackendAddresses"] = Value::Array(next);
        true
    }

    fn point(&mut self, rule: &str, pool_id: &str) {
        if let Some(rules) = self.body.pointer_mut("/properties/loadBalancingRules").and_then(Value::as_array_mut)
            && let Some(r) = rules.iter_mut().find(|r| r["name"].as_str().is_some_and(|n| eq(n, rule)))
        {
            r["properties"]["backendAddressPool"] = json!({ "id": pool_id });
        }
    }

    fn pool_id(&self, pool: &str) -> String {
        self.child("backendAddressPools", pool).and_then(|p| p["id"].as_str()).unwrap_or_default().to_owned()
    }
}

impl AzureTraffic {
    fn clients(&self) -> &Clients {
        &self.provider.clients
    }

    /// The load balancer.
    pub fn load_balancer(&self) -> &str {
        &self.lb
    }

    /// The pool the serving rule points at now (blue/green), or the one pool.
    pub async fn active_pool(&self) -> Result<Option<String>> {
        let lb = self.read().await?;
        Ok(self.active(&lb))
    }

    fn active(&self, lb: &Lb) -> Option<String> {
        match &self.mode {
            Mode::Single { pool } => Some(pool.clone()),
            Mode::Switch { rule, .. } => lb.rule_pool(rule),
        }
    }

    fn idle(&self, lb: &Lb) -> Option<String> {
        match &self.mode {
            Mode::Single { .. } => None,
            Mode::Switch { pools, .. } => {
                let active = self.active(lb);
                pools.iter().find(|p| active.as_deref().is_none_or(|a| !eq(a, p))).cloned()
            }
        }
    }

    fn pools(&self) -> Vec<String> {
        match &self.mode {
            Mode::Single { pool } => vec![pool.clone()],
            Mode::Switch { pools, .. } => pools.to_vec(),
        }
    }

    /// Whether a pool gets production traffic: a rule other than the test rule uses it.
    fn serves(&self, lb: &Lb, pool: &str) -> bool {
        match &self.mode {
            Mode::Single { .. } => !lb.rules_of(pool).is_empty(),
            Mode::Switch { rule, .. } => lb.rule_pool(rule).is_some_and(|p| eq(&p, pool)),
        }
    }

    fn lb_url(&self) -> Result<Url> {
        let c = self.clients();
        c.url(&format!("{}/Microsoft.Network/loadBalancers/{}?api-version={NETWORK_API}", c.group_path(), self.lb))
    }

    async fn read(&self) -> Result<Lb> {
        let c = self.clients();
        let op = "LoadBalancers_Get";
        let r = c
            .network
            .load_balancers_client()
            .get(&c.group, &self.lb, &c.subscription)
            .send()
            .await
            .map_err(|e| map_error(Failure::Call(e), op))?;
        let a = read(r.into_raw_response(), op).await?;
        // The SDK's model reads the shape; the JSON itself is kept for the write, so that no
        // field the model does not know is lost.
        serde_json::from_value::<azure_mgmt_network::models::LoadBalancer>(a.body.clone()).map_err(|e| {
            Error::new(ErrorKind::Other, format!("the load balancer does not read as the Network model: {e}"))
                .with_provider("azure")
                .with_operation(op)
        })?;
        let etag = a.body["etag"].as_str().unwrap_or_default().to_owned();
        Ok(Lb { body: a.body, etag })
    }

    /// Read, change, write under `If-Match`, polled to its end. A 412 (someone changed the
    /// load balancer in between) reads it again and applies the same change to what is there
    /// now, so a concurrent change is never lost. `change` returns whether anything changed.
    async fn modify(&self, change: impl Fn(&mut Lb) -> Result<bool>) -> Result<Lb> {
        let c = self.clients();
        let op = "LoadBalancers_CreateOrUpdate";
        let mut attempts = 0;
        loop {
            let mut lb = self.read().await?;
            if !change(&mut lb)? {
                return Ok(lb);
            }
            let mut body = lb.body.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("etag");
            }
            match c.raw(Method::Put, self.lb_url()?, Some(&body), &[("if-match", lb.etag.clone())], op).await {
                Ok(a) => {
                    c.wait_response(a.status, &a.headers, Some(self.lb_url()?), op).await?;
                    return Ok(lb);
                }
                Err(e) if e.kind() == ErrorKind::Conflict && e.message().contains("412") && attempts < 20 => {
                    attempts += 1;
                    tracing::debug!(lb = self.lb, "the load balancer changed since it was read: reading it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fails with NotFound naming the VMs ARM does not know; returns `(name, ip)` of each.
    async fn existing(&self, instances: &[Instance]) -> Result<Vec<(String, String)>> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let known: HashMap<InstanceId, Instance> = self
            .provider
            .describe(&Query::ids(ids.clone()).with_unmanaged())
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let unknown: Vec<InstanceId> = ids.iter().filter(|id| !known.contains_key(*id)).cloned().collect();
        if !unknown.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "cannot add VMs that do not exist to a backend pool")
                .with_provider("azure")
                .with_operation("LoadBalancers_CreateOrUpdate")
                .with_ids(unknown));
        }
        ids.iter()
            .map(|id| {
                let ip = known[id].address.clone().ok_or_else(|| {
                    Error::new(ErrorKind::Unavailable, "the VM has no private IP yet")
                        .with_provider("azure")
                        .with_ids([id.clone()])
                })?;
                Ok((id.to_string(), ip))
            })
            .collect()
    }

    /// Adds `add` to `pool` (and, with `exact`, removes every other member).
    async fn add(&self, pool: &str, add: &[(String, String)], exact: bool) -> Result<()> {
        let vnet = self.provider.vnet();
        self.modify(|lb| {
            let current = lb.members(pool);
            let mut next: Vec<(String, String)> = if exact { Vec::new() } else { current.clone() };
            for m in add {
                if !next.iter().any(|(n, _)| *n == m.0) {
                    next.push(m.clone());
                }
            }
            if next == current {
                return Ok(false);
            }
            let vnet = lb.vnet().or_else(|| vnet.clone());
            if !lb.set_members(pool, &next, vnet.as_deref()) {
                return Err(Error::invalid(
                    "pool",
                    format!("the load balancer {} has no backend pool {pool}", self.lb),
                ));
            }
            Ok(true)
        })
        .await
        .map(|_| ())
    }

    /// `ip -> state` (`Up`, `Down`) of a rule's backends, as the load balancer probes them.
    async fn rule_health(&self, rule: &str) -> Result<HashMap<String, String>> {
        let c = self.clients();
        let op = "LoadBalancerLoadBalancingRules_Health";
        let url = c.url(&format!(
            "{}/Microsoft.Network/loadBalancers/{}/loadBalancingRules/{rule}/health?api-version={RULE_HEALTH_API}",
            c.group_path(),
            self.lb
        ))?;
        let a = c.raw(Method::Post, url, None, &[], op).await?;
        // 202: computed asynchronously; its Location answers the result once it is ready.
        let health = if a.status == 202 {
            if a.headers.get_optional_str(&azure_core::headers::HeaderName::from_static("location")).is_none() {
                return Err(
                    Error::new(ErrorKind::Unavailable, "the rule health answer has no Location").with_provider("azure")
                );
            }
            c.outcome(&a.headers, op).await?
        } else {
            a.body
        };
        Ok(health["loadBalancerBackendAddresses"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| Some((e["ipAddress"].as_str()?.to_owned(), e["state"].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl Traffic for AzureTraffic {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let lb = self.read().await?;
        let mut ids: Vec<InstanceId> = self
            .pools()
            .iter()
            .filter(|p| self.serves(&lb, p))
            .flat_map(|p| lb.members(p))
            .map(|(name, _)| InstanceId::new(name))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let members = self.existing(instances).await?;
        let lb = self.read().await?;
        let pool = self.active(&lb).unwrap_or_else(|| self.pools()[0].clone());
        self.add(&pool, &members, false).await
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let gone: HashSet<&str> = ids.iter().map(InstanceId::as_str).collect();
        let pools = self.pools();
        let mut drained = Duration::ZERO;
        let lb = self
            .modify(|lb| {
                let mut changed = false;
                for pool in &pools {
                    let current = lb.members(pool);
                    let next: Vec<(String, String)> =
                        current.iter().filter(|(n, _)| !gone.contains(n.as_str())).cloned().collect();
                    if next.len() != current.len() {
                        lb.set_members(pool, &next, None);
                        changed = true;
                    }
                }
                Ok(changed)
            })
            .await?;
        for pool in &pools {
            if self.serves(&lb, pool) && lb.members(pool).iter().any(|(n, _)| gone.contains(n.as_str())) {
                drained = drained.max(lb.drain(pool));
            }
        }
        // The pool's drain period: in-flight connections of the removed members end first.
        tokio::time::sleep(drained).await;
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let Mode::Switch { rule, test_rule, .. } = &self.mode else {
            self.attach(attach).await?;
            return self.detach(detach).await;
        };
        if detach.is_empty() {
            return self.attach(attach).await;
        }
        let members = self.existing(attach).await?;
        let before = self.read().await?;
        let active = self.active(&before).unwrap_or_else(|| self.pools()[0].clone());
        let names: HashSet<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        let gone: HashSet<&str> = detach.iter().map(InstanceId::as_str).collect();
        let serving = before.members(&active);
        if names.iter().all(|n| serving.iter().any(|(m, _)| m == n))
            && serving.iter().all(|(m, _)| !gone.contains(m.as_str()))
        {
            // Already switched (a retried switch).
            return Ok(());
        }
        let vnet = self.provider.vnet();
        let lb = self
            .modify(|lb| {
                let active = self.active(lb).unwrap_or_else(|| self.pools()[0].clone());
                let idle = self.idle(lb).ok_or_else(|| Error::invalid("green_pool", "no idle pool"))?;
                let vnet = lb.vnet().or_else(|| vnet.clone());
                // The idle pool holds exactly the new VMs: nothing older may get traffic.
                if !lb.set_members(&idle, &members, vnet.as_deref()) {
                    return Err(Error::invalid(
                        "pool",
                        format!("the load balancer {} has no backend pool {idle}", self.lb),
                    ));
                }
                let (idle_id, active_id) = (lb.pool_id(&idle), lb.pool_id(&active));
                lb.point(rule, &idle_id);
                lb.point(test_rule, &active_id);
                Ok(true)
            })
            .await?;
        // The old pool keeps its members (probed by the test rule) for a fast switch back, but
        // gets no new connections; its in-flight ones drain before we return.
        tokio::time::sleep(lb.drain(&active)).await;
        Ok(())
    }
}

/// Health from the load balancer's own probes (`LoadBalancerLoadBalancingRules_Health`) of
/// the rules that use this traffic's pools. Blue/green: a new VM in neither pool is staged
/// into the idle pool (probed through the test rule, given no production traffic) and is
/// unknown until the load balancer has judged it. Rolling and canary: a VM not in the pool yet
/// passes, so this check composes with checks that gate the attach (VM status, the HTTP
/// probe). A failed read is an error for the engine to retry, never a verdict.
#[async_trait]
impl HealthCheck for AzureTraffic {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let lb = self.read().await?;
        let mut rules: Vec<String> = self.pools().iter().flat_map(|p| lb.rules_of(p)).collect();
        rules.sort();
        rules.dedup();
        let reads = rules.iter().map(|r| self.rule_health(r));
        let mut states: HashMap<String, String> = HashMap::new();
        for per_rule in futures_util::future::try_join_all(reads).await? {
            for (ip, state) in per_rule {
                // Up through any rule is up: the probe is the same.
                let e = states.entry(ip).or_insert_with(|| state.clone());
                if state == "Up" {
                    *e = state;
                }
            }
        }
        let members: HashSet<String> = self.pools().iter().flat_map(|p| lb.members(p)).map(|(n, _)| n).collect();
        let idle = self.idle(&lb);
        let mut stage: Vec<(String, String)> = Vec::new();
        let verdicts = instances
            .iter()
            .map(|i| {
                let ip = i.address.as_deref();
                match ip.and_then(|ip| states.get(ip)).map(String::as_str) {
                    Some("Up") => Health::Healthy,
                    Some(state) if members.contains(i.id.as_str()) => {
                        Health::Unhealthy(format!("the load balancer's health probe says {state}"))
                    }
                    _ if members.contains(i.id.as_str()) => Health::Unknown,
                    _ => match (&idle, ip) {
                        (Some(_), Some(ip)) if i.provenance.is_some() && i.state == InstanceState::Running => {
                            stage.push((i.id.to_string(), ip.to_owned()));
                            Health::Unknown
                        }
                        (Some(_), _) => Health::Unknown,
                        (None, _) => Health::Healthy,
                    },
                }
            })
            .collect();
        if let (Some(pool), false) = (idle, stage.is_empty()) {
            self.add(&pool, &stage, false).await?;
        }
        Ok(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse_and_latest_is_refused() {
        let id = "/subscriptions/s/resourceGroups/images/providers/Microsoft.Compute/galleries/gal/images/web/versions/1.2.3";
        assert!(
            matches!(parse_image(id).unwrap(), ImageRef::Gallery { version, gallery, .. } if version == "1.2.3" && gallery == "gal")
        );
        assert_eq!(
            parse_image("Canonical:ubuntu-24_04-lts:server:24.04.202409120").unwrap(),
            ImageRef::Marketplace {
                publisher: "Canonical".into(),
                offer: "ubuntu-24_04-lts".into(),
                sku: "server".into(),
                version: "24.04.202409120".into()
            }
        );
        for bad in
            ["Canonical:ubuntu:server:latest", &id.replace("1.2.3", "latest"), "ami-123", "a:b:c", "/subscriptions/s/x"]
        {
            let e = parse_image(bad).unwrap_err();
            assert!(e.message().starts_with("artifact.image:"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_deterministic_and_fit_azure() {
        let token = "d0123456789ab-w4294967295-4294967295";
        let name = vm_name(&"s".repeat(40), token, 10, 999);
        assert_eq!(name, vm_name(&"s".repeat(40), token, 10, 999));
        assert!(name.len() <= 64 && crate::fake::valid_vm_name(&name), "{name}");
        assert_ne!(vm_name("web", token, 10, 0), vm_name("web", token, 4, 0), "a shortfall launch gets new names");
        assert_eq!(zone_of("t", &[]), None);
        let zones = vec!["1".to_owned(), "2".to_owned(), "3".to_owned()];
        let spread: BTreeSet<String> = (0..30).filter_map(|w| zone_of(&format!("d-w{w}"), &zones)).collect();
        assert_eq!(spread.len(), 3);
    }

    #[test]
    fn provisioning_and_power_states_map_to_the_lifecycle() {
        for (p, power, want) in [
            (Some("Creating"), Some("starting"), InstanceState::Pending),
            (Some("Succeeded"), Some("starting"), InstanceState::Pending),
            (Some("Succeeded"), Some("running"), InstanceState::Running),
            (Some("Succeeded"), None, InstanceState::Running),
            (Some("Succeeded"), Some("deallocated"), InstanceState::Stopped),
            (Some("Succeeded"), Some("deallocating"), InstanceState::Stopped),
            (Some("Succeeded"), Some("stopped"), InstanceState::Stopped),
            (Some("Failed"), None, InstanceState::Stopped),
            (Some("Canceled"), Some("running"), InstanceState::Stopped),
            (Some("Deleting"), Some("running"), InstanceState::Terminating),
            (Some("Updating"), Some("running"), InstanceState::Running),
        ] {
            assert_eq!(state_of(p, power), want, "{p:?} {power:?}");
        }
    }
}
