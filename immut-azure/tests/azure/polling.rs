//! The provider's long-running-operation fallbacks, driven by the fake's switches: without an
//! `Azure-AsyncOperation` header a VM create is followed by the VM's own `provisioningState`
//! (a failure keeps its code) and a delete by its `Location`; a rule health the load balancer
//! computes behind a 202 is read at its `Location`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use immut_azure::AzureProvider;
use immut_azure::fake::{FakeArm, Fault, FaultRule, Recorded, Settings};
use immut_core::{
    DeploymentId, ErrorKind, Health, HealthCheck, Instance, LaunchRequest, LaunchToken, Provider, ProviderExt, Query,
    Traffic,
};

use crate::support::{self, image};

fn no_async_operation_header() -> Settings {
    Settings { async_operation_header: false, create_ms: 300, delete_ms: 200, ..support::settings() }
}

async fn launch(provider: &AzureProvider, token: &str) -> immut_core::Result<Vec<Instance>> {
    let release = Arc::new(support::release("web", (1, 0, 0), &image(1)));
    provider.launch(&LaunchRequest::new(release, 1, &DeploymentId::new("d"), LaunchToken::new(token))).await
}

async fn remove_all(fake: &FakeArm, provider: &AzureProvider) {
    let ids: Vec<_> =
        provider.describe(&Query::service("web").with_terminated()).await.unwrap().into_iter().map(|i| i.id).collect();
    provider.terminate_all(&ids).await.unwrap();
    support::assert_clean(fake, "web-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_azure_asyncoperation_a_create_follows_provisioning_state_and_a_delete_its_location() {
    let fake = support::fake_with(no_async_operation_header()).await;
    let provider = support::provider(&fake);
    let made = launch(&provider, "d-w1").await.unwrap();
    assert_eq!(made.len(), 1);
    let vms = fake.state()["virtualMachines"].as_array().cloned().unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["provisioningState"], "Succeeded", "launch returned once the VM was made: {vms:?}");
    let calls = fake.calls();
    assert_eq!(calls.get("ComputeOperations_Get"), None, "there was no status resource to read: {calls:?}");
    assert!(calls["VirtualMachines_Get"] >= 2, "the VM was read until Succeeded: {calls:?}");
    assert_eq!(calls["VirtualMachines_CreateOrUpdate"], 1, "never a second PUT: {calls:?}");

    provider.terminate_all(&[made[0].id.clone()]).await.unwrap();
    support::assert_clean(&fake, "web-");
    let calls = fake.calls();
    assert_eq!(calls.get("ComputeOperations_Get"), None, "{calls:?}");
    assert!(calls["ComputeOperationResults_Get"] >= 2, "the delete was followed at its Location to the end: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_in_its_provisioning_state_keeps_the_operations_code() {
    let fake = support::fake_with(no_async_operation_header()).await;
    let provider = support::provider(&fake);
    fake.inject(FaultRule::new(
        "VirtualMachines_CreateOrUpdate",
        Fault::OperationError {
            code: "AllocationFailed".into(),
            message: "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."
                .into(),
        },
        1,
    ));
    let e = launch(&provider, "d-w1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
    assert!(e.message().contains("AllocationFailed") && e.message().contains("sufficient capacity"), "{e}");
    assert!(!e.is_retryable(), "capacity is not retried: {e}");
    assert_eq!(fake.calls().get("ComputeOperations_Get"), None);
    remove_all(&fake, &provider).await;
}

/// The health of one VM in the pool, read until it is `Healthy` (10 s at most), then the same
/// VM with a failing probe; answers the requests the fake saw.
async fn health_behind_a_202(settings: Settings) -> Vec<Recorded> {
    let fake = support::fake_with(Settings { rule_health_ms: 150, ..settings }).await;
    let provider = support::provider(&fake);
    let stack = support::stack(&provider, Duration::ZERO).await;
    let traffic = support::pool(&provider, &stack);
    let vm = launch(&provider, "d-w1").await.unwrap().remove(0);
    traffic.attach(std::slice::from_ref(&vm)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let vm = provider.describe(&Query::ids([vm.id.clone()])).await.unwrap().remove(0);
        match traffic.check(&vm).await.unwrap() {
            Health::Healthy => break Health::Healthy,
            other if tokio::time::Instant::now() >= deadline => break other,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(health, Health::Healthy, "the load balancer's probe result, read at the Location");
    let calls = fake.calls();
    assert!(
        calls["NetworkOperationResults_Get"] >= calls["LoadBalancerLoadBalancingRules_Health"],
        "every 202 was followed to its result at its Location: {calls:?}"
    );
    // A VM whose probe fails is read as such through the same path.
    fake.inject(FaultRule::always("LoadBalancerLoadBalancingRules_Health", Fault::Unhealthy).target(vm.id.as_str()));
    let vm = provider.describe(&Query::ids([vm.id.clone()])).await.unwrap().remove(0);
    assert!(!traffic.check(&vm).await.unwrap().is_healthy(), "a failing probe is not healthy");
    traffic.detach(std::slice::from_ref(&vm.id)).await.unwrap();
    remove_all(&fake, &provider).await;
    fake.requests()
}

/// The operation ids of the requests of one operationId (the last segment of their path).
fn operation_ids(requests: &[Recorded], operation: &str) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|r| r.operation == operation)
        .filter_map(|r| r.uri.split('?').next()?.rsplit('/').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_health_behind_a_202_is_read_at_its_location_after_its_status_resource() {
    let requests = health_behind_a_202(support::settings()).await;
    let results = operation_ids(&requests, "NetworkOperationResults_Get");
    assert!(!results.is_empty(), "the results were read at their Location");
    let polled = operation_ids(&requests, "NetworkOperations_Get");
    assert!(results.is_subset(&polled), "each health operation's Azure-AsyncOperation was polled first: {results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_health_behind_a_202_with_only_a_location_is_read_there() {
    let requests = health_behind_a_202(Settings { async_operation_header: false, ..support::settings() }).await;
    assert!(!operation_ids(&requests, "NetworkOperationResults_Get").is_empty());
    assert!(operation_ids(&requests, "NetworkOperations_Get").is_empty(), "there was no status resource");
}
