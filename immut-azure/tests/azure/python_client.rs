//! The fake is a contract, not a mock: Microsoft's official management clients for Python
//! (azure-mgmt-compute and azure-mgmt-network, pinned in scripts/python/requirements.txt)
//! create, get, list (paged) and delete VMs and create and update a load balancer against it
//! without an error, their own pollers following each long-running operation: once as Compute
//! and Network answer (`Azure-AsyncOperation`), once with a rule health computed behind a 202,
//! and once with the fallbacks ARM's contract allows (a PUT's `provisioningState`, a DELETE's
//! and a POST's `Location`). It also reads, updates and deletes a gallery image version and
//! lists a location's usages (what rollback readiness asks).

use immut_azure::fake::{FakeArm, Settings};

use crate::support::{self, GROUP, LOCATION, SUB};

/// Runs the official clients' script on the fake, then checks the fake's ground truth.
async fn run_official_client(fake: &FakeArm) {
    let python =
        immut_core::test_tools::python_with("azure.mgmt.compute, azure.mgmt.network").unwrap_or_else(|e| panic!("{e}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/azure/python/official_client.py");
    let args = [fake.url(), SUB, GROUP, LOCATION, &support::image(1), &support::subnet()].map(str::to_owned);
    let out = immut_fake::official_client::run_script(python, script, args.to_vec())
        .await
        .unwrap_or_else(|e| panic!("the official clients failed on the fake: {e}"));
    assert!(out.contains("deleted: none left"), "{out}");
    // Ground truth: every answer was a success, the list was paged, nothing is left.
    let failed: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.status >= 400)
        .map(|r| format!("{} {} {}", r.status, r.method, r.uri))
        .collect();
    assert!(failed.is_empty(), "answers the client had to get past: {failed:?}\n{out}");
    let paged = fake
        .requests()
        .iter()
        .filter(|r| r.operation == "VirtualMachines_List" && r.uri.contains("$skiptoken"))
        .count();
    assert_eq!(paged, 1, "the client followed the nextLink of the first page (3 VMs, pages of 2)");
    support::assert_clean(fake, "py-");
    assert_eq!(fake.state()["loadBalancers"], serde_json::json!([]), "the load balancer is gone");
    assert_eq!(fake.calls()["VirtualMachines_CreateOrUpdate"], 3, "the pollers never send a PUT again");
    assert_eq!(fake.calls()["LoadBalancers_CreateOrUpdate"], 2);
    assert_eq!(support::updated_in_place(fake), Vec::<String>::new());
}

fn settings() -> Settings {
    Settings { page_size: 2, ..support::settings() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_clients_create_list_update_and_delete_on_the_fake() {
    let fake = support::fake_with(settings()).await;
    run_official_client(&fake).await;
    let calls = fake.calls();
    assert!(calls["ComputeOperations_Get"] >= 6, "the pollers read Azure-AsyncOperation: {calls:?}");
    assert!(calls["NetworkOperations_Get"] >= 2, "{calls:?}");
    assert_eq!(calls.get("LoadBalancerLoadBalancingRules_Health"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("NetworkOperationResults_Get"), None, "the health answered at once: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_clients_read_a_rule_health_computed_behind_a_202() {
    let fake = support::fake_with(Settings { rule_health_ms: 150, ..settings() }).await;
    run_official_client(&fake).await;
    let calls = fake.calls();
    assert_eq!(calls.get("LoadBalancerLoadBalancingRules_Health"), Some(&1), "{calls:?}");
    assert!(calls["NetworkOperations_Get"] >= 3, "the health's Azure-AsyncOperation was polled: {calls:?}");
    assert_eq!(calls.get("NetworkOperationResults_Get"), Some(&1), "then its result read at its Location: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_clients_follow_the_fallback_answers_of_the_fake() {
    let fake = support::fake_with(Settings { async_operation_header: false, rule_health_ms: 150, ..settings() }).await;
    run_official_client(&fake).await;
    let calls = fake.calls();
    assert_eq!(calls.get("ComputeOperations_Get"), None, "no Azure-AsyncOperation was given: {calls:?}");
    assert_eq!(calls.get("NetworkOperations_Get"), None, "{calls:?}");
    assert!(calls["VirtualMachines_Get"] > 1, "the PUTs were followed by reading the VM: {calls:?}");
    assert!(calls["ComputeOperationResults_Get"] >= 3, "the deletes were followed at their Location: {calls:?}");
    assert!(calls["NetworkOperationResults_Get"] >= 1, "the 202 health was read at its Location: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_client_updates_and_deletes_a_gallery_version_and_lists_usages() {
    let python = immut_core::test_tools::python_with("azure.mgmt.compute").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake_with(settings()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/azure/python/readiness_client.py");
    let args = [fake.url(), SUB, LOCATION, &support::image(1)].map(str::to_owned);
    let out = immut_fake::official_client::run_script(python, script, args.to_vec())
        .await
        .unwrap_or_else(|e| panic!("the official client failed on the fake: {e}"));
    assert!(out.contains("update: 1.0.0 2025-01-01") && out.contains("deleted: 404"), "{out}");
    let calls = fake.calls();
    assert_eq!(
        calls.get("GalleryImageVersions_CreateOrUpdate"),
        Some(&1),
        "the poller never sent the PUT again: {calls:?}"
    );
    assert_eq!(calls.get("GalleryImageVersions_Delete"), Some(&1), "{calls:?}");
    let paged = fake.requests().iter().filter(|r| r.operation == "Usage_List" && r.uri.contains("$skiptoken")).count();
    assert!(paged >= 1, "the client followed the usages' nextLink (4 usages, pages of 2)");
}
