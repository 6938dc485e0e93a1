//! Guardrail policies for Google Cloud.
//!
//! - [`deployer_role`]: a custom role (the `Role` resource of the IAM API, as `gcloud iam roles
//!   create --file` takes it) with the permissions of every call in [`CALLS`], the one table of
//!   the Compute API methods this crate calls, by the names it paces, counts and maps errors
//!   under (a test scans the sources for them), plus the state bucket's object permissions.
//! - [`deny_policy`]: an IAM deny policy (IAM v2 `Policy`, `gcloud iam policies create`) that
//!   refuses every principal but the exempt ones (the deployer's service account) the changes
//!   to running instances: stop, start, reset, suspend, resume, label, metadata, machine type,
//!   service account, network tags, disks, scheduling, and (for launches that carry the managed
//!   labels) instance creation.
//!
//! **Labels are not tags.** Deny conditions read resource *tags* (Resource Manager tags bound to
//! the resource, `resource.matchTag(...)`), never labels. So a deny rule cannot tell a managed
//! instance by its `immut-*` labels, nor a provenance label edit from any other label edit:
//! `instances.setLabels` is refused as a whole, and creating an instance is refused whatever
//! labels it carries. The rule applies either to every instance under the policy's attachment
//! point (a project or folder that holds only immut-managed services, the default) or, with
//! [`GcpGuardrailOptions::managed_tag`], to instances bound to a tag value such as
//! `my-project/immut-managed/true`, which someone must bind (immut sets labels, not tags).
//! Forged provenance labels on an instance created outside the policy's reach still fail the
//! audit's signature check.

use immut_core::guardrails::{
    Guardrail, GuardrailSet, MANAGED_KEY, PROVENANCE_KEYS, Principal, StateAccess, StateLocation, state_accesses,
};
use immut_core::{Error, Result};
use serde_json::{Value, json};

/// One Compute API method this crate calls, with the IAM permissions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The method as paced, counted and named in errors (`instances.bulkInsert`).
    pub method: &'static str,
    /// The permissions the method checks.
    pub permissions: &'static [&'static str],
    /// Only the demo stack ([`crate::stack`]) calls it.
    pub stack: bool,
}

const fn call(method: &'static str, permissions: &'static [&'static str]) -> Call {
    Call { method, permissions, stack: false }
}

const fn stack(method: &'static str, permissions: &'static [&'static str]) -> Call {
    Call { method, permissions, stack: true }
}

/// Every Compute API method this crate calls.
pub const CALLS: &[Call] = &[
    call("images.get", &["compute.images.get"]),
    call("images.getFromFamily", &["compute.images.getFromFamily"]),
    // A launch creates the instance and its boot disk from the image, labels it, writes its
    // metadata (provenance, startup script), sets network tags and a service account, and
    // attaches it to a subnetwork, with an external address when asked.
    call(
        "instances.bulkInsert",
        &[
            "compute.instances.create",
            "compute.disks.create",
            "compute.images.useReadOnly",
            "compute.instances.setLabels",
            "compute.instances.setMetadata",
            "compute.instances.setTags",
            "compute.instances.setServiceAccount",
            "compute.subnetworks.use",
            "compute.subnetworks.useExternalIp",
            "compute.networks.use",
            "iam.serviceAccounts.actAs",
        ],
    ),
    call("instances.list", &["compute.instances.list"]),
    call("instances.get", &["compute.instances.get"]),
    call("instances.setLabels", &["compute.instances.setLabels"]),
    call("instances.delete", &["compute.instances.delete"]),
    call("disks.get", &["compute.disks.get"]),
    // Rollback readiness: the regions' quotas, for the room a relaunch has.
    call("regions.get", &["compute.regions.get"]),
    call("zoneOperations.get", &["compute.zoneOperations.get"]),
    call("globalOperations.get", &["compute.globalOperations.get"]),
    stack("instanceGroups.get", &["compute.instanceGroups.get"]),
    call("instanceGroups.listInstances", &["compute.instanceGroups.list"]),
    call("instanceGroups.addInstances", &["compute.instanceGroups.update", "compute.instances.use"]),
    call("instanceGroups.removeInstances", &["compute.instanceGroups.update", "compute.instances.use"]),
    call("backendServices.get", &["compute.backendServices.get"]),
    call("backendServices.getHealth", &["compute.backendServices.get"]),
    call("backendServices.patch", &["compute.backendServices.update"]),
    stack("instanceGroups.insert", &["compute.instanceGroups.create"]),
    stack("backendServices.insert", &["compute.backendServices.create", "compute.healthChecks.useReadOnly"]),
];

/// The changes to running instances the deny policy refuses, in the deny policies' v2
/// permission form (`compute.googleapis.com/instances.stop`).
pub const DENIED: &[&str] = &[
    "compute.googleapis.com/instances.stop",
    "compute.googleapis.com/instances.start",
    "compute.googleapis.com/instances.reset",
    "compute.googleapis.com/instances.suspend",
    "compute.googleapis.com/instances.resume",
    "compute.googleapis.com/instances.setLabels",
    "compute.googleapis.com/instances.setMetadata",
    "compute.googleapis.com/instances.setMachineType",
    "compute.googleapis.com/instances.setServiceAccount",
    "compute.googleapis.com/instances.setTags",
    "compute.googleapis.com/instances.setScheduling",
    "compute.googleapis.com/instances.attachDisk",
    "compute.googleapis.com/instances.detachDisk",
    "compute.googleapis.com/instances.update",
    "compute.googleapis.com/instances.create",
];

/// Where the documents apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcpGuardrailOptions {
    /// The state store, `gs://bucket/prefix`: the deployer may read, list and create objects.
    pub state: Option<String>,
    /// Also the demo stack's permissions.
    pub stack: bool,
    /// Principals the deny policy does not apply to, in IAM v2 form
    /// (`principal://iam.googleapis.com/projects/-/serviceAccounts/deployer@p.iam.gserviceaccount.com`).
    pub exempt_principals: Vec<String>,
    /// A namespaced tag value (`my-project/immut-managed/true`) that limits the deny to
    /// instances bound to it; without it the deny covers every instance under its attachment
    /// point.
    pub managed_tag: Option<String>,
}

/// The deployer's custom role.
pub fn deployer_role(options: &GcpGuardrailOptions) -> Result<Value> {
    let mut permissions: Vec<String> = CALLS
        .iter()
        .filter(|c| options.stack || !c.stack)
        .flat_map(|c| c.permissions.iter().map(|p| (*p).to_owned()))
        .collect();
    if let Some(url) = &options.state {
        StateLocation::parse(url, "gs")?;
        permissions.extend(state_accesses().into_iter().map(|a| {
            match a {
                StateAccess::Create => "storage.objects.create",
                StateAccess::Read => "storage.objects.get",
                StateAccess::List => "storage.objects.list",
            }
            .to_owned()
        }));
    }
    permissions.sort();
    permissions.dedup();
    Ok(json!({
        "title": "immut deployer",
        "description": "What immut calls to deploy by replacement: Compute Engine instances, instance groups and backend services, and the state bucket's objects.",
        "stage": "GA",
        "includedPermissions": permissions,
    }))
}

/// The deny policy for every principal but the exempt ones.
pub fn deny_policy(options: &GcpGuardrailOptions) -> Result<Value> {
    if options.exempt_principals.is_empty() {
        return Err(Error::invalid(
            "exempt_principals",
            "a deny policy without an exception refuses the deployer too: give the deployer's service account as principal://iam.googleapis.com/projects/-/serviceAccounts/EMAIL",
        ));
    }
    if let Some(bad) =
        options.exempt_principals.iter().find(|p| !p.starts_with("principal://") && !p.starts_with("principalSet://"))
    {
        return Err(Error::invalid(
            "exempt_principals",
            format!("{bad:?} is not an IAM v2 principal identifier (principal://… or principalSet://…)"),
        ));
    }
    let mut rule = json!({
        "description": format!(
            "Only the pipeline changes immut-managed instances (labelled {MANAGED_KEY}; provenance labels {}).",
            PROVENANCE_KEYS.join(", ")
        ),
        "deniedPrincipals": ["principalSet://goog/public:all"],
        "exceptionPrincipals": options.exempt_principals,
        "deniedPermissions": DENIED,
    });
    if let Some(tag) = &options.managed_tag {
        if tag.split('/').count() != 3 || tag.contains(['\'', '"']) {
            return Err(Error::invalid(
                "managed_tag",
                format!("{tag:?}: use the namespaced tag value PARENT/KEY/VALUE"),
            ));
        }
        let (key, value) = tag.rsplit_once('/').expect("three parts");
        rule["denialCondition"] = json!({
            "title": "immut-managed instances",
            "expression": format!("resource.matchTag('{key}', '{value}')"),
        });
    }
    Ok(json!({
        "displayName": "immut: changes to managed instances only through the pipeline",
        "rules": [{ "description": "immut guardrail", "denyRule": rule }],
    }))
}

/// The documents for `principal`.
pub fn guardrails(principal: Principal, options: &GcpGuardrailOptions) -> Result<GuardrailSet> {
    let document = match principal {
        Principal::Deployer => Guardrail {
            name: "immutDeployer".into(),
            kind: "gcp-custom-role".into(),
            principal,
            apply: "gcloud iam roles create immutDeployer --project PROJECT --file deployer.json, then grant it to the deployer's service account".into(),
            refuses: vec!["every permission immut does not use (only immut_gcp::guardrails::CALLS and the state bucket's objects)".into()],
            cannot_refuse: vec![
                "custom roles grant per project or organization, not per instance: the deployer can reach every instance of the project".into(),
                "iam.serviceAccounts.actAs is granted with the role: grant the role on the project and limit actAs to the instances' service account if it matters".into(),
            ],
            document: deployer_role(options)?,
        },
        Principal::Others => Guardrail {
            name: "immut-others".into(),
            kind: "gcp-deny-policy".into(),
            principal,
            apply: "gcloud iam policies create immut-others --attachment-point=cloudresourcemanager.googleapis.com/projects/PROJECT --kind=denypolicies --policy-file=others.json".into(),
            refuses: vec![
                format!("to everyone but the exempt principals: {}", DENIED.join(", ")),
            ],
            cannot_refuse: vec![
                "deny conditions read resource tags, not labels: a provenance label edit cannot be told from another label edit, so every label edit of the covered instances is refused".into(),
                "launches are refused whatever labels they carry (a condition cannot see the new instance's labels): keep other workloads out of the attachment point, or bind the managed tag".into(),
                "deletion (allowed on purpose: watch restores the count; break-glass)".into(),
                "changes from inside the instance (root on it); OS Login and serial port access are sealed-instance settings".into(),
            ],
            document: deny_policy(options)?,
        },
    };
    Ok(GuardrailSet { provider: "gcp".into(), documents: vec![document] })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method names quoted in this crate's sources (the fake's excepted: it serves the API,
    /// it does not call it).
    fn called_methods() -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("guardrails.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let code = source.split("#[cfg(test)]").next().unwrap();
            for literal in code.split('"').skip(1).step_by(2) {
                let Some((collection, method)) = literal.split_once('.') else { continue };
                let camel = |s: &str| {
                    !s.is_empty()
                        && s.starts_with(|c: char| c.is_ascii_lowercase())
                        && s.chars().all(|c| c.is_ascii_alphanumeric())
                };
                // Compute collections are plural (`instances`, `backendServices`); field
                // names such as `resource.name` are not.
                if camel(collection) && camel(method) && collection.ends_with('s') {
                    found.insert(literal.to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_method_the_crate_calls_is_in_the_table_and_every_entry_is_called() {
        let called = called_methods();
        assert!(called.contains("instances.bulkInsert"), "the scan finds calls: {called:?}");
        for method in &called {
            assert!(
                CALLS.iter().any(|c| c.method == method),
                "the crate calls {method}, which immut_gcp::guardrails::CALLS does not list: add it with its permissions"
            );
        }
        for c in CALLS {
            assert!(called.contains(c.method), "CALLS lists {}, which the crate no longer calls", c.method);
        }
    }
}
