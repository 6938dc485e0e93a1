//! Regions: `regions.get` answers a `compute#region` with the region's quotas, each metric's
//! `limit` and its `usage` counted from the project's instances in the region's zones, as
//! Compute reports them. The limits are reported, not enforced: a bulkInsert past them still
//! succeeds (quota errors come from [`immut_fake::Fault::OperationError`] with
//! `QUOTA_EXCEEDED`).

use std::collections::BTreeMap;
use std::time::Duration;

use immut_fake::Env;
use serde_json::{Value, json};

use super::error::GceError;
use super::model::{Model, region_of};
use crate::readiness::vcpus_of;

/// The limits every region has until a test sets another ([`super::FakeGce::set_quota`]):
/// generous, so that only a test that means to run out does.
pub const DEFAULT_LIMITS: &[(&str, f64)] =
    &[("CPUS", 2400.0), ("INSTANCES", 1000.0), ("DISKS_TOTAL_GB", 409_600.0), ("IN_USE_ADDRESSES", 1000.0)];

/// The zones the fake gives every region.
const ZONES: &[&str] = &["a", "b", "c"];

/// Whether `region` has the shape of a Compute region (`us-central1`, `europe-west4`).
pub fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() == 2
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && parts[1].bytes().any(|b| b.is_ascii_digit())
}

/// What the project's instances in `region` use, by metric. A stopped (`TERMINATED`)
/// instance holds no CPUs but still counts as an instance and keeps its disk and address.
fn usage(m: &mut Model, project: &str, region: &str, now: Duration) -> BTreeMap<&'static str, f64> {
    let mut used: BTreeMap<&'static str, f64> = DEFAULT_LIMITS.iter().map(|(k, _)| (*k, 0.0)).collect();
    for vm in m.project(project).instances.values().filter(|vm| region_of(&vm.zone) == region) {
        *used.entry("INSTANCES").or_default() += 1.0;
        *used.entry("DISKS_TOTAL_GB").or_default() += vm.disk_size_gb as f64;
        if vm.external_ip.is_some() {
            *used.entry("IN_USE_ADDRESSES").or_default() += 1.0;
        }
        if vm.status(now) != "TERMINATED" {
            *used.entry("CPUS").or_default() += vcpus_of(&vm.machine_type).unwrap_or(1) as f64;
        }
    }
    used
}

/// The `compute#region` of `region` in `project`, or 404 for a name that is not a region.
pub fn region_json(env: &Env, m: &mut Model, project: &str, region: &str, now: Duration) -> Result<Value, GceError> {
    if !valid_region(region) {
        return Err(GceError::not_found(&format!("projects/{project}/regions/{region}")));
    }
    let used = usage(m, project, region, now);
    let quotas: Vec<Value> = DEFAULT_LIMITS
        .iter()
        .map(|(metric, default)| {
            let key = (project.to_owned(), region.to_owned(), (*metric).to_owned());
            let limit = m.quota_limits.get(&key).copied().unwrap_or(*default);
            json!({ "metric": metric, "limit": limit, "usage": used.get(metric).copied().unwrap_or(0.0) })
        })
        .collect();
    let base = format!("{}/compute/v1/projects/{project}", env.base_url);
    // A stable id per region name: Compute's ids are opaque uint64s, sent as strings.
    let id = region.bytes().fold(1_000u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    Ok(json!({
        "kind": "compute#region",
        "id": id.to_string(),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": region,
        "description": region,
        "status": "UP",
        "zones": ZONES.iter().map(|z| format!("{base}/zones/{region}-{z}")).collect::<Vec<_>>(),
        "quotas": quotas,
        "selfLink": format!("{base}/regions/{region}"),
        "supportsPzs": false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_named_like_compute_s() {
        assert!(valid_region("us-central1") && valid_region("europe-west4") && valid_region("me-central2"));
        assert!(!valid_region("us-central1-a") && !valid_region("us") && !valid_region("US-central1"));
    }
}
