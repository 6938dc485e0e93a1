//! Rollback readiness on the fake: the previous release's image is made `OBSOLETE` through
//! the Compute API (`images.deprecate`, as someone cleaning up old images would) once traffic
//! has moved, and the deployment stops before it deletes any old instance (checked on the
//! requests the fake received and on its instances). A second run with `accept_no_way_back`
//! finishes. A `DEPRECATED` image warns, and the region's quotas give the room.

use std::time::Duration;

use immut_core::engine::{Event, RetryPolicy};
use immut_core::{AllOf, BlueGreen, Deployer, Phase, Provider, ProviderStatus, Query, Release, Traffic};
use immut_gcp::fake::FakeGce;
use immut_gcp::{GcpProvider, GcpTraffic};
use serde_json::{Value, json};

use crate::support::{self, PROJECT, image};

const N: usize = 3;

fn deployer(provider: &GcpProvider, traffic: &GcpTraffic, accept: bool) -> Deployer {
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

/// `images.deprecate` through the public API, then `globalOperations.get` until the operation
/// is `DONE` (its effect applies then).
pub async fn deprecate(fake: &FakeGce, name: &str, state: &str) {
    let http = reqwest::Client::new();
    let base = format!("{}/compute/v1/projects/{PROJECT}/global", fake.url());
    let op: Value = http
        .post(format!("{base}/images/{name}/deprecate"))
        .json(&json!({ "state": state }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let op_name = op["name"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        let now: Value = http.get(format!("{base}/operations/{op_name}")).send().await.unwrap().json().await.unwrap();
        if now["status"] == "DONE" {
            assert!(now.get("error").is_none(), "{now}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the deprecate operation {op_name} never finished");
}

async fn names_of(provider: &GcpProvider, release: &Release) -> Vec<String> {
    let q = Query::service("web").with_release(release.id().clone());
    let mut names: Vec<String> = provider
        .describe(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.as_str().rsplit('/').next().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The instance names the fake was asked to delete.
fn deletes(fake: &FakeGce) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.operation == "compute.instances.delete")
        .map(|r| r.uri.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_made_obsolete_midway_keeps_the_old_instances_until_accepted() {
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let stack = support::stack(&provider, Duration::from_millis(100)).await;
    let traffic = support::switch(&provider, &stack);
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    assert!(deployer(&provider, &traffic, false).deploy(v1.clone()).run().await.succeeded());
    let ready = provider.readiness(&v1).await.unwrap();
    assert!(ready.checked && !ready.is_blocked() && ready.warnings.is_empty(), "{ready:?}");
    let old = names_of(&provider, &v1).await;
    assert_eq!(old.len(), N);

    let mut d = deployer(&provider, &traffic, false).deploy(v2.clone()).with_previous(v1.clone());
    let mut obsolete = false;
    let outcome = loop {
        let done = d.step().await;
        for e in d.take_events() {
            // Someone retires the old image once traffic has moved to the new release.
            if matches!(e, Event::Switched { .. }) && !obsolete {
                deprecate(&fake, "web-v1", "OBSOLETE").await;
                obsolete = true;
            }
        }
        if let Some(outcome) = done {
            break outcome;
        }
    };
    assert!(obsolete, "the deployment switched traffic");
    let Phase::NoWayBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(
        reason.contains("web-v1") && reason.contains("OBSOLETE") && reason.contains("accept_no_way_back"),
        "{reason}"
    );
    let asked = deletes(&fake);
    assert!(old.iter().all(|n| !asked.contains(n)), "no instances.delete named an old instance: {asked:?}");
    assert_eq!(names_of(&provider, &v1).await, old, "the fake still runs every old instance");
    let new = names_of(&provider, &v2).await;
    let serving: Vec<String> =
        traffic.serving().await.unwrap().iter().map(|s| s.as_str().rsplit('/').next().unwrap().to_owned()).collect();
    assert_eq!(new.len(), N);
    assert!(serving.len() == N && serving.iter().all(|s| new.contains(s)), "the new release keeps its traffic");
    assert!(provider.readiness(&v1).await.unwrap().is_blocked());

    let outcome = deployer(&provider, &traffic, true).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(names_of(&provider, &v1).await.is_empty(), "the accepted run deleted the old release");
    let asked = deletes(&fake);
    assert!(old.iter().all(|n| asked.contains(n)), "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_image_warns_and_the_region_s_quotas_give_the_room() {
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let stack = support::stack(&provider, Duration::from_millis(100)).await;
    let traffic = support::switch(&provider, &stack);
    let v1 = support::release("web", (1, 0, 0), &image(1));
    assert!(deployer(&provider, &traffic, false).deploy(v1.clone()).run().await.succeeded());
    // 3 e2-small instances hold 6 of the region's CPUs; 16 leaves 10, room for 5 more.
    fake.set_quota(PROJECT, "us-central1", "CPUS", 16.0);
    deprecate(&fake, "web-v1", "DEPRECATED").await;
    let r = provider.readiness(&v1).await.unwrap();
    assert!(!r.is_blocked(), "a deprecated image still launches: {r:?}");
    assert!(r.warnings.len() == 1 && r.warnings[0].contains("web-v1") && r.warnings[0].contains("DEPRECATED"), "{r:?}");
    assert_eq!(r.room, Some(5), "{r:?}");
    fake.set_quota(PROJECT, "us-central1", "INSTANCES", 5.0);
    assert_eq!(provider.readiness(&v1).await.unwrap().room, Some(2), "the instance quota is the tighter one");
    assert_eq!(provider.calls()["regions.get"], 2);

    // An image that is not there (a 404) blocks, naming it.
    let missing = support::release("web", (0, 9, 0), &format!("projects/{PROJECT}/global/images/web-gone"));
    let none = provider.readiness(&missing).await.unwrap();
    assert!(none.blocking.as_deref().is_some_and(|b| b.contains("web-gone")), "{none:?}");
    // DELETED blocks as OBSOLETE does, and names the image.
    deprecate(&fake, "web-v1", "DELETED").await;
    let gone = provider.readiness(&v1).await.unwrap();
    assert!(gone.blocking.as_deref().is_some_and(|b| b.contains("web-v1") && b.contains("DELETED")), "{gone:?}");
}
