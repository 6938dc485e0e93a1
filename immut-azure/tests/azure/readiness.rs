//! Rollback readiness on the fake ARM: the previous release's gallery image version is
//! deleted through ARM (`GalleryImageVersions_Delete`, as someone cleaning up old versions
//! would) once traffic has moved, and the deployment stops before it deletes any old VM
//! (checked on the requests the fake received and on its VMs). A second run with
//! `accept_no_way_back` finishes. An end-of-life date in the past warns, `excludeFromLatest`
//! does not matter, and the location's usages give the room.

use std::time::Duration;

use immut_azure::fake::FakeArm;
use immut_azure::{AzureProvider, AzureTraffic};
use immut_core::engine::{Event, RetryPolicy};
use immut_core::{AllOf, BlueGreen, Deployer, Phase, Provider, ProviderStatus, Query, Release, Traffic};
use serde_json::{Value, json};

use crate::support::{self, LOCATION, image};

const N: usize = 3;
const GALLERY_API: &str = "2023-07-03";

fn deployer(provider: &AzureProvider, traffic: &AzureTraffic, accept: bool) -> Deployer {
    Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()))
        .strategy(BlueGreen::new())
        .desired(N)
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(15))
        .retry(RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        })
        .accept_no_way_back(accept)
        .build()
        .unwrap()
}

/// A call on a gallery image version through ARM, with a bearer token, as any client sends it.
async fn version_call(fake: &FakeArm, method: reqwest::Method, id: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{id}?api-version={GALLERY_API}", fake.url());
    let mut request = reqwest::Client::new().request(method, url).bearer_auth("fake-token");
    if let Some(b) = body {
        request = request.json(&b);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

async fn names_of(provider: &AzureProvider, release: &Release) -> Vec<String> {
    let q = Query::service("web").with_release(release.id().clone());
    let mut names: Vec<String> = provider.describe(&q).await.unwrap().into_iter().map(|i| i.id.to_string()).collect();
    names.sort();
    names
}

/// The VM names the fake was asked to delete.
fn deletes(fake: &FakeArm) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.operation == "VirtualMachines_Delete")
        .map(|r| r.uri.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gallery_version_deleted_midway_keeps_the_old_vms_until_accepted() {
    let fake = support::fake().await;
    let provider = support::provider(&fake);
    let stack = support::stack(&provider, Duration::from_millis(100)).await;
    let traffic = support::switch(&provider, &stack);
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    assert!(deployer(&provider, &traffic, false).deploy(v1.clone()).run().await.succeeded());
    let ready = provider.readiness(&v1).await.unwrap();
    assert!(ready.checked && !ready.is_blocked() && ready.warnings.is_empty(), "{ready:?}");
    let old = names_of(&provider, &v1).await;
    assert_eq!(old.len(), N);

    let mut d = deployer(&provider, &traffic, false).deploy(v2.clone()).with_previous(v1.clone());
    let mut deleted = false;
    let outcome = loop {
        let done = d.step().await;
        for e in d.take_events() {
            // Someone deletes the old image version once traffic has moved to the new release.
            if matches!(e, Event::Switched { .. }) && !deleted {
                let (status, _) = version_call(&fake, reqwest::Method::DELETE, &image(1), None).await;
                assert_eq!(status, 200);
                deleted = true;
            }
        }
        if let Some(outcome) = done {
            break outcome;
        }
    };
    assert!(deleted, "the deployment switched traffic");
    let Phase::NoWayBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("versions/1.0.0") && reason.contains("accept_no_way_back"), "{reason}");
    let asked = deletes(&fake);
    assert!(old.iter().all(|n| !asked.contains(n)), "no VirtualMachines_Delete named an old VM: {asked:?}");
    assert_eq!(names_of(&provider, &v1).await, old, "the fake still runs every old VM");
    let new = names_of(&provider, &v2).await;
    let serving: Vec<String> = traffic.serving().await.unwrap().iter().map(ToString::to_string).collect();
    assert!(new.len() == N && serving.len() == N && serving.iter().all(|s| new.contains(s)), "{serving:?}");
    assert!(provider.readiness(&v1).await.unwrap().is_blocked());

    let outcome = deployer(&provider, &traffic, true).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(names_of(&provider, &v1).await.is_empty(), "the accepted run deleted the old release");
    let asked = deletes(&fake);
    assert!(old.iter().all(|n| asked.contains(n)), "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_of_life_in_the_past_warns_and_the_usages_give_the_room() {
    let fake = support::fake().await;
    let provider = support::provider(&fake);
    let stack = support::stack(&provider, Duration::from_millis(100)).await;
    let traffic = support::switch(&provider, &stack);
    let v1 = support::release("web", (1, 0, 0), &image(1));
    assert!(deployer(&provider, &traffic, false).deploy(v1.clone()).run().await.succeeded());

    // Republished with an end of life that has passed, and kept out of `latest`.
    let body = json!({
        "location": LOCATION,
        "properties": {
            "publishingProfile": { "endOfLifeDate": "2025-01-01T00:00:00+00:00", "excludeFromLatest": true },
            "storageProfile": { "source": { "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/web" } },
        },
    });
    let (status, answer) = version_call(&fake, reqwest::Method::PUT, &image(1), Some(body)).await;
    assert_eq!(status, 200, "an update of a version that exists: {answer}");
    assert_eq!(answer["properties"]["publishingProfile"]["excludeFromLatest"], true, "{answer}");
    // 3 Standard_B2s VMs hold 6 cores; 16 leaves 10, room for 5 more.
    fake.set_usage_limit(LOCATION, "cores", 16);
    let r = provider.readiness(&v1).await.unwrap();
    assert!(!r.is_blocked(), "a version past its end of life still launches: {r:?}");
    assert!(r.warnings.len() == 1 && r.warnings[0].contains("end of life on 2025-01-01"), "{r:?}");
    assert_eq!(r.room, Some(5), "{r:?}");
    fake.set_usage_limit(LOCATION, "virtualMachines", 5);
    assert_eq!(provider.readiness(&v1).await.unwrap().room, Some(2), "the VM count is the tighter one");
    assert_eq!(provider.calls()["Usage_List"], 2);

    // A bad date is refused, naming the field.
    let bad = json!({ "location": LOCATION, "properties": { "publishingProfile": { "endOfLifeDate": "soon" }, "storageProfile": {} } });
    let (status, answer) = version_call(&fake, reqwest::Method::PUT, &image(1), Some(bad)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("endOfLifeDate"), "{answer}");
    // A version that is not there blocks, naming it.
    let (status, _) = version_call(&fake, reqwest::Method::DELETE, &image(1), None).await;
    assert_eq!(status, 200);
    let gone = provider.readiness(&v1).await.unwrap();
    assert!(
        gone.blocking.as_deref().is_some_and(|b| b.contains("versions/1.0.0") && b.contains("no longer exists")),
        "{gone:?}"
    );
    let (status, _) = version_call(&fake, reqwest::Method::DELETE, &image(1), None).await;
    assert_eq!(status, 204, "a second delete finds nothing");
}
