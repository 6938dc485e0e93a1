//! The fake is a contract, not a mock: Google's official Compute client for Python
//! (google-cloud-compute, pinned in scripts/python/requirements.txt) lists, gets, creates,
//! bulk-creates and deletes instances against it without an error.

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
