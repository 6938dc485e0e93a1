//! Compute usages of a location (`Usage_List`: `GET /subscriptions/{s}/providers/
//! Microsoft.Compute/locations/{location}/usages`): each quota's `limit` and its
//! `currentValue`, counted from the subscription's VMs in that location, in the reference's
//! `Usage` shape (`unit: Count`, `name.value` and `name.localizedValue`). The limits are
//! reported, not enforced: a PUT past them still succeeds (quota errors come from
//! [`immut_fake::Fault::OperationError`]).

use std::time::Duration;

use serde_json::{Value, json};

use super::model::Model;
use crate::readiness::vcpus_of;

/// `(name, localized name, default limit)` of every usage the fake reports: generous, so that
/// only a test that means to run out does ([`super::FakeArm::set_usage_limit`]).
pub const USAGES: &[(&str, &str, i64)] = &[
    ("availabilitySets", "Availability Sets", 2500),
    ("cores", "Total Regional vCPUs", 1000),
    ("virtualMachines", "Virtual Machines", 25000),
    ("virtualMachineScaleSets", "Virtual Machine Scale Sets", 2500),
];

/// The usages of `location` for subscription `sub`, keyed for paging. A deallocated VM holds
/// no cores but still counts as a VM, as on Azure.
pub fn usages(m: &Model, sub: &str, location: &str, now: Duration) -> Vec<(String, Value)> {
    let vms: Vec<_> = m
        .vms
        .values()
        .filter(|vm| vm.sub.eq_ignore_ascii_case(sub) && vm.location.eq_ignore_ascii_case(location))
        .collect();
    let cores: u64 = vms
        .iter()
        .filter(|vm| vm.power(now, &m.settings).0 != "deallocated")
        .map(|vm| vcpus_of(&vm.size).unwrap_or(1))
        .sum();
    USAGES
        .iter()
        .map(|(name, localized, default)| {
            let current = match *name {
                "cores" => cores,
                "virtualMachines" => vms.len() as u64,
                _ => 0,
            };
            let key = (location.to_ascii_lowercase(), (*name).to_owned());
            let limit = m.usage_limits.get(&key).copied().unwrap_or(*default);
            let usage = json!({
                "unit": "Count", "currentValue": current, "limit": limit,
                "name": { "value": name, "localizedValue": localized },
            });
            ((*name).to_owned(), usage)
        })
        .collect()
}
