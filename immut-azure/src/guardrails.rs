//! Guardrail policies for Azure.
//!
//! - [`deployer_role`]: a custom role definition (the form `az role definition create
//!   --role-definition` takes) with the actions of every call in [`CALLS`], the one table of
//!   the ARM operations this crate calls, by the operation ids it paces, counts and maps errors
//!   under (a test scans the sources for them), plus the state container's blob data actions.
//! - [`policy_definition`]: an Azure Policy definition (`az policy definition create --rules`,
//!   the whole `properties` object as the REST API takes it) that refuses, to every caller,
//!   what a request's content shows: a virtual machine that carries some provenance tags but
//!   not all of them (a removed or partial provenance), and VM extensions and managed run
//!   commands (the ways to patch a running VM in place).
//!
//! **What Azure Policy cannot refuse.** It evaluates the resource a PUT or PATCH would leave,
//! for every caller alike: it cannot tell the pipeline from anyone else, so it cannot refuse a
//! change of a provenance tag's value, or a launch that copies the managed tags in full. And it
//! does not see actions at all: start, power off, deallocate, restart, redeploy and the classic
//! `runCommand` are POST actions, which only RBAC decides (not granting them to anyone but the
//! deployer, who does not need them; Azure has no deny assignments a customer can create).

use immut_core::guardrails::{
    Guardrail, GuardrailSet, PROVENANCE_KEYS, Principal, StateAccess, StateLocation, state_accesses,
};
use immut_core::{Error, Result};
use serde_json::{Value, json};

/// One ARM operation this crate calls, with the RBAC actions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The operation id as paced, counted and named in errors (`VirtualMachines_CreateOrUpdate`).
    pub operation: &'static str,
    /// The RBAC actions (control plane).
    pub actions: &'static [&'static str],
}

const POLL_COMPUTE: &str = "Microsoft.Compute/locations/operations/read";
const POLL_NETWORK: &str = "Microsoft.Network/locations/operations/read";

/// Every ARM operation this crate calls (provider, traffic, health and the demo stack).
pub const CALLS: &[Call] = &[
    Call { operation: "GalleryImageVersions_Get", actions: &["Microsoft.Compute/galleries/images/versions/read"] },
    // Rollback readiness: the room a relaunch has under the location's quotas.
    Call { operation: "Usage_List", actions: &["Microsoft.Compute/locations/usages/read"] },
    Call {
        operation: "VirtualMachineImages_Get",
        actions: &["Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read"],
    },
    // The VM creates its OS disk and NIC itself (deleteOption: Delete), in the given subnet.
    Call {
        operation: "VirtualMachines_CreateOrUpdate",
        actions: &[
            "Microsoft.Compute/virtualMachines/write",
            "Microsoft.Compute/disks/write",
            "Microsoft.Network/networkInterfaces/write",
            "Microsoft.Network/networkInterfaces/join/action",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            POLL_COMPUTE,
        ],
    },
    Call { operation: "VirtualMachines_Get", actions: &["Microsoft.Compute/virtualMachines/read"] },
    Call { operation: "VirtualMachines_List", actions: &["Microsoft.Compute/virtualMachines/read"] },
    // Adoption: a PATCH of the tags only.
    Call { operation: "VirtualMachines_Update", actions: &["Microsoft.Compute/virtualMachines/write", POLL_COMPUTE] },
    Call {
        operation: "VirtualMachines_Delete",
        actions: &[
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/delete",
            POLL_COMPUTE,
        ],
    },
    Call { operation: "NetworkInterfaces_Get", actions: &["Microsoft.Network/networkInterfaces/read"] },
    Call { operation: "LoadBalancers_Get", actions: &["Microsoft.Network/loadBalancers/read"] },
    // Backend pool members are IP addresses in the VNet: joining them needs the VNet.
    Call {
        operation: "LoadBalancers_CreateOrUpdate",
        actions: &[
            "Microsoft.Network/loadBalancers/write",
            "Microsoft.Network/loadBalancers/backendAddressPools/write",
            "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
            "Microsoft.Network/virtualNetworks/join/action",
            POLL_NETWORK,
        ],
    },
    // A POST on the rule: ARM names it <type>/health/action.
    Call {
        operation: "LoadBalancerLoadBalancingRules_Health",
        actions: &["Microsoft.Network/loadBalancers/loadBalancingRules/health/action", POLL_NETWORK],
    },
];

/// Where the documents apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AzureGuardrailOptions {
    /// The role's assignable scope: `/subscriptions/ID` or `/subscriptions/ID/resourceGroups/RG`.
    pub scope: Option<String>,
    /// The state store, `az://container/prefix`: the deployer may read, list and create blobs.
    pub state: Option<String>,
}

/// The deployer's custom role definition.
pub fn deployer_role(options: &AzureGuardrailOptions) -> Result<Value> {
    let scope = options.scope.as_deref().ok_or_else(|| {
        Error::invalid(
            "scope",
            "a role definition needs its assignable scope: /subscriptions/ID/resourceGroups/RG (or /subscriptions/ID)",
        )
    })?;
    let parts: Vec<&str> = scope.trim_end_matches('/').split('/').collect();
    let valid = matches!(parts.as_slice(), ["", "subscriptions", s] if !s.is_empty())
        || matches!(parts.as_slice(), ["", "subscriptions", s, rg, g] if !s.is_empty() && rg.eq_ignore_ascii_case("resourceGroups") && !g.is_empty());
    if !valid {
        return Err(Error::invalid(
            "scope",
            format!("{scope:?}: use /subscriptions/ID or /subscriptions/ID/resourceGroups/RG"),
        ));
    }
    let mut actions: Vec<&str> = CALLS.iter().flat_map(|c| c.actions.iter().copied()).collect();
    actions.sort();
    actions.dedup();
    let mut data_actions: Vec<&str> = Vec::new();
    if let Some(url) = &options.state {
        StateLocation::parse(url, "az")?;
        data_actions.extend(state_accesses().into_iter().map(|a| match a {
            StateAccess::Create => "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
            // Listing blobs is a read of the container's blobs.
            StateAccess::Read | StateAccess::List => {
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
            }
        }));
        data_actions.sort();
        data_actions.dedup();
    }
    Ok(json!({
        "Name": "immut deployer",
        "IsCustom": true,
        "Description": "What immut calls to deploy by replacement: virtual machines, their NICs and disks, the load balancer's backend pools and rule health, and the state container's blobs.",
        "Actions": actions,
        "NotActions": [],
        "DataActions": data_actions,
        "NotDataActions": [],
        "AssignableScopes": [scope.trim_end_matches('/')],
    }))
}

/// The policy definition for every caller (see the module docs).
pub fn policy_definition() -> Value {
    let has = |k: &str| json!({ "field": format!("tags['{k}']"), "exists": "true" });
    let lacks = |k: &str| json!({ "field": format!("tags['{k}']"), "exists": "false" });
    json!({
        "displayName": "immut: managed VMs keep their whole provenance, and nothing patches a VM in place",
        "policyType": "Custom",
        "mode": "All",
        "description": format!(
            "Refuses a virtual machine that carries some of the provenance tags ({}) but not all of them, and VM extensions and run commands. It cannot refuse start, power off, deallocate or restart (actions, which RBAC alone decides), nor tell the pipeline from other callers.",
            PROVENANCE_KEYS.join(", ")
        ),
        "metadata": { "category": "Compute" },
        "parameters": {},
        "policyRule": {
            "if": {
                "anyOf": [
                    {
                        "allOf": [
                            { "field": "type", "equals": "Microsoft.Compute/virtualMachines" },
                            { "anyOf": PROVENANCE_KEYS.iter().map(|k| has(k)).collect::<Vec<_>>() },
                            { "anyOf": PROVENANCE_KEYS.iter().map(|k| lacks(k)).collect::<Vec<_>>() },
                        ]
                    },
                    {
                        "field": "type",
                        "in": ["Microsoft.Compute/virtualMachines/extensions", "Microsoft.Compute/virtualMachines/runCommands"]
                    }
                ]
            },
            "then": { "effect": "deny" }
        }
    })
}

/// The documents for `principal`.
pub fn guardrails(principal: Principal, options: &AzureGuardrailOptions) -> Result<GuardrailSet> {
    let document = match principal {
        Principal::Deployer => Guardrail {
            name: "immut deployer".into(),
            kind: "azure-role-definition".into(),
            principal,
            apply: "az role definition create --role-definition @deployer.json, then assign it to the deployer's identity at the scope".into(),
            refuses: vec!["every action immut does not use (only immut_azure::guardrails::CALLS and the state container's blobs)".into()],
            cannot_refuse: vec![
                "RBAC is allow-only: other roles the deployer holds add to this one".into(),
                "the rule-health action name follows ARM's <type>/<action>/action convention and is not checked against a live tenant".into(),
            ],
            document: deployer_role(options)?,
        },
        Principal::Others => Guardrail {
            name: "immut-managed-vms".into(),
            kind: "azure-policy-definition".into(),
            principal,
            apply: "az policy definition create --name immut-managed-vms --rules rule.json --mode All (the policyRule), then assign it to the resource group of the managed services".into(),
            refuses: vec![
                format!("to every caller: a VM with some but not all of the provenance tags ({})", PROVENANCE_KEYS.join(", ")),
                "to every caller: VM extensions and managed run commands (in-place changes)".into(),
            ],
            cannot_refuse: vec![
                "start, power off, deallocate, restart, redeploy and the classic runCommand: they are actions, not resource writes, and Azure Policy does not evaluate actions; only RBAC (not granting them) refuses them".into(),
                "a change of a provenance tag's value, or a launch that copies every managed tag: the policy sees the resulting resource for every caller alike, not who asks nor what it was before (the audit's signature check catches forged provenance)".into(),
                "deletion (denyAction can refuse deletes, but deletion is the break-glass and watch restores the count)".into(),
            ],
            document: policy_definition(),
        },
    };
    Ok(GuardrailSet { provider: "azure".into(), documents: vec![document] })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operation ids (`Resources_Verb`, letters only, so VM sizes such as `Standard_B2s` are not
    /// taken for one) quoted in this crate's sources, the fake's excepted.
    fn called_operations() -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("guardrails.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let code = source.split("#[cfg(test)]").next().unwrap();
            for literal in code.split('"').skip(1).step_by(2) {
                let Some((resource, verb)) = literal.split_once('_') else { continue };
                let pascal = |s: &str| {
                    s.starts_with(|c: char| c.is_ascii_uppercase())
                        && s.chars().any(|c| c.is_ascii_lowercase())
                        && s.chars().all(|c| c.is_ascii_alphabetic())
                };
                if pascal(resource) && pascal(verb) {
                    found.insert(literal.to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_operation_the_crate_calls_is_in_the_table_and_every_entry_is_called() {
        let called = called_operations();
        assert!(called.contains("VirtualMachines_CreateOrUpdate"), "the scan finds calls: {called:?}");
        for op in &called {
            assert!(
                CALLS.iter().any(|c| c.operation == op),
                "the crate calls {op}, which immut_azure::guardrails::CALLS does not list: add it with its actions"
            );
        }
        for c in CALLS {
            assert!(called.contains(c.operation), "CALLS lists {}, which the crate no longer calls", c.operation);
        }
    }
}
