//! Rollback readiness on Compute Engine: whether a release's image still makes disks (its
//! `deprecated.state`), and how many instances a relaunch has room for under the regions'
//! quotas (`regions.get`).

use google_cloud_compute_v1::model;
use immut_core::Readiness;

use crate::client::relative;

/// The vCPUs of a machine type, read from its name: `e2-standard-4` and `n2-highmem-8-lssd`
/// have 4 and 8, `n2-custom-6-12288` and `custom-2-4096` 6 and 2, the shared-core
/// `e2-micro`/`small`/`medium` 2, `f1-micro` and `g1-small` 1. `None` for a name of another
/// shape, whose CPUs are then not counted.
pub(crate) fn vcpus_of(machine_type: &str) -> Option<u64> {
    let name = machine_type.rsplit('/').next()?;
    let (family, rest) = name.split_once('-')?;
    match rest {
        "micro" | "small" | "medium" => Some(if matches!(family, "f1" | "g1") { 1 } else { 2 }),
        _ if family == "custom" => rest.split('-').next()?.parse().ok(),
        _ => rest.split('-').skip(1).find_map(|part| part.parse().ok()),
    }
}

/// Whether an image (`None`: it does not exist) can make disks: `OBSOLETE` and `DELETED`
/// block, as does a `FAILED` image; `DEPRECATED` still launches and warns, naming the date it
/// turns obsolete and its replacement where the deprecation gives them.
pub(crate) fn image_readiness(reference: &str, image: Option<&model::Image>) -> Readiness {
    let Some(image) = image else {
        return Readiness::blocked(format!(
            "image {reference} no longer exists (deleted, or this project may no longer use it)"
        ));
    };
    if image.status.as_ref().and_then(|s| s.name()) == Some("FAILED") {
        return Readiness::blocked(format!("image {reference} is FAILED"));
    }
    let deprecated = image.deprecated.as_ref();
    let replacement = deprecated
        .and_then(|d| d.replacement.as_deref())
        .filter(|r| !r.is_empty())
        .map(|r| format!("; its replacement is {}", relative(r)))
        .unwrap_or_default();
    match deprecated.and_then(|d| d.state.as_ref()).and_then(|s| s.name()) {
        Some(state @ ("OBSOLETE" | "DELETED")) => {
            Readiness::blocked(format!("image {reference} is {state}: GCE makes no new disks from it{replacement}"))
        }
        Some("DEPRECATED") => {
            let until = deprecated
                .and_then(|d| d.obsolete.as_deref())
                .filter(|t| !t.is_empty())
                .map(|t| format!(" until it turns OBSOLETE at {t}"))
                .unwrap_or_default();
            Readiness::ready()
                .with_warning(format!("image {reference} is DEPRECATED: it still launches{until}{replacement}"))
        }
        _ => Readiness::ready(),
    }
}

/// How many instances of a machine type with `vcpus` CPUs a region's quotas leave room for:
/// the least of what `INSTANCES`, `CPUS` and the family's own CPU quota (`N2_CPUS` for an
/// `n2-` type) allow. `None` when the region reports none of them.
pub(crate) fn room(quotas: &[model::Quota], machine_type: &str) -> Option<usize> {
    let left = |metric: &str| {
        quotas
            .iter()
            .find(|q| q.metric.as_ref().and_then(|m| m.name()) == Some(metric))
            .and_then(|q| Some((q.limit? - q.usage.unwrap_or(0.0)).max(0.0)))
    };
    let family_cpus = machine_type
        .rsplit('/')
        .next()
        .and_then(|n| n.split_once('-'))
        .map(|(family, _)| format!("{}_CPUS", family.to_ascii_uppercase()));
    let vcpus = vcpus_of(machine_type).filter(|v| *v > 0);
    let by_cpus = |metric: &str| Some((left(metric)? / vcpus? as f64).floor() as usize);
    [left("INSTANCES").map(|l| l.floor() as usize), by_cpus("CPUS"), family_cpus.as_deref().and_then(by_cpus)]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(metric: &str, limit: f64, usage: f64) -> model::Quota {
        model::Quota::new().set_metric(model::quota::Metric::from(metric)).set_limit(limit).set_usage(usage)
    }

    fn image(state: Option<&str>) -> model::Image {
        let mut image = model::Image::new().set_name("web-1-0-0");
        if let Some(state) = state {
            image = image.set_deprecated(
                model::DeprecationStatus::new()
                    .set_state(model::deprecation_status::State::from(state))
                    .set_replacement("https://compute.googleapis.com/compute/v1/projects/p/global/images/web-2-0-0"),
            );
        }
        image
    }

    #[test]
    fn machine_types_give_their_cpus() {
        for (name, cpus) in [
            ("e2-standard-4", Some(4)),
            ("zones/us-central1-a/machineTypes/n2-highmem-8", Some(8)),
            ("c3-standard-4-lssd", Some(4)),
            ("n2-custom-6-12288", Some(6)),
            ("custom-2-4096", Some(2)),
            ("e2-small", Some(2)),
            ("f1-micro", Some(1)),
            ("mystery", None),
        ] {
            assert_eq!(vcpus_of(name), cpus, "{name}");
        }
    }

    #[test]
    fn obsolete_and_deleted_images_block_and_a_deprecated_one_warns() {
        let r = "projects/p/global/images/web-1-0-0";
        assert_eq!(image_readiness(r, Some(&image(None))), Readiness::ready());
        for state in ["OBSOLETE", "DELETED"] {
            let blocked = image_readiness(r, Some(&image(Some(state))));
            let why = blocked.blocking.unwrap();
            assert!(why.contains(state) && why.contains("projects/p/global/images/web-2-0-0"), "{why}");
        }
        let warned = image_readiness(r, Some(&image(Some("DEPRECATED"))));
        assert!(warned.blocking.is_none() && warned.warnings[0].contains("DEPRECATED"), "{warned:?}");
        assert!(image_readiness(r, None).blocking.unwrap().contains("no longer exists"));
    }

    #[test]
    fn room_is_the_least_any_quota_allows() {
        let quotas = [quota("INSTANCES", 100.0, 90.0), quota("CPUS", 24.0, 16.0), quota("N2_CPUS", 8.0, 6.0)];
        assert_eq!(room(&quotas, "e2-standard-4"), Some(2), "8 CPUs left, 4 each");
        assert_eq!(room(&quotas, "n2-standard-2"), Some(1), "the N2 family has 2 CPUs left");
        assert_eq!(room(&quotas[..1], "mystery"), Some(10), "instances alone when the CPUs are unknown");
        assert_eq!(room(&[quota("CPUS", 4.0, 9.0)], "e2-small"), Some(0), "over the limit is no room");
        assert_eq!(room(&[], "e2-small"), None);
    }
}
