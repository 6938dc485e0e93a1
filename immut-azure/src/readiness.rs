//! Rollback readiness on Azure: whether a release's image version can still be launched (a
//! gallery image version must exist and be `Succeeded`; a marketplace version must exist and
//! not be `Deprecated`), what will soon stop it (an end-of-life date, a scheduled
//! deprecation), and how many VMs a relaunch has room for under the location's usages.

use azure_mgmt_compute::models;
use immut_core::Readiness;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The vCPUs of a VM size, read from its name: `Standard_D4s_v5` has 4, `Standard_B1ms` 1,
/// `Standard_E2as_v5` 2. `None` for a name of another shape, whose cores are then not counted.
pub(crate) fn vcpus_of(size: &str) -> Option<u64> {
    let rest = size.split_once('_')?.1;
    let digits: String = rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// A gallery image version (`None`: it is not there): missing or not `Succeeded` blocks; an
/// `endOfLifeDate` in the past warns (Azure still launches it); `excludeFromLatest` does not
/// matter to a release, which names its version.
pub(crate) fn gallery_readiness(reference: &str, version: Option<&Value>, now: OffsetDateTime) -> Readiness {
    let Some(version) = version else {
        return Readiness::blocked(format!("gallery image version {reference} no longer exists (deleted)"));
    };
    let state = version.pointer("/properties/provisioningState").and_then(Value::as_str).unwrap_or("Succeeded");
    if state != "Succeeded" {
        return Readiness::blocked(format!("gallery image version {reference} is {state}, not Succeeded"));
    }
    let mut readiness = Readiness::ready();
    let end = version.pointer("/properties/publishingProfile/endOfLifeDate").and_then(Value::as_str);
    if let Some(end) = end
        && let Ok(when) = OffsetDateTime::parse(end, &Rfc3339)
        && when <= now
    {
        readiness = readiness.with_warning(format!(
            "gallery image version {reference} reached its end of life on {end}: it still launches, until it is deleted"
        ));
    }
    readiness
}

/// A marketplace image version (`None`: it is not there): missing or `Deprecated` blocks;
/// `ScheduledForDeprecation` warns, with the date where the answer gives it.
pub(crate) fn marketplace_readiness(reference: &str, version: Option<&Value>) -> Readiness {
    let Some(version) = version else {
        return Readiness::blocked(format!("marketplace image {reference} is no longer offered in this location"));
    };
    let status = version.pointer("/properties/imageDeprecationStatus");
    match status.and_then(|s| s.get("imageState")).and_then(Value::as_str) {
        Some("Deprecated") => Readiness::blocked(format!("marketplace image {reference} is Deprecated")),
        Some("ScheduledForDeprecation") => {
            let when = status
                .and_then(|s| s.get("scheduledDeprecationTime"))
                .and_then(Value::as_str)
                .map(|t| format!(" on {t}"))
                .unwrap_or_default();
            Readiness::ready().with_warning(format!("marketplace image {reference} is scheduled for deprecation{when}"))
        }
        _ => Readiness::ready(),
    }
}

/// How many VMs of `size` the location's usages leave room for: the least of what
/// `virtualMachines` and the total regional vCPUs (`cores`) allow. `None` when neither is
/// reported.
pub(crate) fn room(usages: &[models::Usage], size: &str) -> Option<usize> {
    let left = |name: &str| {
        usages
            .iter()
            .find(|u| u.name.value.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(name)))
            .map(|u| (u.limit - i64::from(u.current_value)).max(0) as u64)
    };
    let by_cores = vcpus_of(size).and_then(|v| Some(left("cores")? / v));
    [left("virtualMachines"), by_cores].into_iter().flatten().min().map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(name: &str, current: i32, limit: i64) -> models::Usage {
        serde_json::from_value(json!({
            "unit": "Count", "currentValue": current, "limit": limit,
            "name": { "value": name, "localizedValue": name },
        }))
        .unwrap()
    }

    #[test]
    fn sizes_give_their_cpus() {
        for (size, cpus) in [
            ("Standard_D4s_v5", Some(4)),
            ("Standard_B1ms", Some(1)),
            ("Standard_E2as_v5", Some(2)),
            ("Standard_F16s_v2", Some(16)),
            ("Basic_A0", None),
            ("weird", None),
        ] {
            assert_eq!(vcpus_of(size), cpus, "{size}");
        }
    }

    #[test]
    fn a_missing_version_blocks_and_an_end_of_life_in_the_past_warns() {
        let now = OffsetDateTime::parse("2026-12-01T00:00:00Z", &Rfc3339).unwrap();
        let r = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/gal/images/web/versions/1.0.0";
        assert!(gallery_readiness(r, None, now).blocking.unwrap().contains("no longer exists"));
        let version = |eol: &str, exclude: bool| {
            json!({ "properties": { "provisioningState": "Succeeded",
                "publishingProfile": { "endOfLifeDate": eol, "excludeFromLatest": exclude } } })
        };
        assert_eq!(gallery_readiness(r, Some(&version("2027-01-01T00:00:00Z", true)), now), Readiness::ready());
        let old = gallery_readiness(r, Some(&version("2026-06-01T00:00:00+00:00", false)), now);
        assert!(!old.is_blocked() && old.warnings[0].contains("end of life on 2026-06-01"), "{old:?}");
        let failed = json!({ "properties": { "provisioningState": "Failed" } });
        assert!(gallery_readiness(r, Some(&failed), now).is_blocked());
    }

    #[test]
    fn marketplace_deprecation_blocks_and_a_schedule_warns() {
        let urn = "Canonical:ubuntu-24_04-lts:server:24.04.202409120";
        let state = |s: &str| json!({ "properties": { "imageDeprecationStatus": { "imageState": s } } });
        assert_eq!(marketplace_readiness(urn, Some(&state("Active"))), Readiness::ready());
        assert!(marketplace_readiness(urn, Some(&state("Deprecated"))).is_blocked());
        assert_eq!(marketplace_readiness(urn, Some(&state("ScheduledForDeprecation"))).warnings.len(), 1);
        assert!(marketplace_readiness(urn, None).is_blocked());
    }

    #[test]
    fn room_is_the_least_the_usages_allow() {
        let usages = [usage("cores", 10, 20), usage("virtualMachines", 5, 25000), usage("standardDSv5Family", 0, 10)];
        assert_eq!(room(&usages, "Standard_D4s_v5"), Some(2), "10 cores left, 4 each");
        assert_eq!(room(&usages[1..2], "Standard_D4s_v5"), Some(24995));
        assert_eq!(room(&[usage("cores", 30, 20)], "Standard_B1s"), Some(0));
        assert_eq!(room(&[], "Standard_B1s"), None);
    }
}
