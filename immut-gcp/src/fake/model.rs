//! The model: Compute Engine resources and how they behave over time. No JSON parsing here
//! (that is the wire's job); the shapes are Compute's own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use immut_fake::{Fault, Faults, Timeline};
use serde::{Deserialize, Serialize};

use super::error::GceError;

/// How long things take in the fake, and how big pages are. Every timing is in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// An operation stays `PENDING` this long.
    pub operation_pending_ms: u64,
    /// Then `RUNNING` this long, then `DONE`.
    pub operation_running_ms: u64,
    /// A new instance is `PROVISIONING` this long.
    pub provisioning_ms: u64,
    /// Then `STAGING` this long, then `RUNNING`.
    pub staging_ms: u64,
    /// A running instance passes its backend service's health check after this long.
    pub healthy_after_ms: u64,
    /// A stopped or deleted instance is `STOPPING` this long.
    pub stopping_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            operation_pending_ms: 20,
            operation_running_ms: 80,
            provisioning_ms: 40,
            staging_ms: 40,
            healthy_after_ms: 60,
            stopping_ms: 40,
        }
    }
}

/// An instance.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Numeric id.
    pub id: u64,
    /// Name (unique in its zone).
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Machine type name (`e2-small`).
    pub machine_type: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Changes with every label change.
    pub label_fingerprint: String,
    /// Metadata items, in order.
    pub metadata: Vec<(String, String)>,
    /// Changes with every metadata change (`instances.setMetadata` checks it).
    pub metadata_fingerprint: String,
    /// The boot disk's image, `projects/P/global/images/NAME`.
    pub image: String,
    /// Its id.
    pub image_id: u64,
    /// The boot disk's size.
    pub disk_size_gb: i64,
    /// `global/networks/NAME` relative to the project, or a full path.
    pub network: String,
    /// `regions/R/subnetworks/NAME`.
    pub subnetwork: String,
    /// The internal IP.
    pub network_ip: String,
    /// Whether it has an external NAT address.
    pub external_ip: Option<String>,
    /// Service accounts, as given.
    pub service_accounts: serde_json::Value,
    /// Network tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: String,
    /// Creation time (model time).
    pub created: Duration,
    /// `PROVISIONING -> STAGING -> RUNNING`, or `STOPPING -> TERMINATED` after a stop.
    pub life: Timeline<&'static str>,
    /// A delete is in progress: `STOPPING` until its operation is done, then gone.
    pub deleting: bool,
}

impl Vm {
    /// The status at `now`.
    pub fn status(&self, now: Duration) -> &'static str {
        if self.deleting { "STOPPING" } else { self.life.at(now) }
    }
}

/// An image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Family, if any.
    pub family: Option<String>,
    /// Creation time (model time).
    pub created: Duration,
    /// `deprecated.state`: `ACTIVE`, `DEPRECATED`, `OBSOLETE` or `DELETED`.
    pub deprecation: Option<String>,
    /// `deprecated.replacement`.
    pub replacement: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Disk size.
    pub disk_size_gb: i64,
    /// Description.
    pub description: String,
}

impl Image {
    /// Whether new disks may be made from it.
    pub fn usable(&self) -> bool {
        !matches!(self.deprecation.as_deref(), Some("OBSOLETE" | "DELETED"))
    }
}

/// An unmanaged instance group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Member instance names (same zone).
    pub members: BTreeSet<String>,
    /// Named ports, as given.
    pub named_ports: serde_json::Value,
    /// Network.
    pub network: String,
    /// Description.
    pub description: String,
    /// Creation time.
    pub created: Duration,
}

/// A global backend service, kept as its resource JSON (what was inserted, with defaults and
/// group URLs normalized to `projects/P/zones/Z/instanceGroups/G`).
#[derive(Debug, Clone)]
pub struct Backend {
    /// Id.
    pub id: u64,
    /// Creation time.
    pub created: Duration,
    /// The resource fields.
    pub resource: serde_json::Map<String, serde_json::Value>,
    /// Changes with every update.
    pub fingerprint: String,
}

impl Backend {
    /// `(group, capacityScaler)` of each backend.
    pub fn groups(&self) -> Vec<(String, f64)> {
        self.resource
            .get("backends")
            .and_then(|b| b.as_array())
            .map(|bs| {
                bs.iter()
                    .filter_map(|b| {
                        let group = b.get("group")?.as_str()?.to_owned();
                        let scaler = b.get("capacityScaler").and_then(|c| c.as_f64()).unwrap_or(1.0);
                        Some((group, scaler))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What an operation does when it reaches `DONE`.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Removes the instance (and its boot disk, and its group memberships).
    DeleteInstance {
        /// Zone.
        zone: String,
        /// Name.
        name: String,
    },
    /// Adds members.
    AddMembers {
        /// Zone.
        zone: String,
        /// Group.
        group: String,
        /// Instance names.
        names: Vec<String>,
    },
    /// Removes members.
    RemoveMembers {
        /// Zone.
        zone: String,
        /// Group.
        group: String,
        /// Instance names.
        names: Vec<String>,
    },
    /// Creates a group.
    CreateGroup(Group),
    /// Deletes a group.
    DeleteGroup {
        /// Zone.
        zone: String,
        /// Name.
        name: String,
    },
    /// Creates or replaces a backend service.
    PutBackend(String, Backend),
    /// Deletes a backend service.
    DeleteBackend(String),
    /// Creates an image.
    CreateImage(Image),
    /// Sets an image's deprecation.
    Deprecate {
        /// Image.
        image: String,
        /// New state (`ACTIVE` clears it).
        state: String,
        /// Replacement.
        replacement: Option<String>,
    },
}

/// A zonal or global operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Zone; `None` for a global operation.
    pub zone: Option<String>,
    /// `insert`, `bulkInsert`, `delete`, ...
    pub op_type: String,
    /// What it acts on, relative (`projects/P/zones/Z/instances/N`).
    pub target: String,
    /// The target's id, if it has one yet.
    pub target_id: Option<u64>,
    /// `PENDING -> RUNNING -> DONE`.
    pub life: Timeline<&'static str>,
    /// The error it ends with: `(code, message)`.
    pub error: Option<(String, String)>,
    /// Its effect, until applied.
    pub effect: Option<Effect>,
}

impl Op {
    /// `httpErrorStatusCode` and `httpErrorMessage` of a failed operation.
    pub fn http_error(&self) -> Option<(u16, &'static str)> {
        let (code, _) = self.error.as_ref()?;
        Some(match code.as_str() {
            c if c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED") => (503, "SERVICE UNAVAILABLE"),
            "QUOTA_EXCEEDED" => (403, "FORBIDDEN"),
            _ => (400, "BAD REQUEST"),
        })
    }
}

/// One project's resources.
#[derive(Debug, Default)]
pub struct Project {
    /// Instances by (zone, name).
    pub instances: BTreeMap<(String, String), Vm>,
    /// Images by name.
    pub images: BTreeMap<String, Image>,
    /// Instance groups by (zone, name).
    pub groups: BTreeMap<(String, String), Group>,
    /// Backend services by name.
    pub backends: BTreeMap<String, Backend>,
    /// Operations by name.
    pub operations: BTreeMap<String, Op>,
    /// Operation names by request id.
    pub request_ids: HashMap<String, String>,
}

/// What an instance is made from.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// Name.
    pub name: String,
    /// Machine type name.
    pub machine_type: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Metadata.
    pub metadata: Vec<(String, String)>,
    /// Source image reference as given.
    pub source_image: String,
    /// Disk size (0: the image's).
    pub disk_size_gb: i64,
    /// Network.
    pub network: Option<String>,
    /// Subnetwork.
    pub subnetwork: Option<String>,
    /// Whether an external NAT address is asked for.
    pub external: bool,
    /// Service accounts.
    pub service_accounts: serde_json::Value,
    /// Tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: String,
}

/// Everything the fake knows.
#[derive(Debug)]
pub struct Model {
    /// Timings.
    pub settings: Settings,
    /// Projects by id, made on first use.
    pub projects: BTreeMap<String, Project>,
    /// Regional quota limits set by the tests, by (project, region, metric); every other
    /// metric has its default (see `region.rs`).
    pub quota_limits: BTreeMap<(String, String, String), f64>,
    next_id: u64,
    next_ip: u32,
}

/// The public project whose images every project may use, as Google's public images live in
/// `debian-cloud` and friends.
pub const PUBLIC_PROJECT: &str = "debian-cloud";

/// A fingerprint (base64, as the API's `bytes` fields are). The Rust client decodes them with
/// the URL-safe alphabet and the Python one with the standard one; base64 of hex text uses
/// neither `+`, `/`, `-` nor `_`, so every client reads it.
fn fingerprint(seed: u64) -> String {
    use base64::Engine;
    let hex = format!("{:016x}", seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    base64::engine::general_purpose::STANDARD.encode(&hex.as_bytes()[..12])
}

/// `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`, the rule for resource names.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && *b.last().expect("not empty") != b'-'
}

/// The region of a zone (`us-central1-a` is in `us-central1`).
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r)
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), GceError> {
    if labels.len() > 64 {
        return Err(GceError::bad_request("invalid", format!("Invalid value for field '{field}': at most 64 labels")));
    }
    let ok = |s: &str| s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || !k.as_bytes()[0].is_ascii_lowercase() || !ok(k) {
            return Err(GceError::invalid_field(
                field,
                k,
                "Label keys must start with a lowercase letter and contain only lowercase letters, digits, \
                 underscores and dashes (at most 63 characters).",
            ));
        }
        if v.len() > 63 || !ok(v) {
            return Err(GceError::invalid_field(
                &format!("{field}.{k}"),
                v,
                "Label values may contain only lowercase letters, digits, underscores and dashes (at most 63 \
                 characters).",
            ));
        }
    }
    Ok(())
}

const MACHINE_FAMILIES: &[&str] = &["e2", "n1", "n2", "n2d", "n4", "c2", "c2d", "c3", "c3d", "c4", "t2d", "t2a", "m1"];

fn known_machine_type(name: &str) -> bool {
    let Some((family, rest)) = name.split_once('-') else { return false };
    if family == "custom" {
        return rest.split('-').all(|n| n.parse::<u32>().is_ok());
    }
    MACHINE_FAMILIES.contains(&family)
        && (matches!(rest, "micro" | "small" | "medium")
            || rest.split_once('-').is_some_and(|(kind, cpus)| {
                matches!(kind, "standard" | "highmem" | "highcpu") && cpus.parse::<u32>().is_ok_and(|n| n > 0)
            }))
}

/// `projects/P/...` of any resource reference: a full URL, a relative path, or a path relative
/// to the project (`global/images/x`, `zones/z/instances/y`).
pub fn normalize(project: &str, reference: &str) -> String {
    let r = reference.trim();
    if let Some(i) = r.find("projects/") {
        return r[i..].to_owned();
    }
    format!("projects/{project}/{}", r.trim_start_matches('/'))
}

impl Default for Model {
    fn default() -> Self {
        Model::new(Settings::default())
    }
}

impl Model {
    /// An empty model with the public images.
    pub fn new(settings: Settings) -> Self {
        let mut model = Model {
            settings,
            projects: BTreeMap::new(),
            quota_limits: BTreeMap::new(),
            next_id: 1_000_000_000_000_000,
            next_ip: 2,
        };
        model.seed_public_images();
        model
    }

    /// Forgets everything but the settings.
    pub fn reset(&mut self) {
        *self = Model::new(self.settings.clone());
    }

    fn seed_public_images(&mut self) {
        let images = [
            ("debian-12-bookworm-v20240611", "debian-12", Some("DEPRECATED")),
            ("debian-12-bookworm-v20240709", "debian-12", None),
            ("debian-11-bullseye-v20240709", "debian-11", None),
        ];
        for (n, (name, family, deprecation)) in images.into_iter().enumerate() {
            let id = self.id();
            self.project(PUBLIC_PROJECT).images.insert(
                name.to_owned(),
                Image {
                    id,
                    name: name.to_owned(),
                    family: Some(family.to_owned()),
                    created: Duration::from_millis(n as u64),
                    deprecation: deprecation.map(str::to_owned),
                    replacement: None,
                    labels: BTreeMap::new(),
                    disk_size_gb: 10,
                    description: format!("Debian, {family}"),
                },
            );
        }
    }

    /// A fresh id.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A project, made on first use.
    pub fn project(&mut self, project: &str) -> &mut Project {
        self.projects.entry(project.to_owned()).or_default()
    }

    /// Applies the effects of the operations that are done at `now`.
    pub fn tick(&mut self, now: Duration) {
        let due: Vec<(String, Effect)> = self
            .projects
            .iter_mut()
            .flat_map(|(p, proj)| {
                let mut due: Vec<(Duration, String, Effect)> = proj
                    .operations
                    .values_mut()
                    .filter(|op| op.effect.is_some() && op.life.is_done(now))
                    .map(|op| (op.life.end(), p.clone(), op.effect.take().expect("filtered")))
                    .collect();
                due.sort_by_key(|(at, _, _)| *at);
                due.into_iter().map(|(_, p, e)| (p, e))
            })
            .collect();
        for (project, effect) in due {
            self.apply(&project, effect);
        }
    }

    fn apply(&mut self, project: &str, effect: Effect) {
        let p = self.project(project);
        match effect {
            Effect::DeleteInstance { zone, name } => {
                p.instances.remove(&(zone.clone(), name.clone()));
                for ((z, _), g) in p.groups.iter_mut() {
                    if *z == zone {
                        g.members.remove(&name);
                    }
                }
            }
            Effect::AddMembers { zone, group, names } => {
                let live: Vec<String> =
                    names.into_iter().filter(|n| p.instances.contains_key(&(zone.clone(), n.clone()))).collect();
                if let Some(g) = p.groups.get_mut(&(zone, group)) {
                    g.members.extend(live);
                }
            }
            Effect::RemoveMembers { zone, group, names } => {
                if let Some(g) = p.groups.get_mut(&(zone, group)) {
                    for n in names {
                        g.members.remove(&n);
                    }
                }
            }
            Effect::CreateGroup(g) => {
                p.groups.insert((g.zone.clone(), g.name.clone()), g);
            }
            Effect::DeleteGroup { zone, name } => {
                p.groups.remove(&(zone, name));
            }
            Effect::PutBackend(name, b) => {
                p.backends.insert(name, b);
            }
            Effect::DeleteBackend(name) => {
                p.backends.remove(&name);
            }
            Effect::CreateImage(image) => {
                p.images.insert(image.name.clone(), image);
            }
            Effect::Deprecate { image, state, replacement } => {
                if let Some(i) = p.images.get_mut(&image) {
                    i.deprecation = (state != "ACTIVE").then_some(state);
                    i.replacement = replacement;
                }
            }
        }
    }

    /// Starts an operation. A fault rule may make it end with an error (then it changes
    /// nothing, and `effect` is dropped) or take longer. Returns its name and whether it
    /// failed, so the caller makes no immediate change for a failed one.
    #[allow(clippy::too_many_arguments)]
    pub fn start_op(
        &mut self,
        project: &str,
        zone: Option<&str>,
        method: &str,
        op_type: &str,
        target: String,
        target_id: Option<u64>,
        effect: Option<Effect>,
        faults: &Faults,
        now: Duration,
    ) -> (String, bool) {
        let error = match faults.take(method, &target, |f| matches!(f, Fault::OperationError { .. })) {
            Some(Fault::OperationError { code, message }) => Some((code, message)),
            _ => None,
        };
        let extra = match faults.take(method, &target, |f| matches!(f, Fault::SlowOperation { .. })) {
            Some(Fault::SlowOperation { extra_ms }) => Duration::from_millis(extra_ms),
            _ => Duration::ZERO,
        };
        let id = self.id();
        let name = format!("operation-{}-{id:013x}", now.as_millis());
        let pending = Duration::from_millis(self.settings.operation_pending_ms);
        let running = Duration::from_millis(self.settings.operation_running_ms) + extra;
        let failed = error.is_some();
        let op = Op {
            id,
            name: name.clone(),
            zone: zone.map(str::to_owned),
            op_type: op_type.to_owned(),
            target,
            target_id,
            life: Timeline::new(now, [("PENDING", pending), ("RUNNING", running)], "DONE"),
            effect: if failed { None } else { effect },
            error,
        };
        self.project(project).operations.insert(name.clone(), op);
        (name, failed)
    }

    /// The operation already started under this request id, if any.
    pub fn deduplicated(&mut self, project: &str, request_id: Option<&str>) -> Result<Option<String>, GceError> {
        let Some(id) = request_id else { return Ok(None) };
        if !valid_uuid(id) {
            return Err(GceError::invalid_field(
                "requestId",
                id,
                "The request ID must be a valid UUID with the exception that zero UUID is not supported \
                 (00000000-0000-0000-0000-000000000000).",
            ));
        }
        Ok(self.project(project).request_ids.get(id).cloned())
    }

    /// Remembers the operation a request id started.
    pub fn remember(&mut self, project: &str, request_id: Option<&str>, op: &str) {
        if let Some(id) = request_id {
            self.project(project).request_ids.insert(id.to_owned(), op.to_owned());
        }
    }

    /// An operation, zonal (`zone` set) or global.
    pub fn operation(&mut self, project: &str, zone: Option<&str>, name: &str) -> Result<&Op, GceError> {
        let scope = match zone {
            Some(z) => format!("projects/{project}/zones/{z}/operations/{name}"),
            None => format!("projects/{project}/global/operations/{name}"),
        };
        self.project(project)
            .operations
            .get(name)
            .filter(|op| op.zone.as_deref() == zone)
            .ok_or_else(|| GceError::not_found(&scope))
    }

    /// An image by name.
    pub fn image(&mut self, project: &str, name: &str) -> Result<&Image, GceError> {
        self.project(project)
            .images
            .get(name)
            .ok_or_else(|| GceError::not_found(&format!("projects/{project}/global/images/{name}")))
    }

    /// The newest image of a family that is not deprecated (or, when all are, the newest).
    pub fn image_from_family(&mut self, project: &str, family: &str) -> Result<&Image, GceError> {
        let images = &self.project(project).images;
        let in_family: Vec<&Image> =
            images.values().filter(|i| i.family.as_deref() == Some(family) && i.usable()).collect();
        let active = in_family.iter().filter(|i| i.deprecation.is_none()).max_by_key(|i| i.created);
        let pick = active.or_else(|| in_family.iter().max_by_key(|i| i.created)).map(|i| i.name.clone());
        match pick {
            Some(name) => self.image(project, &name),
            None => Err(GceError::not_found(&format!("projects/{project}/global/images/family/{family}"))),
        }
    }

    /// Resolves a source image reference (`projects/P/global/images/N`, `.../family/F`, or
    /// relative to the project) to `(projects/P/global/images/N, id)`. Obsolete and deleted
    /// images are refused.
    pub fn resolve_image(
        &mut self,
        project: &str,
        field: &str,
        reference: &str,
    ) -> Result<(String, u64, i64), GceError> {
        let path = normalize(project, reference);
        let parts: Vec<&str> = path.split('/').collect();
        let image = match parts.as_slice() {
            ["projects", p, "global", "images", "family", family] => self.image_from_family(p, family)?.clone(),
            ["projects", p, "global", "images", name] => self.image(p, name)?.clone(),
            _ => return Err(GceError::invalid_field(field, reference, "Expected an image or image family URL.")),
        };
        if !image.usable() {
            return Err(GceError::bad_request(
                "resourceNotReady",
                format!("The image '{path}' is {} and cannot be used.", image.deprecation.as_deref().unwrap_or("")),
            ));
        }
        Ok((format!("projects/{}/global/images/{}", parts[1], image.name), image.id, image.disk_size_gb))
    }

    /// Checks an instance spec and makes the instance, `PROVISIONING` from `now`.
    pub fn check_spec(&mut self, project: &str, zone: &str, spec: &VmSpec, field: &str) -> Result<(), GceError> {
        if !valid_name(&spec.name) {
            return Err(GceError::invalid_field(
                &format!("{field}.name"),
                &spec.name,
                "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'",
            ));
        }
        let machine = spec.machine_type.rsplit('/').next().unwrap_or("");
        if !known_machine_type(machine) {
            return Err(GceError::invalid_field(
                &format!("{field}.machineType"),
                &spec.machine_type,
                &format!("Machine type with name '{machine}' does not exist in zone '{zone}'."),
            ));
        }
        check_labels(&format!("{field}.labels"), &spec.labels)?;
        let size: usize = spec.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > 512 * 1024 {
            return Err(GceError::bad_request("invalid", format!("Metadata of {size} bytes exceeds 512 KB")));
        }
        self.resolve_image(project, &format!("{field}.disks[0].initializeParams.sourceImage"), &spec.source_image)?;
        Ok(())
    }

    /// Makes an instance from a checked spec.
    pub fn create_vm(&mut self, project: &str, zone: &str, spec: VmSpec, now: Duration) -> u64 {
        let (image, image_id, image_size) =
            self.resolve_image(project, "sourceImage", &spec.source_image).expect("checked before");
        let id = self.id();
        self.next_ip += 1;
        let ip = format!("10.128.{}.{}", self.next_ip / 250, self.next_ip % 250 + 2);
        let external = spec.external.then(|| {
            format!("34.{}.{}.{}", 100 + self.next_ip / 62_500 % 100, self.next_ip / 250 % 250, self.next_ip % 250 + 2)
        });
        let s = &self.settings;
        let life = Timeline::new(
            now,
            [
                ("PROVISIONING", Duration::from_millis(s.provisioning_ms)),
                ("STAGING", Duration::from_millis(s.staging_ms)),
            ],
            "RUNNING",
        );
        let vm = Vm {
            id,
            name: spec.name.clone(),
            zone: zone.to_owned(),
            machine_type: spec.machine_type.rsplit('/').next().unwrap_or_default().to_owned(),
            label_fingerprint: fingerprint(id),
            labels: spec.labels,
            metadata: spec.metadata,
            metadata_fingerprint: fingerprint(id.rotate_left(32)),
            image,
            image_id,
            disk_size_gb: if spec.disk_size_gb > 0 { spec.disk_size_gb } else { image_size },
            network: spec.network.unwrap_or_else(|| "global/networks/default".into()),
            subnetwork: spec.subnetwork.unwrap_or_else(|| format!("regions/{}/subnetworks/default", region_of(zone))),
            network_ip: ip,
            external_ip: external,
            service_accounts: spec.service_accounts,
            tags: spec.tags,
            description: spec.description,
            created: now,
            life,
            deleting: false,
        };
        self.project(project).instances.insert((zone.to_owned(), spec.name), vm);
        id
    }

    /// The names a bulk insert with this pattern makes: the `#` run is the number, and
    /// numbering starts after the highest number an existing instance of the zone carries.
    pub fn bulk_names(
        &mut self,
        project: &str,
        zone: &str,
        pattern: &str,
        count: usize,
    ) -> Result<Vec<String>, GceError> {
        let start = pattern.find('#');
        let (prefix, width, suffix) = match start {
            Some(s) => {
                let width = pattern[s..].bytes().take_while(|b| *b == b'#').count();
                let suffix = &pattern[s + width..];
                if suffix.contains('#') || width > 18 {
                    return Err(GceError::invalid_field(
                        "resource.namePattern",
                        pattern,
                        "The name pattern must contain one sequence of at most 18 '#' characters.",
                    ));
                }
                (&pattern[..s], width, suffix)
            }
            None => {
                return Err(GceError::invalid_field(
                    "resource.namePattern",
                    pattern,
                    "The name pattern must contain a sequence of '#' characters.",
                ));
            }
        };
        let highest = self
            .project(project)
            .instances
            .keys()
            .filter(|(z, _)| z == zone)
            .filter_map(|(_, name)| {
                let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                (digits.len() == width && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse::<u64>().ok())?
            })
            .max()
            .unwrap_or(0);
        let names: Vec<String> =
            (1..=count as u64).map(|n| format!("{prefix}{:0width$}{suffix}", highest + n, width = width)).collect();
        if names.last().is_some_and(|n| n.len() > 63 || (highest + count as u64).to_string().len() > width) {
            return Err(GceError::bad_request(
                "invalid",
                format!("The name pattern {pattern:?} cannot name {count} more instances."),
            ));
        }
        Ok(names)
    }

    /// An instance.
    pub fn vm(&mut self, project: &str, zone: &str, name: &str) -> Result<&mut Vm, GceError> {
        self.project(project)
            .instances
            .get_mut(&(zone.to_owned(), name.to_owned()))
            .ok_or_else(|| GceError::not_found(&format!("projects/{project}/zones/{zone}/instances/{name}")))
    }

    /// Whether an instance passes its load balancer's health check at `now`.
    pub fn healthy(&self, vm: &Vm, now: Duration, faults: &Faults) -> bool {
        let running_for = match vm.status(now) {
            "RUNNING" => now.saturating_sub(vm.life.since(now)),
            _ => return false,
        };
        let sick =
            |target: &str| faults.covers("compute.backendServices.getHealth", target, |f| *f == Fault::Unhealthy);
        running_for >= Duration::from_millis(self.settings.healthy_after_ms) && !sick(&vm.name) && !sick(&vm.image)
    }

    /// Checks a backend service's backends: existing groups, no duplicates, scalers of 0 or
    /// 0.1 to 1. Normalizes the group URLs and fills in defaults.
    pub fn check_backends(
        &mut self,
        project: &str,
        resource: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), GceError> {
        let Some(backends) = resource.get_mut("backends").and_then(|b| b.as_array_mut()) else { return Ok(()) };
        let mut seen = BTreeSet::new();
        for (i, b) in backends.iter_mut().enumerate() {
            let Some(b) = b.as_object_mut() else {
                return Err(GceError::bad_request(
                    "invalid",
                    format!("Invalid value for field 'resource.backends[{i}]'"),
                ));
            };
            let group = b.get("group").and_then(|g| g.as_str()).unwrap_or_default();
            let path = normalize(project, group);
            let parts: Vec<&str> = path.split('/').collect();
            let exists = match parts.as_slice() {
                ["projects", p, "zones", z, "instanceGroups", g] => self
                    .projects
                    .get(*p)
                    .is_some_and(|proj| proj.groups.contains_key(&((*z).to_owned(), (*g).to_owned()))),
                _ => false,
            };
            if !exists {
                return Err(GceError::invalid_field(
                    &format!("resource.backends[{i}].group"),
                    group,
                    "The instance group does not exist.",
                ));
            }
            if !seen.insert(path.clone()) {
                return Err(GceError::bad_request("invalid", format!("Duplicate backend group '{path}'")));
            }
            let scaler = b.get("capacityScaler").and_then(|c| c.as_f64()).unwrap_or(1.0);
            if !(scaler == 0.0 || (0.1..=1.0).contains(&scaler)) {
                return Err(GceError::invalid_field(
                    &format!("resource.backends[{i}].capacityScaler"),
                    &scaler.to_string(),
                    "Must be 0 or between 0.1 and 1.0.",
                ));
            }
            b.insert("group".into(), path.into());
            b.insert("capacityScaler".into(), scaler.into());
            b.entry("balancingMode").or_insert("UTILIZATION".into());
        }
        Ok(())
    }

    /// A fresh backend-service fingerprint.
    pub fn new_fingerprint(&mut self) -> String {
        let id = self.id();
        fingerprint(id)
    }
}

fn valid_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
        && s != "00000000-0000-0000-0000-000000000000"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_machine_types_and_request_ids() {
        assert!(valid_name("web-0001") && !valid_name("Web") && !valid_name("web-") && !valid_name("1web"));
        assert!(known_machine_type("e2-small") && known_machine_type("n2-standard-4"));
        assert!(
            known_machine_type("custom-2-4096") && !known_machine_type("t3.micro") && !known_machine_type("e2-huge")
        );
        assert!(valid_uuid("6ba7b810-9dad-51d1-80b4-00c04fd430c8"));
        assert!(!valid_uuid("not-a-uuid") && !valid_uuid("00000000-0000-0000-0000-000000000000"));
        assert_eq!(region_of("us-central1-a"), "us-central1");
        assert_eq!(normalize("p", "global/images/x"), "projects/p/global/images/x");
        assert_eq!(
            normalize("p", "https://compute.googleapis.com/compute/v1/projects/q/zones/z"),
            "projects/q/zones/z"
        );
    }

    #[test]
    fn bulk_names_continue_after_the_highest_existing_number() {
        let mut m = Model::default();
        let spec = |name: &str| VmSpec {
            name: name.into(),
            machine_type: "e2-small".into(),
            source_image: "projects/debian-cloud/global/images/family/debian-12".into(),
            ..VmSpec::default()
        };
        assert_eq!(m.bulk_names("p", "z-a1-a", "web-####", 2).unwrap(), vec!["web-0001", "web-0002"]);
        m.create_vm("p", "z-a1-a", spec("web-0050"), Duration::ZERO);
        m.create_vm("p", "z-a1-a", spec("web-9x"), Duration::ZERO);
        assert_eq!(m.bulk_names("p", "z-a1-a", "web-####", 1).unwrap(), vec!["web-0051"]);
        assert_eq!(m.bulk_names("p", "other-b1-b", "web-####", 1).unwrap(), vec!["web-0001"], "per zone");
        assert!(m.bulk_names("p", "z-a1-a", "web", 1).is_err());
        assert!(m.bulk_names("p", "z-a1-a", "w-#", 10).is_err(), "9 is the most one digit can name");
    }

    #[test]
    fn families_pick_the_newest_active_image_and_obsolete_ones_are_refused() {
        let mut m = Model::default();
        assert_eq!(m.image_from_family(PUBLIC_PROJECT, "debian-12").unwrap().name, "debian-12-bookworm-v20240709");
        let (path, _, _) = m.resolve_image("p", "f", "projects/debian-cloud/global/images/family/debian-11").unwrap();
        assert_eq!(path, "projects/debian-cloud/global/images/debian-11-bullseye-v20240709");
        m.apply(
            PUBLIC_PROJECT,
            Effect::Deprecate {
                image: "debian-11-bullseye-v20240709".into(),
                state: "OBSOLETE".into(),
                replacement: None,
            },
        );
        let e =
            m.resolve_image("p", "f", "projects/debian-cloud/global/images/debian-11-bullseye-v20240709").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(m.resolve_image("p", "f", "global/images/nope").unwrap_err().status, 404);
    }
}
