//! The fake is a contract, not a mock: Google's official Compute client for Python
//! (google-cloud-compute, pinned in scripts/python/requirements.txt) lists, gets, creates,
//! bulk-creates and deletes instances against it without an error.

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn googles_python_client_lists_creates_and_deletes_on_the_fake() {
    let python = immut_core::test_tools::python_with("google.cloud.compute_v1").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gcp/python/official_client.py");
    let url = fake.url().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args([script, &url, support::PROJECT, support::ZONE])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the official client failed on the fake:\n{stdout}\n{stderr}");
    assert!(stdout.contains("deleted: none left"), "{stdout}");
}
