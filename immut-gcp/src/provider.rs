use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use google_cloud_compute_v1::model;
use immut_core::model::{LabelCharset, Observed, label_keys};
use immut_core::{
    Adopt, Capabilities, Error, ErrorKind, Health, HealthCheck, Instance, InstanceId, InstanceState, LaunchRequest,
    PacingStats, Provenance, Provider, Query, Readiness, Release, Result, Traffic,
};
use sha2::{Digest, Sha256};

use crate::client::{Clients, relative};

/// GCE's label rules.
pub(crate) const CHARSET: LabelCharset = LabelCharset::LowerAlnumDashUnderscore;

/// How many deletes (and disk reads) run at once; the pacing buckets still bound the rate.
const CONCURRENCY: usize = 16;

/// Metadata keys immut writes beside the startup script.
pub mod metadata_keys {
    /// The full provenance and its signature, as JSON: labels hold the same, encoded for GCE.
    pub const PROVENANCE: &str = "immut-provenance";
    /// The artifact's image reference as the release gives it (a name, a path or a family).
    pub const IMAGE: &str = "immut-image";
    /// The image it resolved to at launch (`projects/P/global/images/NAME`).
    pub const IMAGE_RESOLVED: &str = "immut-image-resolved";
    /// The baseline's user data, run at boot.
    pub const STARTUP_SCRIPT: &str = "startup-script";
}

/// What the provider fills in when a baseline leaves it out.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub machine_type: String,
    pub network: String,
    pub subnetwork: Option<String>,
    pub service_account: Option<String>,
    pub zone_fallback: bool,
    pub max_terminate_batch: usize,
}

/// Compute Engine instances, launched a wave per `instances.bulkInsert`, labelled with their
/// provenance, in the configured zones.
#[derive(Debug, Clone)]
pub struct GcpProvider {
    pub(crate) clients: Arc<Clients>,
    pub(crate) zones: Arc<Vec<String>>,
    defaults: Arc<Defaults>,
    /// Artifact image references checked (and resolved) once, not per wave.
    images: Arc<Mutex<HashMap<String, String>>>,
    /// The image each boot disk was made from: immutable, so read once per disk.
    disk_images: Arc<Mutex<HashMap<String, Option<String>>>>,
}

/// An image reference: a name or a family, in a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageRef {
    Name { project: String, name: String },
    Family { project: String, family: String },
}

/// Parses `projects/P/global/images/NAME`, `projects/P/global/images/family/FAMILY` (or a full
/// URL of either), `global/images/...`, `family/FAMILY` or a bare `NAME` (this project).
pub(crate) fn parse_image(own_project: &str, reference: &str) -> Result<ImageRef> {
    let r = relative(reference.trim());
    let parts: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
    let own = || own_project.to_owned();
    let parsed = match parts.as_slice() {
        ["projects", p, "global", "images", "family", f] => {
            ImageRef::Family { project: (*p).into(), family: (*f).into() }
        }
        ["projects", p, "global", "images", n] => ImageRef::Name { project: (*p).into(), name: (*n).into() },
        ["global", "images", "family", f] | ["family", f] => ImageRef::Family { project: own(), family: (*f).into() },
        ["global", "images", n] | [n] => ImageRef::Name { project: own(), name: (*n).into() },
        _ => {
            return Err(Error::invalid(
                "artifact.image",
                format!(
                    "{reference:?} is not a GCE image; use projects/P/global/images/NAME or projects/P/global/images/family/FAMILY"
                ),
            ));
        }
    };
    Ok(parsed)
}

/// The bulkInsert name pattern of a token: the service, 8 hex digits of the token's hash, and
/// 4 digits GCE fills in. Deterministic, so a retry names the same series.
pub(crate) fn name_pattern(service: &str, token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    format!("{service}-{:02x}{:02x}{:02x}{:02x}-####", hash[0], hash[1], hash[2], hash[3])
}

/// The requestId of a launch: a UUID (v5) derived from the token, the count and the zone, so a
/// retried call is deduplicated by GCE, and a shortfall launch after adoption (another count)
/// or a launch in another zone is a new request.
pub(crate) fn request_id(token: &str, count: usize, zone: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("immut:gce:{token}/{count}/{zone}").as_bytes()).to_string()
}

/// Which zone a wave goes to: spread by the token's hash, the same on every retry.
fn zone_index(token: &str, zones: usize) -> usize {
    let hash = Sha256::digest(token.as_bytes());
    (u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) % zones.max(1) as u64) as usize
}

/// The lifecycle state of a GCE status. Stopped, suspended and stopping instances still exist
/// (and hold disks, addresses and quota): they are reported, so the engine counts them and
/// cleans them up; only a deleted instance is gone. GCE's `TERMINATED` is a stopped instance,
/// not a deleted one.
pub(crate) fn state_of(status: &str) -> InstanceState {
    match status {
        "PROVISIONING" | "STAGING" | "PENDING" | "REPAIRING" => InstanceState::Pending,
        "RUNNING" => InstanceState::Running,
        "STOPPED" | "TERMINATED" | "SUSPENDING" | "SUSPENDED" => InstanceState::Stopped,
        // STOPPING (a stop or a delete in progress), PENDING_STOP, DEPROVISIONING.
        _ => InstanceState::Terminating,
    }
}

/// `zone/name`, the id immut uses: unique across zones and enough to address the instance.
fn id_of(zone: &str, name: &str) -> InstanceId {
    InstanceId::new(format!("{zone}/{name}"))
}

/// `(zone, name)` of an id; a bare name has no zone.
fn split_id(id: &InstanceId) -> (Option<&str>, &str) {
    match id.as_str().split_once('/') {
        Some((zone, name)) => (Some(zone), name),
        None => (None, id.as_str()),
    }
}

fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn filter_value(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

impl GcpProvider {
    pub(crate) fn new(clients: Arc<Clients>, zones: Vec<String>, defaults: Defaults) -> Self {
        GcpProvider {
            clients,
            zones: Arc::new(zones),
            defaults: Arc::new(defaults),
            images: Arc::default(),
            disk_images: Arc::default(),
        }
    }

    /// A builder.
    pub fn builder() -> crate::GcpBuilder {
        crate::GcpBuilder::new()
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.clients.project
    }

    /// The zones waves are spread over.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Every Compute call made through this provider and its traffic, by API method.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.clients.calls()
    }

    /// The official Instances client, for what the provider does not cover.
    pub fn instances_client(&self) -> &google_cloud_compute_v1::client::Instances {
        &self.clients.instances
    }

    /// Traffic through one unmanaged instance group (the same name in every zone) behind a
    /// backend service: rolling and canary. Attach adds a wave with one addInstances per zone,
    /// detach removes it with one removeInstances per zone and waits out the backend service's
    /// connection draining.
    pub fn backend_group(&self, backend_service: impl Into<String>, group: impl Into<String>) -> Result<GcpTraffic> {
        let (backend_service, group) = (backend_service.into(), group.into());
        check_name("backend_service", &backend_service)?;
        check_name("group", &group)?;
        Ok(GcpTraffic::new(self, backend_service, Mode::Single { group }))
    }

    /// Blue/green traffic: two unmanaged groups per zone behind one backend service, the
    /// serving colour at `capacityScaler` 1 and the idle one at 0 (probed by the health check,
    /// given no traffic). New instances are staged into the idle group, so the balancer's own
    /// health check proves them before the switch; the switch is one backendServices.patch that
    /// swaps the scalers, so a rollback is one switch back.
    pub fn backend_switch(
        &self,
        backend_service: impl Into<String>,
        blue_group: impl Into<String>,
        green_group: impl Into<String>,
    ) -> Result<GcpTraffic> {
        let (backend_service, blue, green) = (backend_service.into(), blue_group.into(), green_group.into());
        check_name("backend_service", &backend_service)?;
        check_name("blue_group", &blue)?;
        check_name("green_group", &green)?;
        if blue == green {
            return Err(Error::invalid("green_group", "is the blue group; give two different groups"));
        }
        Ok(GcpTraffic::new(self, backend_service, Mode::Switch { groups: [blue, green] }))
    }

    /// Resolves and checks the artifact's image before its first launch: it must exist and not
    /// be `OBSOLETE` or `DELETED`. A family resolves to its newest image once, so every wave of
    /// a deployment runs the same image.
    async fn ensure_image(&self, reference: &str) -> Result<String> {
        if let Some(resolved) = self.images.lock().expect("poisoned").get(reference) {
            return Ok(resolved.clone());
        }
        let parsed = parse_image(self.project(), reference)?;
        let (project, name, family) = match &parsed {
            ImageRef::Name { project, name } => (project, Some(name.as_str()), None),
            ImageRef::Family { project, family } => (project, None, Some(family.as_str())),
        };
        let image = self.clients.image(project, name, family).await?.ok_or_else(|| {
            Error::invalid(
                "artifact.image",
                format!("{reference} does not exist (or this project may not use it); check the name and the project"),
            )
            .with_provider("gcp")
            .with_operation(if family.is_some() { "images.getFromFamily" } else { "images.get" })
        })?;
        let state = image.deprecated.as_ref().and_then(|d| d.state.as_ref()).and_then(|s| s.name().map(str::to_owned));
        if matches!(state.as_deref(), Some("OBSOLETE" | "DELETED")) {
            return Err(Error::invalid(
                "artifact.image",
                format!(
                    "{reference} is {}: GCE refuses to make disks from it; build or pick another image",
                    state.unwrap_or_default()
                ),
            )
            .with_provider("gcp"));
        }
        if state.as_deref() == Some("DEPRECATED") {
            tracing::warn!(image = reference, "the artifact's image is deprecated");
        }
        let resolved = format!("projects/{project}/global/images/{}", image.name.unwrap_or_default());
        self.images.lock().expect("poisoned").insert(reference.to_owned(), resolved.clone());
        Ok(resolved)
    }

    fn body(&self, request: &LaunchRequest, image: &str, pattern: &str) -> model::BulkInsertInstanceResource {
        let release = &request.release;
        let spec = &release.baseline().spec;
        let machine_type = spec.machine_type.clone().unwrap_or_else(|| self.defaults.machine_type.clone());
        let (mut network, mut subnetwork) = (self.defaults.network.clone(), self.defaults.subnetwork.clone());
        match spec.network.as_deref().or(spec.params.get("subnetwork").map(String::as_str)) {
            Some(n) if n.contains("/subnetworks/") => subnetwork = Some(n.to_owned()),
            Some(n) => network = n.to_owned(),
            None => {}
        }
        let provenance = serde_json::json!({ "provenance": request.provenance, "signature": request.signature });
        let mut items = vec![
            (metadata_keys::PROVENANCE, provenance.to_string()),
            (metadata_keys::IMAGE, release.artifact().image.clone()),
            (metadata_keys::IMAGE_RESOLVED, image.to_owned()),
        ];
        if let Some(script) = &spec.user_data {
            items.push((metadata_keys::STARTUP_SCRIPT, script.clone()));
        }
        items.extend(crate::access::launch_items(spec));
        let metadata = model::Metadata::new()
            .set_items(items.into_iter().map(|(k, v)| model::metadata::Items::new().set_key(k).set_value(v)));
        let mut init = model::AttachedDiskInitializeParams::new().set_source_image(image);
        if let Some(size) = spec.params.get("disk_size_gb").and_then(|s| s.parse::<i64>().ok()) {
            init = init.set_disk_size_gb(size);
        }
        let disk = model::AttachedDisk::new().set_boot(true).set_auto_delete(true).set_initialize_params(init);
        let mut nic = model::NetworkInterface::new().set_network(network);
        if let Some(s) = subnetwork {
            nic = nic.set_subnetwork(s);
        }
        if spec.params.get("external_ip").is_some_and(|v| v == "true") {
            nic = nic.set_access_configs([model::AccessConfig::new().set_name("External NAT")]);
        }
        let mut props = model::InstanceProperties::new()
            .set_machine_type(machine_type)
            .set_labels(request.labels(CHARSET))
            .set_metadata(metadata)
            .set_disks([disk])
            .set_network_interfaces([nic]);
        let account = spec.params.get("service_account").cloned().or_else(|| self.defaults.service_account.clone());
        if let Some(email) = account {
            let scopes = spec
                .params
                .get("scopes")
                .map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_else(|| vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()]);
            props = props.set_service_accounts([model::ServiceAccount::new().set_email(email).set_scopes(scopes)]);
        }
        if let Some(tags) = spec.params.get("tags") {
            props =
                props.set_tags(model::Tags::new().set_items(tags.split(',').map(str::trim).filter(|t| !t.is_empty())));
        }
        model::BulkInsertInstanceResource::new()
            .set_count(request.count as i64)
            .set_min_count(request.count as i64)
            .set_name_pattern(pattern)
            .set_instance_properties(props)
    }

    /// The `label = value` filter of a query's provenance fields.
    fn label_filter(query: &Query) -> Vec<String> {
        if query.include_unmanaged {
            return Vec::new();
        }
        [
            (label_keys::SERVICE, query.service.clone()),
            (label_keys::DEPLOYMENT, query.deployment.as_ref().map(|d| d.to_string())),
            (label_keys::TOKEN, query.token.as_ref().map(|t| t.to_string())),
            (label_keys::RELEASE, query.release.as_ref().map(|r| r.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some(format!("(labels.{k} = {})", filter_value(&CHARSET.encode(&v?)))))
        .collect()
    }

    /// Lists the instances of a query in the zones it can be in, then observes their boot
    /// disks' images.
    async fn list(&self, query: &Query) -> Result<Vec<Instance>> {
        let mut by_zone: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        match &query.ids {
            Some(ids) => {
                for id in ids {
                    match split_id(id) {
                        (Some(zone), name) => {
                            by_zone
                                .entry(zone.to_owned())
                                .or_insert_with(|| Some(BTreeSet::new()))
                                .as_mut()
                                .map(|s| s.insert(name.to_owned()));
                        }
                        (None, name) => {
                            for zone in self.zones.iter() {
                                by_zone
                                    .entry(zone.clone())
                                    .or_insert_with(|| Some(BTreeSet::new()))
                                    .as_mut()
                                    .map(|s| s.insert(name.to_owned()));
                            }
                        }
                    }
                }
            }
            None => by_zone.extend(self.zones.iter().map(|z| (z.clone(), None))),
        }
        let labels = Self::label_filter(query);
        let lists = by_zone.into_iter().map(|(zone, names)| {
            let mut terms = labels.clone();
            // Long id lists are filtered here rather than in a URL the API would refuse.
            if let Some(names) = names.as_ref().filter(|n| n.len() <= 40) {
                let any: Vec<String> = names.iter().map(|n| format!("(name = {})", filter_value(n))).collect();
                terms.push(format!("({})", any.join(" OR ")));
            }
            let filter = (!terms.is_empty()).then(|| terms.join(" AND "));
            async move {
                let found = self.clients.list_instances(&zone, filter.as_deref()).await?;
                Ok::<_, Error>(
                    found
                        .into_iter()
                        .filter(|vm| names.as_ref().is_none_or(|n| vm.name.as_ref().is_some_and(|x| n.contains(x))))
                        .collect::<Vec<_>>(),
                )
            }
        });
        let found: Vec<model::Instance> =
            futures_util::future::try_join_all(lists).await?.into_iter().flatten().collect();
        self.observe(&found).await?;
        let disks = self.disk_images.lock().expect("poisoned").clone();
        Ok(found.iter().map(|vm| to_instance(vm, &disks)).collect())
    }

    /// Reads the source image of every boot disk not seen before.
    async fn observe(&self, found: &[model::Instance]) -> Result<()> {
        let unseen: Vec<String> = {
            let known = self.disk_images.lock().expect("poisoned");
            found.iter().filter_map(boot_disk).filter(|d| !known.contains_key(d)).collect()
        };
        let read = futures_util::stream::iter(unseen.into_iter().map(|disk| async move {
            let parts: Vec<&str> = disk.split('/').collect();
            let (zone, name) = (parts.get(3).copied().unwrap_or(""), parts.get(5).copied().unwrap_or(""));
            let image = self.clients.disk_image(zone, name).await?;
            Ok::<_, Error>((disk.clone(), image.map(|i| relative(&i))))
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let mut known = self.disk_images.lock().expect("poisoned");
        for (disk, image) in read {
            // A disk still being made has no source image yet: read it again next time.
            if image.is_some() {
                known.insert(disk, image);
            }
        }
        Ok(())
    }
}

fn check_name(field: &str, name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{name:?} is not a GCE resource name (a-z, 0-9 and '-', starting with a letter)"),
        ))
    }
}

fn boot_disk(vm: &model::Instance) -> Option<String> {
    let disk = vm.disks.iter().find(|d| d.boot == Some(true)).or(vm.disks.first())?;
    disk.source.as_deref().map(relative)
}

fn metadata_value<'a>(vm: &'a model::Instance, key: &str) -> Option<&'a str> {
    vm.metadata.as_ref()?.items.iter().find(|i| i.key.as_deref() == Some(key))?.value.as_deref()
}

/// An immut instance from what GCE reports.
pub(crate) fn to_instance(vm: &model::Instance, disks: &HashMap<String, Option<String>>) -> Instance {
    let zone = vm.zone.as_deref().map(last_segment).unwrap_or_default().to_owned();
    let name = vm.name.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = vm.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let status = vm.status.as_ref().and_then(|s| s.name()).unwrap_or("UNKNOWN");
    let seen = boot_disk(vm).and_then(|d| disks.get(&d).cloned().flatten());
    // The disk says which image it was made from; when that is the image the launch resolved
    // the artifact's reference to, the instance runs the artifact as it was named (a family, a
    // bare name). Anything else is reported as the image it really is.
    let image =
        match (seen, metadata_value(vm, metadata_keys::IMAGE_RESOLVED), metadata_value(vm, metadata_keys::IMAGE)) {
            (Some(seen), Some(resolved), Some(named)) if seen == resolved => Some(named.to_owned()),
            (seen, _, _) => seen,
        };
    Instance {
        id: id_of(&zone, &name),
        state: state_of(status),
        provenance: Provenance::from_labels(&labels, CHARSET).map(Arc::new),
        labels: Arc::new(labels),
        observed: Arc::new(Observed {
            image,
            machine_type: vm.machine_type.as_deref().map(|m| last_segment(m).to_owned()),
            access: Some(crate::access::access(vm)),
        }),
        address: vm.network_interfaces.first().and_then(|n| n.network_ip.clone()),
    }
}

/// The numeric suffix a name pattern gave an instance.
fn serial(name: &str) -> u64 {
    name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &str {
        "gcp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // bulkInsert makes at most 1000 instances a call.
            max_launch_batch: 1000,
            max_terminate_batch: self.defaults.max_terminate_batch,
            honours_token: true,
            label_charset: CHARSET,
            max_label_value_len: 63,
            max_label_key_len: 63,
            max_labels: 64,
            // An instance is listed once its bulkInsert is DONE, which launch waits for.
            consistency_window: Duration::ZERO,
            // Stopped and stopping instances keep their disks and addresses until deleted.
            lingering_holds_quota: true,
            // Compute Engine read requests are metered per project per minute.
            min_poll_interval: std::time::Duration::from_secs(1),
        }
    }

    /// The release's image asked afresh, past the launch-time cache (an image made obsolete
    /// since the last launch is exactly what this must see), and the room the quotas of the
    /// zones' regions leave for its machine type. Quotas that cannot be read leave the room
    /// unknown; they never block.
    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let reference = &release.artifact().image;
        let (project, name, family) = match parse_image(self.project(), reference)? {
            ImageRef::Name { project, name } => (project, Some(name), None),
            ImageRef::Family { project, family } => (project, None, Some(family)),
        };
        let image = self.clients.image(&project, name.as_deref(), family.as_deref()).await?;
        let readiness = crate::readiness::image_readiness(reference, image.as_ref());
        if readiness.is_blocked() {
            return Ok(readiness);
        }
        let machine_type =
            release.baseline().spec.machine_type.clone().unwrap_or_else(|| self.defaults.machine_type.clone());
        let regions: BTreeSet<&str> =
            self.zones.iter().map(|z| z.rsplit_once('-').map_or(z.as_str(), |(region, _)| region)).collect();
        let mut room: Option<usize> = None;
        for region in regions {
            match self.clients.region(region).await {
                Ok(Some(r)) => {
                    if let Some(n) = crate::readiness::room(&r.quotas, &machine_type) {
                        room = Some(room.unwrap_or(0) + n);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(region, error = %e, "the region's quotas could not be read; the room is unknown");
                    room = None;
                    break;
                }
            }
        }
        Ok(match room {
            Some(n) => readiness.with_room(n),
            None => readiness,
        })
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        crate::access::check(&request.release.baseline().spec)?;
        let image = self.ensure_image(&request.release.artifact().image).await?;
        let token = request.token.as_str();
        let pattern = name_pattern(request.release.service(), token);
        let first = zone_index(token, self.zones.len());
        let tries = if self.defaults.zone_fallback { self.zones.len() } else { 1 };
        let mut last = None;
        for step in 0..tries {
            let zone = &self.zones[(first + step) % self.zones.len()];
            let body = self.body(request, &image, &pattern);
            match self.clients.bulk_insert(zone, &request_id(token, request.count, zone), body).await {
                Ok(_) => {
                    // minCount = count: the operation made all of them or none. Its names are
                    // the highest numbers of the pattern under this token.
                    let filter = format!("(labels.{} = {})", label_keys::TOKEN, filter_value(&CHARSET.encode(token)));
                    let mut made = self.clients.list_instances(zone, Some(&filter)).await?;
                    made.sort_by_key(|vm| serial(vm.name.as_deref().unwrap_or("")));
                    let skip = made.len().saturating_sub(request.count);
                    let disks = self.disk_images.lock().expect("poisoned").clone();
                    return Ok(made[skip..].iter().map(|vm| to_instance(vm, &disks)).collect());
                }
                Err(e)
                    if e.kind() == ErrorKind::QuotaExceeded
                        && e.message().contains("ZONE_RESOURCE_POOL_EXHAUSTED")
                        && step + 1 < tries =>
                {
                    tracing::warn!(zone, error = %e, "zone out of capacity; trying the next zone");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one zone was tried"))
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        if query.ids.as_ref().is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        // Stopped instances are kept (see `state_of`): they exist until deleted.
        Ok(self.list(query).await?.into_iter().filter(|i| query.matches(i)).collect())
    }

    fn pacing(&self) -> PacingStats {
        self.clients.paced()
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut targets: Vec<(String, String)> = Vec::new();
        let bare: Vec<InstanceId> = ids.iter().filter(|id| split_id(id).0.is_none()).cloned().collect();
        for id in ids {
            if let (Some(zone), name) = split_id(id) {
                targets.push((zone.to_owned(), name.to_owned()));
            }
        }
        if !bare.is_empty() {
            // A name without its zone: find where it lives; unknown names are already gone.
            for i in self.list(&Query::ids(bare).with_unmanaged().with_terminated()).await? {
                if let (Some(zone), name) = split_id(&i.id) {
                    targets.push((zone.to_owned(), name.to_owned()));
                }
            }
        }
        futures_util::stream::iter(targets.into_iter().map(|(zone, name)| async move {
            self.clients.delete_instance(&zone, &name).await.map_err(|e| e.with_ids([id_of(&zone, &name)]))
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
    }
}

/// Adoption labels instances launched outside immut with a provenance (release zero), with one
/// `instances.setLabels` each: labels are the only change made to them. Their other labels are
/// kept.
#[async_trait]
impl Adopt for GcpProvider {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let mut found = Vec::new();
        for id in ids {
            let zones: Vec<String> = match split_id(id) {
                (Some(zone), _) => vec![zone.to_owned()],
                (None, _) => self.zones.to_vec(),
            };
            let name = split_id(id).1;
            let mut hit = None;
            for zone in zones {
                if let Some(vm) = self.clients.get_instance(&zone, name).await? {
                    hit = Some((zone, vm));
                    break;
                }
            }
            let Some((zone, vm)) = hit else {
                return Err(Error::new(ErrorKind::NotFound, "cannot adopt an instance that does not exist")
                    .with_provider("gcp")
                    .with_operation("instances.get")
                    .with_ids([id.clone()]));
            };
            let mut labels: BTreeMap<String, String> = vm.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.extend(provenance.signed_labels(CHARSET, signature));
            self.clients.set_labels(&vm, &zone, labels).await?;
            found.push(id_of(&zone, name));
        }
        self.describe(&Query::ids(found).with_unmanaged()).await
    }
}

/// Which groups carry the traffic.
#[derive(Debug, Clone)]
enum Mode {
    Single { group: String },
    Switch { groups: [String; 2] },
}

/// A backend service with unmanaged instance groups (zonal: one group per zone, and per colour
/// for blue/green). A `HealthCheck` too: the balancer's own verdicts from getHealth.
#[derive(Debug, Clone)]
pub struct GcpTraffic {
    clients: Arc<Clients>,
    zones: Arc<Vec<String>>,
    backend_service: String,
    mode: Mode,
    provider: GcpProvider,
}

/// What one read of the backend service says.
struct Served {
    /// `capacityScaler` by group path, for the service's backends.
    scalers: HashMap<String, f32>,
    drain: Duration,
    service: model::BackendService,
}

impl GcpTraffic {
    fn new(provider: &GcpProvider, backend_service: String, mode: Mode) -> Self {
        GcpTraffic {
            clients: provider.clients.clone(),
            zones: provider.zones.clone(),
            backend_service,
            mode,
            provider: provider.clone(),
        }
    }

    /// The backend service this traffic goes through.
    pub fn backend_service(&self) -> &str {
        &self.backend_service
    }

    /// The group (name) that receives traffic now: the colour whose backends have a capacity
    /// above zero; `None` when none has.
    pub async fn active_group(&self) -> Result<Option<String>> {
        let served = self.served().await?;
        Ok(self.active(&served).map(str::to_owned))
    }

    fn group_path(&self, zone: &str, group: &str) -> String {
        format!("{}/instanceGroups/{group}", self.clients.zone_path(zone))
    }

    fn instance_path(&self, zone: &str, name: &str) -> String {
        format!("{}/instances/{name}", self.clients.zone_path(zone))
    }

    fn colours(&self) -> Vec<&str> {
        match &self.mode {
            Mode::Single { group } => vec![group.as_str()],
            Mode::Switch { groups } => groups.iter().map(String::as_str).collect(),
        }
    }

    async fn served(&self) -> Result<Served> {
        let service = self.clients.backend_service(&self.backend_service).await?;
        let scalers = service
            .backends
            .iter()
            .filter_map(|b| Some((relative(b.group.as_deref()?), b.capacity_scaler.unwrap_or(1.0))))
            .collect();
        let seconds = service.connection_draining.as_ref().and_then(|c| c.draining_timeout_sec).unwrap_or(0);
        Ok(Served { scalers, drain: Duration::from_secs(seconds.max(0) as u64), service })
    }

    /// The colour that receives traffic: any of its groups has a capacity above zero.
    fn active<'a>(&'a self, served: &Served) -> Option<&'a str> {
        self.colours()
            .into_iter()
            .find(|g| self.zones.iter().any(|z| served.scalers.get(&self.group_path(z, g)).is_some_and(|s| *s > 0.0)))
    }

    /// `(zone, name)` of each id, by zone; ids without a zone are in no group.
    fn by_zone(ids: &[InstanceId]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in ids {
            if let (Some(zone), name) = split_id(id) {
                out.entry(zone.to_owned()).or_default().push(name.to_owned());
            }
        }
        out
    }

    /// Fails with NotFound naming the instances GCE does not know.
    async fn existing(&self, instances: &[Instance]) -> Result<Vec<InstanceId>> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let known: HashSet<InstanceId> = self
            .provider
            .describe(&Query::ids(ids.clone()).with_unmanaged())
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let unknown: Vec<InstanceId> = ids.iter().filter(|id| !known.contains(*id)).cloned().collect();
        if !unknown.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "cannot add instances that do not exist to an instance group")
                .with_provider("gcp")
                .with_operation("instanceGroups.addInstances")
                .with_ids(unknown));
        }
        Ok(ids)
    }

    /// Makes `ids` members of `group` in their zones, one addInstances per zone; members
    /// already there are left alone. Returns the stale members of the group (not in `ids`)
    /// when `remove_others` is set, after removing them.
    async fn add(&self, group: &str, ids: &[InstanceId], remove_others: bool) -> Result<()> {
        let wanted = Self::by_zone(ids);
        let zones: BTreeSet<String> = wanted
            .keys()
            .cloned()
            .chain(remove_others.then(|| self.zones.iter().cloned()).into_iter().flatten())
            .collect();
        for zone in zones {
            let want: BTreeSet<String> =
                wanted.get(&zone).into_iter().flatten().map(|n| self.instance_path(&zone, n)).collect();
            let members: BTreeSet<String> = self.clients.group_members(&zone, group).await?.into_iter().collect();
            if remove_others {
                let stale: Vec<String> = members.difference(&want).cloned().collect();
                if !stale.is_empty() {
                    self.clients.change_members(&zone, group, &stale, false).await?;
                }
            }
            let missing: Vec<String> = want.difference(&members).cloned().collect();
            if !missing.is_empty() {
                self.clients.change_members(&zone, group, &missing, true).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Traffic for GcpTraffic {
    /// Blue/green: stages new instances into the idle colour (capacity 0: the balancer probes
    /// them, no traffic), so they are proven by the balancer before the switch. Rolling and
    /// canary: nothing to do.
    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        let Mode::Switch { groups } = &self.mode else { return Ok(()) };
        let served = self.served().await?;
        let active = self.active(&served);
        let Some(idle) = groups.iter().find(|g| Some(g.as_str()) != active) else { return Ok(()) };
        let stage: Vec<InstanceId> = instances
            .iter()
            .filter(|i| split_id(&i.id).0.is_some_and(|z| served.scalers.contains_key(&self.group_path(z, idle))))
            .map(|i| i.id.clone())
            .collect();
        if !stage.is_empty() {
            self.add(idle, &stage, false).await?;
        }
        Ok(())
    }

    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let served = self.served().await?;
        let mut ids = Vec::new();
        for zone in self.zones.iter() {
            for group in self.colours() {
                let receives = served.scalers.get(&self.group_path(zone, group)).is_some_and(|s| *s > 0.0);
                if receives {
                    for path in self.clients.group_members(zone, group).await? {
                        let parts: Vec<&str> = path.split('/').collect();
                        if let (Some(z), Some(n)) = (parts.get(3), parts.get(5)) {
                            ids.push(id_of(z, n));
                        }
                    }
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let ids = self.existing(instances).await?;
        let group = match &self.mode {
            Mode::Single { group } => group.clone(),
            Mode::Switch { groups } => {
                let served = self.served().await?;
                self.active(&served).unwrap_or(&groups[0]).to_owned()
            }
        };
        self.add(&group, &ids, false).await
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let wanted = Self::by_zone(ids);
        if wanted.is_empty() {
            return Ok(());
        }
        let served = self.served().await?;
        let mut drained = false;
        for (zone, names) in &wanted {
            for group in self.colours() {
                let members: BTreeSet<String> = self.clients.group_members(zone, group).await?.into_iter().collect();
                let present: Vec<String> =
                    names.iter().map(|n| self.instance_path(zone, n)).filter(|p| members.contains(p)).collect();
                if present.is_empty() {
                    continue;
                }
                self.clients.change_members(zone, group, &present, false).await?;
                drained |= served.scalers.get(&self.group_path(zone, group)).is_some_and(|s| *s > 0.0);
            }
        }
        if drained {
            // Connection draining: the backend service lets in-flight requests finish this long.
            tokio::time::sleep(served.drain).await;
        }
        Ok(())
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let Mode::Switch { groups } = &self.mode else {
            self.attach(attach).await?;
            return self.detach(detach).await;
        };
        if detach.is_empty() {
            // Nothing to move away from (a first deployment): serve from the active colour.
            return self.attach(attach).await;
        }
        let served = self.served().await?;
        let active = self.active(&served).unwrap_or(&groups[0]).to_owned();
        let idle = groups.iter().find(|g| **g != active).expect("two colours").clone();
        let ids = self.existing(attach).await?;
        // Already switched (a retried switch): the active colour holds the attached set and
        // none of the detached one.
        let mut active_members = BTreeSet::new();
        for zone in self.zones.iter() {
            active_members.extend(self.clients.group_members(zone, &active).await?);
        }
        let path = |id: &InstanceId| split_id(id).0.map(|z| self.instance_path(z, split_id(id).1));
        if ids.iter().all(|id| path(id).is_some_and(|p| active_members.contains(&p)))
            && detach.iter().all(|id| path(id).is_none_or(|p| !active_members.contains(&p)))
        {
            return Ok(());
        }
        // The idle colour holds exactly the new instances: older ones must not get traffic.
        self.add(&idle, &ids, true).await?;
        let mut backends = served.service.backends.clone();
        for b in backends.iter_mut() {
            let path = b.group.as_deref().map(relative).unwrap_or_default();
            for zone in self.zones.iter() {
                if path == self.group_path(zone, &idle) {
                    b.capacity_scaler = Some(1.0);
                } else if path == self.group_path(zone, &active) {
                    b.capacity_scaler = Some(0.0);
                }
            }
        }
        for zone in self.zones.iter() {
            let path = self.group_path(zone, &idle);
            if !backends.iter().any(|b| b.group.as_deref().map(relative).as_deref() == Some(path.as_str())) {
                backends.push(
                    model::Backend::new().set_group(path).set_balancing_mode("UTILIZATION").set_capacity_scaler(1.0),
                );
            }
        }
        let mut body = model::BackendService::new().set_backends(backends);
        if let Some(fp) = served.service.fingerprint.clone() {
            body = body.set_fingerprint(fp);
        }
        self.clients.patch_backend_service(&self.backend_service, body).await?;
        // The old colour keeps its members for a fast switch back, but gets no new requests:
        // its in-flight ones drain for the backend service's draining timeout before we return.
        tokio::time::sleep(served.drain).await;
        Ok(())
    }
}

/// Health from the backend service's own health check (`backendServices.getHealth`), for the
/// groups it serves. Blue/green: an instance in neither colour is unknown until it is staged
/// ([`Traffic::prepare`]) and the balancer has judged it. Rolling and canary: an instance not
/// in the group yet passes, so this check composes with checks that gate the attach (instance
/// status, the HTTP probe). The check never changes anything.
#[async_trait]
impl HealthCheck for GcpTraffic {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    /// A failed getHealth is an error for the engine to retry, never a verdict.
    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let served = self.served().await?;
        let probed: Vec<(String, String)> = self
            .zones
            .iter()
            .flat_map(|z| self.colours().into_iter().map(move |g| (z.clone(), g.to_owned())))
            .filter(|(z, g)| served.scalers.contains_key(&self.group_path(z, g)))
            .collect();
        let reads = probed.iter().map(|(z, g)| {
            let path = self.group_path(z, g);
            async move { self.clients.group_health(&self.backend_service, &path).await }
        });
        let mut states: HashMap<String, String> = HashMap::new();
        for statuses in futures_util::future::try_join_all(reads).await?.into_iter().flatten() {
            for (instance, state) in statuses {
                // In two groups (staged, then attached): the serving group's verdict is as good.
                states.entry(instance).or_insert(state);
            }
        }
        let idle = match &self.mode {
            Mode::Switch { groups } => {
                let active = self.active(&served);
                groups.iter().find(|g| Some(g.as_str()) != active).cloned()
            }
            Mode::Single { .. } => None,
        };
        let verdicts = instances
            .iter()
            .map(|i| {
                let (zone, name) = split_id(&i.id);
                let path = zone.map(|z| self.instance_path(z, name));
                match path.as_ref().and_then(|p| states.get(p)).map(String::as_str) {
                    Some("HEALTHY") => Health::Healthy,
                    Some(state @ ("UNHEALTHY" | "DRAINING" | "TIMEOUT")) => {
                        Health::Unhealthy(format!("the backend service's health check says {state}"))
                    }
                    Some(_) => Health::Unknown,
                    // Not probed yet (blue/green: not staged, or staged and not judged yet).
                    None if idle.is_some() => Health::Unknown,
                    None => Health::Healthy,
                }
            })
            .collect();
        Ok(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse_in_every_form() {
        let name = |p: &str, n: &str| ImageRef::Name { project: p.into(), name: n.into() };
        let family = |p: &str, f: &str| ImageRef::Family { project: p.into(), family: f.into() };
        assert_eq!(
            parse_image("me", "projects/debian-cloud/global/images/family/debian-12").unwrap(),
            family("debian-cloud", "debian-12")
        );
        assert_eq!(parse_image("me", "projects/p/global/images/web-v1").unwrap(), name("p", "web-v1"));
        assert_eq!(
            parse_image("me", "https://compute.googleapis.com/compute/v1/projects/p/global/images/web-v1").unwrap(),
            name("p", "web-v1")
        );
        assert_eq!(parse_image("me", "global/images/web-v1").unwrap(), name("me", "web-v1"));
        assert_eq!(parse_image("me", "family/web").unwrap(), family("me", "web"));
        assert_eq!(parse_image("me", "web-v1").unwrap(), name("me", "web-v1"));
        let e = parse_image("me", "ami-123/x/y").unwrap_err();
        assert!(e.to_string().contains("artifact.image"), "{e}");
    }

    #[test]
    fn names_and_request_ids_are_deterministic_and_fit_gce() {
        let token = "d0123456789ab-w4294967295-4294967295";
        let pattern = name_pattern(&"s".repeat(40), token);
        assert_eq!(pattern, name_pattern(&"s".repeat(40), token));
        assert!(pattern.len() <= 63 && pattern.ends_with("-####"), "{pattern}");
        let id = request_id(token, 3, "us-central1-a");
        assert_eq!(id, request_id(token, 3, "us-central1-a"));
        assert_ne!(id, request_id(token, 2, "us-central1-a"), "a shortfall launch is a new request");
        assert_ne!(id, request_id(token, 3, "us-central1-b"), "another zone is a new request");
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 5);
        assert_eq!(zone_index(token, 3), zone_index(token, 3));
        assert!((0..30).map(|w| zone_index(&format!("d-w{w}-0"), 3)).collect::<BTreeSet<_>>().len() == 3, "spread");
    }

    #[test]
    fn every_gce_status_maps_to_a_lifecycle_state() {
        for (status, state) in [
            ("PROVISIONING", InstanceState::Pending),
            ("STAGING", InstanceState::Pending),
            ("REPAIRING", InstanceState::Pending),
            ("RUNNING", InstanceState::Running),
            ("STOPPING", InstanceState::Terminating),
            ("SUSPENDING", InstanceState::Stopped),
            ("SUSPENDED", InstanceState::Stopped),
            ("STOPPED", InstanceState::Stopped),
            ("TERMINATED", InstanceState::Stopped),
            ("DEPROVISIONING", InstanceState::Terminating),
        ] {
            assert_eq!(state_of(status), state, "{status}");
        }
        assert_eq!(serial("web-1a2b3c4d-0042"), 42);
        assert_eq!(split_id(&InstanceId::new("us-central1-a/web-1")), (Some("us-central1-a"), "web-1"));
        assert_eq!(split_id(&InstanceId::new("web-1")), (None, "web-1"));
    }

    proptest::proptest! {
        /// Any semver version, pre-release and build included, survives GCE's label rules.
        #[test]
        fn provenance_labels_round_trip_for_any_semver(
            major in 0u64..1000, minor in 0u64..1000, patch in 0u64..100_000,
            pre in proptest::option::of("[0-9A-Za-z-]{1,8}(\\.[0-9A-Za-z-]{1,8}){0,2}"),
            build in proptest::option::of("[0-9A-Za-z-]{1,8}(\\.[0-9A-Za-z-]{1,8}){0,1}"),
        ) {
            let mut text = format!("{major}.{minor}.{patch}");
            if let Some(p) = &pre { text.push('-'); text.push_str(p); }
            if let Some(b) = &build { text.push('+'); text.push_str(b); }
            let Ok(version) = immut_core::semver::Version::parse(&text) else { return Ok(()) };
            let artifact = immut_core::ArtifactSpec::new("web", version, "projects/p/global/images/web");
            let base = immut_core::BaselineSpec::new("base", immut_core::semver::Version::new(1, 0, 0), immut_core::LaunchSpec::default());
            let release = immut_core::Release::new("web", &artifact, &base).unwrap();
            let deployment = immut_core::DeploymentId::new("d0123456789ab");
            let request = LaunchRequest::new(Arc::new(release), 1, &deployment, immut_core::LaunchToken::new("d0123456789ab-w1-0"))
                .signed(&immut_core::SigningKey::new([9u8; 32]).unwrap());
            let labels = request.labels(CHARSET);
            for (k, v) in &labels {
                proptest::prop_assert!(CHARSET.valid_key(k) && k.len() <= 63, "{}", k);
                proptest::prop_assert!(CHARSET.valid_value(v), "{}={}", k, v);
            }
            // Values past 63 characters are refused by validation, never cut: either it fits
            // and round-trips exactly, or the launch is refused with the field named.
            match request.validate(&GcpCapabilities::get()) {
                Ok(()) => proptest::prop_assert_eq!(Provenance::from_labels(&labels, CHARSET), Some(request.provenance.clone())),
                Err(e) => proptest::prop_assert!(e.message().contains("immut-version"), "{}", e),
            }
        }
    }

    struct GcpCapabilities;

    impl GcpCapabilities {
        fn get() -> Capabilities {
            Capabilities {
                max_launch_batch: 1000,
                max_terminate_batch: 1000,
                honours_token: true,
                label_charset: CHARSET,
                max_label_value_len: 63,
                max_label_key_len: 63,
                max_labels: 64,
                ..Capabilities::default()
            }
        }
    }
}
