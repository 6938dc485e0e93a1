//! The fake is a contract, not a mock: Google's official Compute client for Python
//! (google-cloud-compute, pinned in scripts/python/requirements.txt) lists, gets, creates,
//! bulk-creates and deletes instances against it without an error, and reads and deprecates
//! images and reads a region's quotas (what rollback readiness asks).

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn googles_python_client_lists_creates_and_deletes_on_the_fake() {
    let python = immut_core::test_tools::python_with("google.cloud.compute_v1").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gcp/python/official_client.py");
    let args = vec![fake.url().to_owned(), support::PROJECT.into(), support::ZONE.into()];
    let out = immut_fake::official_client::run_script(python, script, args)
        .await
        .unwrap_or_else(|e| panic!("the official client failed on the fake: {e}"));
    assert!(out.contains("deleted: none left"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn googles_python_client_reads_images_deprecates_one_and_reads_a_region_s_quotas() {
    let python = immut_core::test_tools::python_with("google.cloud.compute_v1").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gcp/python/readiness_client.py");
    let args = vec![fake.url().to_owned(), support::PROJECT.into(), "us-central1".into()];
    let out = immut_fake::official_client::run_script(python, script, args)
        .await
        .unwrap_or_else(|e| panic!("the official client failed on the fake: {e}"));
    assert!(out.contains("deprecate: web-v1 DEPRECATED") && out.contains("region: us-central1 CPUS"), "{out}");
}
