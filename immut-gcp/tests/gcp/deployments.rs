//! End-to-end deployments of 6 Compute Engine instances through the Deployer, against the fake:
//! blue/green with a backend-service switch (and rollbacks), rolling and canary through one
//! instance group, throttling and 5xx, a lost bulkInsert response, zone exhaustion, stopped
//! instances, and the audit reading what GCE reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_compute_v1::model;
use immut_core::audit::{Audit, Verdict};
use immut_core::engine::{Event, RetryPolicy};
use immut_core::journal::{Journal, JournalRead, JournalRecord, LockGuard, MemoryJournal};
use immut_core::{
    AllOf, BlueGreen, Canary, Count, Deployer, DeployerBuilder, FnCheck, Health, Instance, Phase, Provider,
    ProviderStatus, Query, Release, Rolling, Traffic,
};
use immut_gcp::fake::{FakeGce, Fault, FaultRule};
use immut_gcp::{Bucket, GcpProvider, GcpTraffic, Pacing};

use crate::support::{self, PROJECT, ZONE, image};

const N: usize = 6;

fn deployer(
    provider: &GcpProvider,
    traffic: &GcpTraffic,
    strategy: impl immut_core::ReplacementStrategy + 'static,
) -> DeployerBuilder {
    Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()))
        .strategy(strategy)
        .desired(N)
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(15))
        .retry(RetryPolicy {
            max_retries: 10,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        })
}

async fn live(provider: &GcpProvider, release: &Release) -> usize {
    provider.describe(&Query::service("web").with_release(release.id().clone())).await.unwrap().len()
}

/// All of the service, stopped instances included.
async fn all(provider: &GcpProvider) -> Vec<Instance> {
    provider.describe(&Query::service("web").with_terminated()).await.unwrap()
}

async fn serving_release(provider: &GcpProvider, traffic: &GcpTraffic, release: &Release) -> bool {
    let serving = traffic.serving().await.unwrap();
    let instances = provider.describe(&Query::ids(serving.clone())).await.unwrap();
    serving.len() == N && instances.len() == N && instances.iter().all(|i| i.release() == Some(release.id()))
}

async fn switched_env() -> (FakeGce, GcpProvider, GcpTraffic) {
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let stack = support::stack(&provider, Duration::from_millis(200)).await;
    let traffic = support::switch(&provider, &stack);
    (fake, provider, traffic)
}

async fn group_env(fake: &FakeGce, pacing: Option<Pacing>) -> (GcpProvider, GcpTraffic) {
    let mut builder = support::builder(fake);
    if let Some(p) = pacing {
        builder = builder.pacing(p);
    }
    let provider = builder.build().await.unwrap();
    let stack = support::stack(&provider, Duration::from_millis(200)).await;
    let traffic = support::group(&provider, &stack);
    (provider, traffic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_backend_service_and_an_unhealthy_release_never_gets_traffic() {
    let (fake, provider, traffic) = switched_env().await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, BlueGreen::new()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    assert!(serving_release(&provider, &traffic, &v1).await);

    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(provider.calls()["backendServices.patch"], 1, "one switch: one backend-service update");
    assert_eq!(provider.calls()["instances.bulkInsert"], 2, "one bulkInsert per wave");
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0, "blue deleted after the switch");

    // The balancer's own health check says v3 never becomes healthy: the new instances are
    // probed in the idle colour (capacity 0), never switched to, and the rollback deletes them.
    fake.inject(FaultRule::always("compute.backendServices.getHealth", Fault::Unhealthy).target("web-v3"));
    let v3 = support::release("web", (3, 0, 0), &image(3));
    let failing =
        deployer(&provider, &traffic, BlueGreen::new()).progress_deadline(Duration::from_secs(3)).build().unwrap();
    let outcome = failing.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 kept its traffic");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
    assert_eq!(provider.calls()["backendServices.patch"], 1, "the backend service never moved");
    let state = fake.state();
    let backends = &state["projects"][PROJECT]["backendServices"][0];
    assert_eq!(backends["serving"].as_array().unwrap().len(), N, "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rolls_back_by_switching_back_when_the_bake_fails() {
    let (_fake, provider, traffic) = switched_env().await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    assert!(
        deployer(&provider, &traffic, BlueGreen::new()).build().unwrap().deploy(v1.clone()).run().await.succeeded()
    );
    // v2 looks healthy until it takes traffic, then fails during the bake.
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = switched.clone();
    let v2_id = v2.id().clone();
    let sick_after_switch = FnCheck(move |i: &Instance| {
        if i.release() == Some(&v2_id) && flag.load(std::sync::atomic::Ordering::SeqCst) {
            Health::Unhealthy("500s".into())
        } else {
            Health::Healthy
        }
    });
    let d = deployer(&provider, &traffic, BlueGreen::new().bake(Duration::from_secs(2)))
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()).and(sick_after_switch))
        .build()
        .unwrap();
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| {
            if matches!(e, Event::Switched { .. }) {
                switched.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert_eq!(provider.calls()["backendServices.patch"], 2, "one switch forward, one switch back");
    assert!(serving_release(&provider, &traffic, &v1).await, "blue serves again");
    assert_eq!(live(&provider, &v2).await, 0, "green deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_through_one_group_and_zone_exhaustion_rolls_back_cleanly() {
    let fake = support::fake().await;
    let (provider, traffic) = group_env(&fake, None).await;
    let (v1, v2, v3) = (
        support::release("web", (1, 0, 0), &image(1)),
        support::release("web", (2, 0, 0), &image(2)),
        support::release("web", (3, 0, 0), &image(3)),
    );
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(2))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(outcome.waves, 3);
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(all(&provider).await.len(), N, "v1 deleted, nothing lingers");

    // The zone runs out of capacity on v3's second wave: the operation ends with
    // ZONE_RESOURCE_POOL_EXHAUSTED, which is QuotaExceeded, not retried; the rollback restores v2.
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let mut first_wave_done = false;
    let outcome = d
        .deploy(v3.clone())
        .with_previous(v2.clone())
        .run_with(|e| {
            if let Event::Launched { .. } = e
                && !first_wave_done
            {
                first_wave_done = true;
                fake.inject(FaultRule::new(
                    "compute.instances.bulkInsert",
                    Fault::OperationError {
                        code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
                        message: format!("The zone 'projects/{PROJECT}/zones/{ZONE}' does not have enough resources"),
                    },
                    1,
                ));
            }
            seen.lock().unwrap().push(e.clone());
        })
        .await;
    match &outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("QuotaExceeded") && reason.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{reason}")
        }
        other => panic!("{other:?}: {}", outcome.summary()),
    }
    assert_eq!(fake.faults_fired()["compute.instances.bulkInsert:operation_error"], 1);
    let retried_launch =
        events.lock().unwrap().iter().any(|e| matches!(e, Event::Retrying { operation, .. } if operation == "launch"));
    assert!(!retried_launch, "capacity is not retried");
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 serves again, {N} strong");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
    assert_eq!(all(&provider).await.len(), N, "nothing left over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_steps_through_one_group_and_a_failing_canary_rolls_back() {
    let fake = support::fake().await;
    let (provider, traffic) = group_env(&fake, None).await;
    let (v1, v2, v3) = (
        support::release("web", (1, 0, 0), &image(1)),
        support::release("web", (1, 1, 0), &image(2)),
        support::release("web", (1, 2, 0), &image(3)),
    );
    let canary =
        || Canary::new([Count::Count(1), Count::Percent(50), Count::Percent(100)]).pause(Duration::from_millis(200));
    let d = deployer(&provider, &traffic, canary()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(outcome.waves >= 3, "one wave per step: {}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0);

    // The canary of v3 serves, then fails: the rollback takes it out and v2 serves 6 again.
    let v3_id = v3.id().clone();
    let failing = deployer(&provider, &traffic, canary())
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()).and(FnCheck(move |i: &Instance| {
            if i.release() == Some(&v3_id) { Health::Unhealthy("error rate 40%".into()) } else { Health::Healthy }
        })))
        .progress_deadline(Duration::from_secs(3))
        .build()
        .unwrap();
    let outcome = failing.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v3).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_and_the_deployment_completes() {
    let fake = support::fake().await;
    // Tight list pacing, so that the client-side rate limit shows in the events too.
    let pacing = Pacing { list: Bucket { burst: 3, per_minute: 600 }, ..Pacing::default() };
    let (provider, traffic) = group_env(&fake, Some(pacing)).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(3))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    fake.inject(FaultRule::new("compute.instances.bulkInsert", Fault::RateLimited { status: 403 }, 1));
    fake.inject(FaultRule::new("compute.instances.bulkInsert", Fault::ServerError { status: 503 }, 1));
    fake.inject(FaultRule::new("compute.instances.list", Fault::RateLimited { status: 429 }, 3));
    fake.inject(FaultRule::new("compute.instances.delete", Fault::ServerError { status: 500 }, 1));
    fake.inject(FaultRule::new("compute.instanceGroups.addInstances", Fault::RateLimited { status: 403 }, 1));
    fake.inject(FaultRule::new("compute.backendServices.getHealth", Fault::ServerError { status: 503 }, 2));
    fake.inject(FaultRule::new("compute.zoneOperations.get", Fault::ServerError { status: 502 }, 1));
    let mut retries = Vec::new();
    let mut paced = 0;
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| match e {
            Event::Retrying { operation, error, .. } => retries.push(format!("{operation}: {error}")),
            Event::Paced { waits, .. } => paced += waits,
            _ => {}
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(paced > 0, "pacing shows in the events");
    let fired: u64 = fake.faults_fired().values().sum();
    assert_eq!(fired, 10, "{:?}", fake.faults_fired());
    assert!(retries.iter().any(|r| r.contains("RateLimited") && r.contains("rateLimitExceeded")), "{retries:?}");
    assert!(retries.iter().any(|r| r.contains("HTTP 429")), "{retries:?}");
    assert!(retries.iter().any(|r| r.contains("Unavailable") && r.contains("backendError")), "{retries:?}");
    assert_eq!(outcome.calls.retries as usize, retries.len());
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(all(&provider).await.len(), N, "no duplicate from a retried bulkInsert, nothing left over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bulk_insert_response_is_retried_without_duplicates() {
    let fake = support::fake().await;
    let (provider, traffic) = group_env(&fake, None).await;
    let v1 = support::release("web", (1, 0, 0), &image(1));
    // Applied by the fake, then the answer is lost: the engine retries and adopts by token.
    fake.inject(FaultRule::new("compute.instances.bulkInsert", Fault::LoseResponse, 1));
    let mut adopted = Vec::new();
    let mut retried = Vec::new();
    let outcome = deployer(&provider, &traffic, BlueGreen::new())
        .build()
        .unwrap()
        .deploy(v1.clone())
        .run_with(|e| match e {
            Event::Launched { adopted: a, .. } => adopted.push(*a),
            Event::Retrying { operation, .. } => retried.push(operation.clone()),
            _ => {}
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(fake.faults_fired().get("compute.instances.bulkInsert:lose_response"), Some(&1));
    assert!(retried.iter().any(|op| op == "launch"), "the lost call was retried: {retried:?}");
    assert_eq!(adopted, vec![N], "the retry adopted the {N} instances the lost call made");
    assert_eq!(all(&provider).await.len(), N, "exactly {N} instances were ever made");

    // GCE itself deduplicates by requestId too: the same bulkInsert twice makes one set.
    let body = || {
        model::BulkInsertInstanceResource::new().set_count(2).set_name_pattern("dup-####").set_instance_properties(
            model::InstanceProperties::new().set_machine_type("e2-small").set_disks([model::AttachedDisk::new()
                .set_boot(true)
                .set_initialize_params(model::AttachedDiskInitializeParams::new().set_source_image(image(1)))]),
        )
    };
    let request_id = "6ba7b810-9dad-51d1-80b4-00c04fd430c8";
    let send = || {
        provider
            .instances_client()
            .bulk_insert()
            .set_project(PROJECT)
            .set_zone(ZONE)
            .set_request_id(request_id)
            .set_body(body())
            .send()
    };
    let (first, second) = (send().await.unwrap(), send().await.unwrap());
    assert_eq!(first.name, second.name, "the same requestId gives the same operation back");
    let dups = provider
        .instances_client()
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_filter("name eq 'dup-.*'")
        .send()
        .await
        .unwrap();
    assert_eq!(dups.items.len(), 2, "and makes nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_fallback_launches_in_the_next_zone_when_one_is_exhausted() {
    let fake = support::fake().await;
    let provider = support::builder(&fake).zone("us-central1-b").zone_fallback(true).build().await.unwrap();
    let request = immut_core::LaunchRequest::new(
        Arc::new(support::release("web", (1, 0, 0), &image(1))),
        3,
        &immut_core::DeploymentId::new("d-fallback"),
        immut_core::LaunchToken::new("d-fallback-w1-0"),
    );
    fake.inject(FaultRule::new(
        "compute.instances.bulkInsert",
        Fault::OperationError {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS".into(),
            message: "no e2-small".into(),
        },
        1,
    ));
    let launched = provider.launch(&request).await.unwrap();
    assert_eq!(launched.len(), 3);
    let zones: std::collections::BTreeSet<&str> =
        launched.iter().map(|i| i.id.as_str().split('/').next().unwrap()).collect();
    assert_eq!(zones.len(), 1, "one wave, one zone: {zones:?}");
    assert_eq!(provider.calls()["instances.bulkInsert"], 2, "the exhausted zone, then the next");
    // Without fallback the same fault is QuotaExceeded.
    let strict = support::provider(&fake).await;
    fake.inject(FaultRule::new(
        "compute.instances.bulkInsert",
        Fault::OperationError { code: "QUOTA_EXCEEDED".into(), message: "Quota 'CPUS' exceeded".into() },
        1,
    ));
    let other = immut_core::LaunchRequest { token: immut_core::LaunchToken::new("d-fallback-w2-0"), ..request.clone() };
    let e = strict.launch(&other).await.unwrap_err();
    assert_eq!(e.kind(), immut_core::ErrorKind::QuotaExceeded, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_instances_are_counted_and_cleaned_up() {
    let fake = support::fake().await;
    let (provider, traffic) = group_env(&fake, None).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(2))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    // Someone stops one v1 instance by hand: GCE calls it TERMINATED, but it still exists.
    let victim = provider.describe(&Query::service("web")).await.unwrap()[0].id.clone();
    let name = victim.as_str().split('/').nth(1).unwrap().to_owned();
    provider.instances_client().stop().set_project(PROJECT).set_zone(ZONE).set_instance(&name).send().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = provider.describe(&Query::ids([victim.clone()])).await.unwrap();
        if seen.first().is_some_and(|i| i.state == immut_core::InstanceState::Stopped) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stopped instance is still listed, as Stopped: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let left = all(&provider).await;
    assert_eq!(left.len(), N, "{left:?}");
    assert!(left.iter().all(|i| i.release() == Some(v2.id())), "the stopped v1 instance was deleted too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_flags_the_wrong_image_and_machine_type_that_gce_reports() {
    let fake = support::fake().await;
    let (provider, traffic) = group_env(&fake, None).await;
    let v1 = support::release("web", (1, 0, 0), &image(1));
    let d = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .strategy(BlueGreen::new())
        .desired(2)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let managed = provider.describe(&Query::service("web")).await.unwrap();
    assert!(managed.iter().all(|i| i.observed.image.as_deref() == Some(image(1).as_str())), "{managed:?}");
    // Two instances made outside the pipeline with v1's labels copied: one boots another image,
    // one runs on another machine type. Only what GCE reports can tell them apart.
    let labels = managed[0].labels.as_ref().clone();
    for (name, source, machine) in [("copy-image", image(2), "e2-small"), ("copy-machine", image(1), "e2-medium")] {
        let disk = model::AttachedDisk::new()
            .set_boot(true)
            .set_auto_delete(true)
            .set_initialize_params(model::AttachedDiskInitializeParams::new().set_source_image(source));
        let body = model::Instance::new()
            .set_name(name)
            .set_machine_type(format!("zones/{ZONE}/machineTypes/{machine}"))
            .set_labels(labels.clone())
            .set_disks([disk])
            .set_network_interfaces([model::NetworkInterface::new().set_network("global/networks/default")]);
        provider.instances_client().insert().set_project(PROJECT).set_zone(ZONE).set_body(body).send().await.unwrap();
    }
    let report = Audit::new(&provider, &traffic).run(&v1).await.unwrap();
    let verdict = |name: &str| {
        report.findings.iter().find(|f| f.id.as_str() == format!("{ZONE}/{name}")).map(|f| f.verdict.clone())
    };
    match verdict("copy-image") {
        Some(Verdict::WrongArtifact { detail }) => assert!(detail.contains("web-v2"), "{detail}"),
        other => panic!("copy-image: {other:?}\n{}", report.table()),
    }
    match verdict("copy-machine") {
        Some(Verdict::WrongBaseline { detail }) => assert!(detail.contains("e2-medium"), "{detail}"),
        other => panic!("copy-machine: {other:?}\n{}", report.table()),
    }
    let ok = report.findings.iter().filter(|f| matches!(f.verdict, Verdict::Ok)).count();
    assert_eq!(ok, 2, "the two real instances are fine:\n{}", report.table());
}

/// A journal that dies (panics, as a killed process stops) before its `crash_at`-th record.
#[derive(Debug)]
struct CrashingJournal {
    inner: MemoryJournal,
    crash_at: usize,
    appended: std::sync::atomic::AtomicUsize,
}

impl Journal for CrashingJournal {
    fn append(&self, service: &str, record: &JournalRecord) -> immut_core::Result<()> {
        if self.appended.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == self.crash_at {
            panic!("simulated crash before journal record {}", self.crash_at);
        }
        self.inner.append(service, record)
    }
    fn read(&self, service: &str) -> immut_core::Result<JournalRead> {
        self.inner.read(service)
    }
    fn lock(&self, service: &str, deployment: &immut_core::DeploymentId) -> immut_core::Result<LockGuard> {
        self.inner.lock(service, deployment)
    }
    fn holder(&self, service: &str) -> immut_core::Result<Option<immut_core::DeploymentId>> {
        self.inner.holder(service)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_killed_at_every_journal_record_resumes_to_a_clean_end() {
    // Keeps the deliberate crashes out of the output; any other panic is reported.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("simulated crash")) {
            default(info);
        }
    }));
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let env = || async {
        let fake = support::fast_fake().await;
        let provider = support::builder(&fake).operation_poll(Duration::from_millis(5)).build().await.unwrap();
        let stack = support::stack(&provider, Duration::ZERO).await;
        let traffic = support::switch(&provider, &stack);
        (fake, provider, traffic)
    };
    let deployer = |provider: &GcpProvider, traffic: &GcpTraffic, journal: Arc<dyn Journal>| {
        Deployer::builder()
            .provider(provider.clone())
            .traffic(traffic.clone())
            .health(AllOf::default().and(ProviderStatus).and(traffic.clone()))
            .strategy(BlueGreen::new())
            .desired(3)
            .poll_interval(Duration::from_millis(20))
            .journal_arc(journal)
            .build()
            .unwrap()
    };
    // An uninterrupted run counts the records: each is a kill point.
    let total = {
        let (_fake, provider, traffic) = env().await;
        assert!(
            deployer(&provider, &traffic, Arc::new(MemoryJournal::new())).deploy(v1.clone()).run().await.succeeded()
        );
        let journal = MemoryJournal::new();
        let d = deployer(&provider, &traffic, Arc::new(journal.clone()));
        assert!(d.deploy(v2.clone()).with_previous(v1.clone()).run().await.succeeded());
        journal.read("web").unwrap().records.len()
    };
    assert!(total > 5, "{total} records");
    for crash_at in 0..total {
        let (fake, provider, traffic) = env().await;
        assert!(
            deployer(&provider, &traffic, Arc::new(MemoryJournal::new())).deploy(v1.clone()).run().await.succeeded()
        );
        let journal = MemoryJournal::new();
        let crashing = Arc::new(CrashingJournal { inner: journal.clone(), crash_at, appended: Default::default() });
        let run =
            tokio::spawn(deployer(&provider, &traffic, crashing).deploy(v2.clone()).with_previous(v1.clone()).run());
        assert!(run.await.unwrap_err().is_panic(), "crash {crash_at}: the run should have died");
        let resumed = deployer(&provider, &traffic, Arc::new(journal)).resume("web").unwrap();
        let Some(resumed) = resumed else {
            assert_eq!(crash_at, 0, "only a run that died before its first record leaves nothing to resume");
            continue;
        };
        let outcome = resumed.run().await;
        assert!(outcome.succeeded(), "crash {crash_at}: {}", outcome.summary());
        let left = all(&provider).await;
        assert!(
            left.len() == 3 && left.iter().all(|i| i.release() == Some(v2.id())),
            "crash {crash_at}: exactly 3 instances of v2, nothing launched twice or left over: {left:?}"
        );
        assert_eq!(traffic.serving().await.unwrap().len(), 3, "crash {crash_at}");
        drop(fake);
    }
    println!("kill points exercised on the fake: {total}");
}
