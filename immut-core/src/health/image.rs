//! Whether the image an instance's metadata service names is the one a release's artifact
//! names. Each cloud writes the same image more than one way: Compute Engine as a full URL, a
//! `projects/...` path or a project-relative `global/images/...` path; ARM ids in any case.

/// The prefixes a Compute Engine resource path may carry.
const GCE_PREFIXES: [&str; 3] = [
    "https://www.googleapis.com/compute/v1/",
    "https://compute.googleapis.com/compute/v1/",
    "//compute.googleapis.com/",
];

/// Whether `expected` (from the artifact) and `found` (from the metadata service) name the same
/// image.
pub(super) fn same(expected: &str, found: &str) -> bool {
    let (expected, found) = (expected.trim(), found.trim());
    if expected.starts_with("/subscriptions/") || found.starts_with("/subscriptions/") || is_urn(expected) {
        // ARM resource ids and marketplace URNs are case-insensitive.
        return expected.eq_ignore_ascii_case(found);
    }
    let (expected, found) = (gce_path(expected), gce_path(found));
    if expected == found {
        return true;
    }
    // A project-relative path (`global/images/NAME`) matches the same image in any project's
    // path: the artifact was written for the project the instances run in.
    match (project_relative(expected), project_relative(found)) {
        (Some(e), Some(f)) => (e == expected || f == found) && e == f,
        _ => false,
    }
}

/// Whether `image` names a Compute Engine image family rather than an image.
pub(super) fn is_family(image: &str) -> bool {
    gce_path(image.trim()).contains("global/images/family/")
}

/// An Azure marketplace URN: `publisher:offer:sku:version`.
fn is_urn(image: &str) -> bool {
    image.split(':').count() == 4 && !image.contains('/')
}

fn gce_path(image: &str) -> &str {
    GCE_PREFIXES.iter().find_map(|p| image.strip_prefix(p)).unwrap_or(image)
}

/// `global/images/NAME` of `projects/P/global/images/NAME` (or of itself).
fn project_relative(path: &str) -> Option<&str> {
    if path.starts_with("global/images/") {
        return Some(path);
    }
    let rest = path.strip_prefix("projects/")?;
    let (_, relative) = rest.split_once('/')?;
    relative.starts_with("global/images/").then_some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amis_compare_exactly() {
        assert!(same("ami-0abc", "ami-0abc"));
        assert!(same("ami-0abc", "ami-0abc\n"));
        assert!(!same("ami-0abc", "ami-0abd"));
        assert!(!same("ami-0abc", "ami-moto-virtual"));
    }

    #[test]
    fn compute_engine_paths_compare_however_they_are_written() {
        let metadata = "projects/shop/global/images/web-v2";
        assert!(same("projects/shop/global/images/web-v2", metadata));
        assert!(same("https://www.googleapis.com/compute/v1/projects/shop/global/images/web-v2", metadata));
        assert!(same("https://compute.googleapis.com/compute/v1/projects/shop/global/images/web-v2", metadata));
        assert!(same("global/images/web-v2", metadata));
        assert!(!same("projects/other/global/images/web-v2", metadata));
        assert!(!same("projects/shop/global/images/web-v1", metadata));
        assert!(!same("global/images/web-v1", metadata));
        assert!(!same("projects/shop/global/images/family/web", metadata));
        assert!(is_family("projects/shop/global/images/family/web"));
        assert!(!is_family(metadata));
    }

    #[test]
    fn arm_ids_compare_without_case() {
        let id = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/web-v2";
        assert!(same(id, &id.to_lowercase()));
        assert!(!same(id, "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/web-v1"));
        assert!(same(
            "Canonical:ubuntu-24_04-lts:server:24.04.202501",
            "canonical:Ubuntu-24_04-LTS:server:24.04.202501"
        ));
        assert!(!same("Canonical:ubuntu-24_04-lts:server:24.04.202501", "Canonical:ubuntu-24_04-lts:server:latest"));
    }
}
