//! The model: ARM resources (virtual machines with their NICs and OS disks, load balancers,
//! images) and how they behave over time. No HTTP here (that is the wire's job).

use std::collections::BTreeMap;
use std::time::Duration;

use immut_fake::{Fault, Faults, Timeline};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ArmError;

/// How long things take in the fake, how big pages are, and which token it wants. Every
/// timing is in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// A new VM is `Creating` this long, then `Succeeded` (its create operation too).
    pub create_ms: u64,
    /// After provisioning succeeded, the VM is `PowerState/starting` this long, then running.
    pub boot_ms: u64,
    /// A running VM passes its load balancer's health probe after this long.
    pub healthy_after_ms: u64,
    /// A deleted VM is `Deleting` this long, then gone with its NIC and disk.
    pub delete_ms: u64,
    /// A deallocation takes this long.
    pub deallocate_ms: u64,
    /// A load-balancer update is `Updating` this long.
    pub lb_update_ms: u64,
    /// The `Retry-After` (seconds) sent with every long-running operation's answers.
    pub retry_after_s: u64,
    /// VMs per page of a list; a longer list carries a `nextLink`.
    pub page_size: u64,
    /// The bearer token every request must carry; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// ARM's per-subscription token buckets, `[size, refill per second]`, for reads (GET),
    /// writes (PUT, PATCH, POST) and deletes: a request finding its bucket empty gets a 429
    /// with `Retry-After`, and every answer reports what is left in
    /// `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`. The defaults are ARM's
    /// (250/25, 200/10, 200/10).
    pub buckets: [[u64; 2]; 3],
    /// Whether long-running operations name their status resource in `Azure-AsyncOperation`
    /// (the default, as Compute and Network do). ARM's resource-provider contract makes the
    /// header optional: without it a PUT's progress is the resource's own `provisioningState`
    /// (GET the resource), and a DELETE's or POST's is its `Location` (202 until it is done).
    pub async_operation_header: bool,
    /// How long `LoadBalancerLoadBalancingRules_Health` takes to compute: 0 answers 200 with
    /// the result at once; more answers 202 with a `Location` (and `Azure-AsyncOperation`
    /// unless [`Settings::async_operation_header`] is off) that answers 202 until then and 200
    /// with the result after (the reference's two answers, `final-state-via: location`).
    pub rule_health_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            create_ms: 100,
            boot_ms: 40,
            healthy_after_ms: 60,
            delete_ms: 80,
            deallocate_ms: 60,
            lb_update_ms: 30,
            retry_after_s: 1,
            page_size: 50,
            token: None,
            buckets: [[250, 25], [200, 10], [200, 10]],
            async_operation_header: true,
            rule_health_ms: 0,
        }
    }
}

/// Where a resource lives: subscription and resource group (as given; compared without case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Subscription id, lowercase.
    pub sub: String,
    /// Resource group, lowercase.
    pub group: String,
    /// Resource name, lowercase.
    pub name: String,
}

impl Key {
    /// A key; ARM names are case-insensitive.
    pub fn new(sub: &str, group: &str, name: &str) -> Self {
        Key { sub: sub.to_ascii_lowercase(), group: group.to_ascii_lowercase(), name: name.to_ascii_lowercase() }
    }
}

/// A virtual machine.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Name as given.
    pub name: String,
    /// Resource group as given.
    pub group: String,
    /// Subscription.
    pub sub: String,
    /// Location.
    pub location: String,
    /// `vmId`.
    pub vm_id: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Availability zones.
    pub zones: Vec<String>,
    /// `hardwareProfile.vmSize`.
    pub size: String,
    /// `storageProfile.imageReference` as given.
    pub image: Value,
    /// The image as a string (a gallery version id, or `publisher:offer:sku:version`).
    pub image_text: String,
    /// The OS disk's name.
    pub disk: String,
    /// The NIC's name.
    pub nic: String,
    /// The subnet id.
    pub subnet: String,
    /// The private IP.
    pub ip: String,
    /// `osProfile` as given (the admin password, if any, is not kept).
    pub os_profile: Value,
    /// `Creating -> Succeeded`, or `-> Failed`.
    pub provisioning: Timeline<&'static str>,
    /// The code and message of a failed provisioning.
    pub failure: Option<(String, String)>,
    /// When a delete started.
    pub deleting: Option<Duration>,
    /// When a deallocation started, and when a start started after it.
    pub deallocated: Option<Duration>,
    /// Changes with every update.
    pub etag: String,
    /// Updates made in place (PUT over an existing VM, PATCH): a test for immutability reads it.
    pub updates: u32,
    /// Creation time (model time).
    pub created: Duration,
    /// Extensions by name: each as its resource JSON (`location`, `properties`, `tags`).
    pub extensions: BTreeMap<String, Value>,
}

impl Vm {
    /// `provisioningState` at `now`.
    pub fn provisioning_state(&self, now: Duration) -> &'static str {
        if self.deleting.is_some() { "Deleting" } else { self.provisioning.at(now) }
    }

    /// The power state code (`running`, `starting`, `deallocated`, ...) at `now`, and when it
    /// started.
    pub fn power(&self, now: Duration, s: &Settings) -> (&'static str, Duration) {
        match self.provisioning.at(now) {
            "Creating" => return ("starting", self.provisioning.start()),
            "Failed" => return ("stopped", self.provisioning.end()),
            _ => {}
        }
        if let Some(at) = self.deallocated {
            let done = at + Duration::from_millis(s.deallocate_ms);
            return if now < done { ("deallocating", at) } else { ("deallocated", done) };
        }
        if let Some(at) = self.deleting {
            return ("stopping", at);
        }
        let up = self.provisioning.end() + Duration::from_millis(s.boot_ms);
        if now < up { ("starting", self.provisioning.end()) } else { ("running", up) }
    }
}

/// A network interface made for a VM.
#[derive(Debug, Clone)]
pub struct Nic {
    /// Name.
    pub name: String,
    /// Group as given.
    pub group: String,
    /// Location.
    pub location: String,
    /// The VM it is attached to, while it is.
    pub vm: Option<String>,
    /// Its private IP.
    pub ip: String,
    /// Its subnet.
    pub subnet: String,
    /// Whether it goes with the VM (`deleteOption: Delete`).
    pub delete_with_vm: bool,
    /// The name of its IP configuration.
    pub ip_config: String,
}

/// A managed disk made for a VM.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Name.
    pub name: String,
    /// Group as given.
    pub group: String,
    /// Location.
    pub location: String,
    /// The VM it is attached to, while it is.
    pub vm: Option<String>,
    /// Size.
    pub size_gb: i64,
    /// Whether it goes with the VM (`deleteOption: Delete`).
    pub delete_with_vm: bool,
}

/// A load balancer, kept as its resource JSON (what was put, normalized).
#[derive(Debug, Clone)]
pub struct Lb {
    /// Name as given.
    pub name: String,
    /// Group as given.
    pub group: String,
    /// Location.
    pub location: String,
    /// `sku`.
    pub sku: Value,
    /// Tags.
    pub tags: Value,
    /// `properties`, without `provisioningState`.
    pub properties: Map<String, Value>,
    /// Changes with every update; every child resource reports it too.
    pub etag: String,
    /// `Updating -> Succeeded`.
    pub life: Timeline<&'static str>,
}

/// A published gallery image version, or a marketplace image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its id (gallery) or `publisher:offer:sku:version` (marketplace), as published.
    pub id: String,
    /// Location.
    pub location: String,
    /// A gallery version's `publishingProfile.endOfLifeDate`, as given.
    pub end_of_life: Option<String>,
    /// A gallery version's `publishingProfile.excludeFromLatest`.
    pub exclude_from_latest: bool,
}

impl Image {
    /// A published image with no end of life.
    pub fn new(id: &str, location: &str) -> Self {
        Image { id: id.to_owned(), location: location.to_owned(), end_of_life: None, exclude_from_latest: false }
    }
}

/// What an operation does when it ends.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Removes a VM, and its NIC and disk where their deleteOption says so.
    DeleteVm(Key),
    /// Nothing beyond its status.
    None,
}

/// What the `Location` of a finished operation answers besides its status.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Nothing: 204.
    Nothing,
    /// The health of a load-balancing rule, as it is when asked.
    RuleHealth {
        /// Subscription.
        sub: String,
        /// Resource group, as given.
        group: String,
        /// Load balancer, as given.
        lb: String,
        /// Rule, as given.
        rule: String,
    },
}

/// A long-running operation, as its status resource reports it.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its id.
    pub id: String,
    /// `Microsoft.Compute` or `Microsoft.Network`.
    pub namespace: &'static str,
    /// The location in its URL.
    pub location: String,
    /// `InProgress -> Succeeded` (or `Failed`).
    pub life: Timeline<&'static str>,
    /// The error a failed operation carries.
    pub error: Option<(String, String)>,
    /// Its effect, until applied.
    pub effect: Option<Effect>,
    /// The resource it acts on (an ARM id).
    pub resource: String,
    /// What its `Location` answers once it is done.
    pub outcome: Outcome,
}

/// Everything the fake knows.
#[derive(Debug)]
pub struct Model {
    /// Timings.
    pub settings: Settings,
    /// VMs.
    pub vms: BTreeMap<Key, Vm>,
    /// NICs.
    pub nics: BTreeMap<Key, Nic>,
    /// Disks.
    pub disks: BTreeMap<Key, Disk>,
    /// Load balancers.
    pub lbs: BTreeMap<Key, Lb>,
    /// Images, by lowercase id.
    pub images: BTreeMap<String, Image>,
    /// Operations by id.
    pub ops: BTreeMap<String, Op>,
    /// Usage limits set by the tests, by (lowercase location, usage name); every other usage
    /// has its default (see `usage.rs`).
    pub usage_limits: BTreeMap<(String, String), i64>,
    /// Tokens left in each subscription's read, write and delete bucket, and when they were
    /// last counted.
    pub buckets: BTreeMap<String, [(f64, Duration); 3]>,
    next: u64,
}

/// The marketplace images every subscription may use, as `publisher:offer:sku:version`.
pub const MARKETPLACE: &[&str] = &[
    "Canonical:ubuntu-24_04-lts:server:24.04.202409120",
    "Canonical:ubuntu-24_04-lts:server:24.04.202410010",
    "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.202409110",
    "Debian:debian-12:12-gen2:0.20240901.1851",
];

/// VM sizes the fake knows (the others are `InvalidParameter`, as in a region without them).
pub const SIZES: &[&str] = &[
    "Standard_B1s",
    "Standard_B1ms",
    "Standard_B2s",
    "Standard_B2ms",
    "Standard_D2s_v5",
    "Standard_D4s_v5",
    "Standard_D2as_v5",
    "Standard_F2s_v2",
    "Standard_E2s_v5",
];

/// Whether `name` is a valid Linux VM name: 1 to 64 of letters, digits, `-`, `_` and `.`,
/// not ending in `.` or `-`.
pub fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.ends_with('.')
        && !name.ends_with('-')
}

/// Checks tags against ARM's rules: at most 50, names up to 512 characters without
/// `<>%&\?/`, values up to 256.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ArmError> {
    if tags.len() > 50 {
        return Err(ArmError::new(
            400,
            "InvalidTemplate",
            format!("The resource has {} tags; at most 50 tags are allowed.", tags.len()),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 512 {
            return Err(ArmError::new(
                400,
                "InvalidTagNameCharacters",
                format!("The tag name '{}' has {} characters; tag names have 1 to 512.", k, k.len()),
            ));
        }
        if k.contains(['<', '>', '%', '&', '\\', '?', '/']) {
            return Err(ArmError::new(
                400,
                "InvalidTagNameCharacters",
                format!("The tag names '{k}' have reserved characters '<,>,%,&,\\,?,/' or control characters."),
            ));
        }
        if v.len() > 256 {
            return Err(ArmError::new(
                400,
                "InvalidTagValueLength",
                format!("The tag value of '{k}' has {} characters; tag values have at most 256.", v.len()),
            ));
        }
    }
    Ok(())
}

impl Default for Model {
    fn default() -> Self {
        Model::new(Settings::default())
    }
}

impl Model {
    /// An empty model with the marketplace images.
    pub fn new(settings: Settings) -> Self {
        let mut m = Model {
            settings,
            vms: BTreeMap::new(),
            nics: BTreeMap::new(),
            disks: BTreeMap::new(),
            lbs: BTreeMap::new(),
            images: BTreeMap::new(),
            ops: BTreeMap::new(),
            usage_limits: BTreeMap::new(),
            buckets: BTreeMap::new(),
            next: 0,
        };
        for urn in MARKETPLACE {
            m.images.insert(urn.to_ascii_lowercase(), Image::new(urn, "*"));
        }
        m
    }

    /// Forgets everything but the settings.
    pub fn reset(&mut self) {
        *self = Model::new(self.settings.clone());
    }

    /// Takes a token from a subscription's bucket (`class`: 0 reads, 1 writes, 2 deletes):
    /// `Ok(left)`, or `Err(seconds until one is back)` when it is empty.
    pub fn take_token(&mut self, sub: &str, class: usize, now: Duration) -> Result<u64, u64> {
        let config = self.settings.buckets;
        let entry =
            self.buckets.entry(sub.to_ascii_lowercase()).or_insert_with(|| config.map(|[size, _]| (size as f64, now)));
        let [size, refill] = config[class];
        let (left, at) = &mut entry[class];
        *left = (*left + now.saturating_sub(*at).as_secs_f64() * refill as f64).min(size as f64);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(*left as u64)
        } else {
            Err(((1.0 - *left) / (refill.max(1) as f64)).ceil().max(1.0) as u64)
        }
    }

    /// A fresh number.
    pub fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// A fresh GUID-shaped id.
    pub fn guid(&mut self) -> String {
        let n = self.next();
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            (h >> 32) as u32,
            (h >> 16) as u16,
            (h as u16) & 0xfff,
            n & 0xfff,
            n
        )
    }

    /// A fresh etag, in ARM's quoted form.
    pub fn etag(&mut self) -> String {
        let n = self.next();
        format!("W/\"{:016x}\"", n.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    /// A fresh private IP in 10.0.0.0/16.
    pub fn ip(&mut self) -> String {
        let n = self.next() + 3;
        format!("10.0.{}.{}", n / 250, n % 250 + 4)
    }

    /// Starts an operation.
    #[allow(clippy::too_many_arguments)]
    pub fn start_op(
        &mut self,
        namespace: &'static str,
        location: &str,
        took: Duration,
        now: Duration,
        error: Option<(String, String)>,
        effect: Effect,
        resource: String,
    ) -> String {
        let id = self.guid();
        let life = Timeline::new(now, [("InProgress", took)], if error.is_some() { "Failed" } else { "Succeeded" });
        self.ops.insert(
            id.clone(),
            Op {
                id: id.clone(),
                namespace,
                location: location.to_owned(),
                life,
                error,
                effect: Some(effect),
                resource,
                outcome: Outcome::Nothing,
            },
        );
        id
    }

    /// Applies the effects of the operations that are done at `now`, in the order they end.
    pub fn tick(&mut self, now: Duration) {
        let mut due: Vec<(Duration, Effect)> = self
            .ops
            .values_mut()
            .filter(|op| op.effect.is_some() && op.life.is_done(now))
            .map(|op| (op.life.end(), op.effect.take().expect("filtered")))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        for (_, effect) in due {
            if let Effect::DeleteVm(key) = effect
                && let Some(vm) = self.vms.remove(&key)
            {
                for (map_key, delete) in
                    [(Key::new(&key.sub, &key.group, &vm.nic), true), (Key::new(&key.sub, &key.group, &vm.disk), false)]
                {
                    if delete {
                        if self.nics.get(&map_key).is_some_and(|n| n.delete_with_vm) {
                            self.nics.remove(&map_key);
                        } else if let Some(n) = self.nics.get_mut(&map_key) {
                            n.vm = None;
                        }
                    } else if self.disks.get(&map_key).is_some_and(|d| d.delete_with_vm) {
                        self.disks.remove(&map_key);
                    } else if let Some(d) = self.disks.get_mut(&map_key) {
                        d.vm = None;
                    }
                }
            }
        }
    }

    /// Whether a VM passes its load balancer's health probe at `now`.
    pub fn healthy(&self, vm: &Vm, now: Duration, faults: &Faults) -> bool {
        let (power, since) = vm.power(now, &self.settings);
        if power != "running" || vm.deleting.is_some() {
            return false;
        }
        let sick =
            |target: &str| faults.covers("LoadBalancerLoadBalancingRules_Health", target, |f| *f == Fault::Unhealthy);
        now.saturating_sub(since) >= Duration::from_millis(self.settings.healthy_after_ms)
            && !sick(&vm.name)
            && !sick(&vm.image_text)
    }

    /// The VM with a private IP, in a subscription.
    pub fn vm_by_ip(&self, sub: &str, ip: &str) -> Option<&Vm> {
        self.vms.values().find(|vm| vm.sub.eq_ignore_ascii_case(sub) && vm.ip == ip)
    }

    /// An image by its id or URN (any case).
    pub fn image(&self, id: &str) -> Option<&Image> {
        self.images.get(&id.trim().to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_follow_arm_rules() {
        assert!(valid_vm_name("web-1a2b3c4d-000") && valid_vm_name("a.b_c"));
        assert!(!valid_vm_name("web-") && !valid_vm_name("") && !valid_vm_name(&"x".repeat(65)));
        assert!(!valid_vm_name("web vm"));
        let mut tags: BTreeMap<String, String> = (0..50).map(|i| (format!("t{i}"), "v".into())).collect();
        assert!(check_tags(&tags).is_ok());
        tags.insert("one-more".into(), "v".into());
        assert_eq!(check_tags(&tags).unwrap_err().status, 400);
        let key = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(check_tags(&key(&"k".repeat(512), &"v".repeat(256))).is_ok());
        assert_eq!(check_tags(&key(&"k".repeat(513), "v")).unwrap_err().code, "InvalidTagNameCharacters");
        assert_eq!(check_tags(&key("k", &"v".repeat(257))).unwrap_err().code, "InvalidTagValueLength");
        assert_eq!(check_tags(&key("a/b", "v")).unwrap_err().code, "InvalidTagNameCharacters");
    }

    #[test]
    fn a_deleted_vm_takes_its_nic_and_disk_when_told_to() {
        let mut m = Model::default();
        let now = Duration::ZERO;
        for (name, delete) in [("a", true), ("b", false)] {
            let key = Key::new("s", "rg", name);
            let ip = m.ip();
            m.vms.insert(
                key.clone(),
                Vm {
                    name: name.into(),
                    group: "rg".into(),
                    sub: "s".into(),
                    location: "westeurope".into(),
                    vm_id: String::new(),
                    tags: BTreeMap::new(),
                    zones: Vec::new(),
                    size: "Standard_B2s".into(),
                    image: Value::Null,
                    image_text: String::new(),
                    disk: format!("{name}-disk"),
                    nic: format!("{name}-nic"),
                    subnet: String::new(),
                    ip,
                    os_profile: Value::Null,
                    provisioning: Timeline::settled(now, "Succeeded"),
                    failure: None,
                    deleting: None,
                    deallocated: None,
                    etag: String::new(),
                    updates: 0,
                    created: now,
                    extensions: BTreeMap::new(),
                },
            );
            m.nics.insert(
                Key::new("s", "rg", &format!("{name}-nic")),
                Nic {
                    name: format!("{name}-nic"),
                    group: "rg".into(),
                    location: "westeurope".into(),
                    vm: Some(name.into()),
                    ip: String::new(),
                    subnet: String::new(),
                    delete_with_vm: delete,
                    ip_config: "ipconfig1".into(),
                },
            );
            m.disks.insert(
                Key::new("s", "rg", &format!("{name}-disk")),
                Disk {
                    name: format!("{name}-disk"),
                    group: "rg".into(),
                    location: "westeurope".into(),
                    vm: Some(name.into()),
                    size_gb: 30,
                    delete_with_vm: delete,
                },
            );
            m.start_op(
                "Microsoft.Compute",
                "westeurope",
                Duration::from_millis(10),
                now,
                None,
                Effect::DeleteVm(key),
                String::new(),
            );
        }
        m.tick(Duration::from_millis(5));
        assert_eq!(m.vms.len(), 2, "not yet");
        m.tick(Duration::from_millis(10));
        assert!(m.vms.is_empty());
        let left: Vec<&str> = m.nics.values().map(|n| n.name.as_str()).collect();
        assert_eq!(left, vec!["b-nic"], "the NIC without deleteOption Delete leaks, visibly");
        assert_eq!(m.disks.values().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["b-disk"]);
        assert!(m.nics.values().all(|n| n.vm.is_none()));
    }
}
