//! End-to-end deployments of 6 Azure VMs through the Deployer, against the fake ARM:
//! blue/green by switching the load-balancing rules (and rollbacks), rolling and canary through
//! one pool, throttling and 5xx, a lost PUT answer, an allocation failure, deallocated VMs, the
//! audit reading what ARM reports, concurrent pool changes, ARM's rate-limit headers, and a
//! deployment killed at every journal record. After each, nothing of the test is left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_azure::fake::{FakeArm, Fault, FaultRule, Settings};
use immut_azure::{AzureProvider, AzureTraffic, Bucket, Pacing};
use immut_core::audit::{Audit, Verdict};
use immut_core::engine::{Event, RetryPolicy};
use immut_core::journal::{Journal, JournalRead, JournalRecord, LockGuard, MemoryJournal};
use immut_core::{
    AllOf, BlueGreen, Canary, Count, Deployer, DeployerBuilder, FnCheck, Health, Instance, InstanceId, InstanceState,
    Phase, Provider, ProviderExt, ProviderStatus, Query, Release, Rolling, Traffic,
};

use crate::conformance::hand_vm;
use crate::support::{self, GROUP, SUB, image};

const N: usize = 6;

fn deployer(
    provider: &AzureProvider,
    traffic: &AzureTraffic,
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

async fn live(provider: &AzureProvider, release: &Release) -> usize {
    provider.describe(&Query::service("web").with_release(release.id().clone())).await.unwrap().len()
}

async fn all(provider: &AzureProvider) -> Vec<Instance> {
    provider.describe(&Query::service("web").with_terminated()).await.unwrap()
}

async fn serving_release(provider: &AzureProvider, traffic: &AzureTraffic, release: &Release) -> bool {
    let serving = traffic.serving().await.unwrap();
    let instances = provider.describe(&Query::ids(serving.clone())).await.unwrap();
    serving.len() == N && instances.len() == N && instances.iter().all(|i| i.release() == Some(release.id()))
}

/// Removes what is left of the service and checks that no VM, NIC or disk of it remains.
async fn clean_up(fake: &FakeArm, provider: &AzureProvider, traffic: &AzureTraffic) {
    let ids: Vec<InstanceId> = all(provider).await.into_iter().map(|i| i.id).collect();
    traffic.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    support::assert_clean(fake, "web-");
}

async fn env(settings: Settings, pacing: Option<Pacing>, blue_green: bool) -> (FakeArm, AzureProvider, AzureTraffic) {
    let fake = support::fake_with(settings).await;
    let mut b = support::builder(&fake);
    if let Some(p) = pacing {
        b = b.pacing(p);
    }
    let provider = b.build().unwrap();
    let stack = support::stack(&provider, Duration::from_millis(0)).await;
    let traffic = if blue_green { support::switch(&provider, &stack) } else { support::pool(&provider, &stack) };
    (fake, provider, traffic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_rule_and_an_unhealthy_release_never_gets_traffic() {
    let (fake, provider, traffic) = env(support::settings(), None, true).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, BlueGreen::new()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    assert!(serving_release(&provider, &traffic, &v1).await);
    assert_eq!(traffic.active_pool().await.unwrap().as_deref(), Some("web-blue"));
    let before = provider.calls();
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(traffic.active_pool().await.unwrap().as_deref(), Some("web-green"), "the rule points at the other pool");
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0, "blue deleted after the switch");
    let puts = provider.calls()["VirtualMachines_CreateOrUpdate"] - before["VirtualMachines_CreateOrUpdate"];
    assert_eq!(puts, N as u64, "one PUT per VM");

    // The load balancer's own probe says v3 is never healthy: its VMs are probed in the idle
    // pool (the test rule), never switched to, and the rollback deletes them.
    fake.inject(FaultRule::always("LoadBalancerLoadBalancingRules_Health", Fault::Unhealthy).target("versions/3.0.0"));
    let v3 = support::release("web", (3, 0, 0), &image(3));
    let failing =
        deployer(&provider, &traffic, BlueGreen::new()).progress_deadline(Duration::from_secs(3)).build().unwrap();
    let outcome = failing.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 kept its traffic");
    assert_eq!(traffic.active_pool().await.unwrap().as_deref(), Some("web-green"), "never switched");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
    assert!(support::updated_in_place(&fake).is_empty());
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rolls_back_by_switching_back_when_the_bake_fails() {
    let (fake, provider, traffic) = env(support::settings(), None, true).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    assert!(
        deployer(&provider, &traffic, BlueGreen::new()).build().unwrap().deploy(v1.clone()).run().await.succeeded()
    );
    let switched = Arc::new(AtomicBool::new(false));
    let flag = switched.clone();
    let v2_id = v2.id().clone();
    let sick_after_switch = FnCheck(move |i: &Instance| {
        if i.release() == Some(&v2_id) && flag.load(Ordering::SeqCst) {
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
                switched.store(true, Ordering::SeqCst);
            }
        })
        .await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v1).await, "blue serves again");
    assert_eq!(traffic.active_pool().await.unwrap().as_deref(), Some("web-blue"), "one switch back");
    assert_eq!(live(&provider, &v2).await, 0, "green deleted");
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_through_one_pool_and_an_allocation_failure_rolls_back_cleanly() {
    let (fake, provider, traffic) = env(support::settings(), None, false).await;
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

    // Azure has no capacity for v3's second wave: the create ends Failed with AllocationFailed,
    // the VM stays in Failed, and that is QuotaExceeded, not retried; the rollback restores v2
    // and deletes the failed VM with its NIC and disk.
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
                    "VirtualMachines_CreateOrUpdate",
                    Fault::OperationError {
                        code: "AllocationFailed".into(),
                        message: "Allocation failed. We do not have sufficient capacity for the requested VM size in this region.".into(),
                    },
                    1,
                ));
            }
            seen.lock().unwrap().push(e.clone());
        })
        .await;
    match &outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("QuotaExceeded") && reason.contains("AllocationFailed"), "{reason}")
        }
        other => panic!("{other:?}: {}", outcome.summary()),
    }
    assert_eq!(fake.faults_fired()["VirtualMachines_CreateOrUpdate:operation_error"], 1);
    let retried_launch =
        events.lock().unwrap().iter().any(|e| matches!(e, Event::Retrying { operation, .. } if operation == "launch"));
    assert!(!retried_launch, "capacity is not retried");
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 serves again, {N} strong");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
    assert_eq!(all(&provider).await.len(), N, "the failed VM was deleted too");
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_steps_through_one_pool_and_a_failing_canary_rolls_back() {
    let (fake, provider, traffic) = env(support::settings(), None, false).await;
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
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_and_the_deployment_completes() {
    // Tight write pacing, so that the client-side buckets show in the events too.
    let pacing = Pacing { writes: Bucket { burst: 3, per_second: 20 }, ..support::fast_pacing() };
    let (fake, provider, traffic) = env(support::settings(), Some(pacing), false).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(3))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    fake.inject(FaultRule::new("VirtualMachines_CreateOrUpdate", Fault::RateLimited { status: 429 }, 1));
    fake.inject(FaultRule::new("VirtualMachines_List", Fault::ServerError { status: 503 }, 2));
    fake.inject(FaultRule::new("VirtualMachines_Delete", Fault::ServerError { status: 500 }, 1));
    fake.inject(FaultRule::new("LoadBalancers_CreateOrUpdate", Fault::RateLimited { status: 429 }, 1));
    fake.inject(FaultRule::new("LoadBalancerLoadBalancingRules_Health", Fault::ServerError { status: 503 }, 2));
    fake.inject(FaultRule::new("ComputeOperations_Get", Fault::ServerError { status: 502 }, 1));
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
    assert_eq!(fired, 8, "{:?}", fake.faults_fired());
    assert!(
        retries.iter().any(|r| r.contains("RateLimited") && r.contains("TooManyRequests") && r.contains("Retry-After")),
        "{retries:?}"
    );
    assert!(retries.iter().any(|r| r.contains("Unavailable") && r.contains("ServiceUnavailable")), "{retries:?}");
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(all(&provider).await.len(), N, "no duplicate from a retried PUT, nothing left over");
    assert!(support::updated_in_place(&fake).is_empty());
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_put_answer_is_retried_without_a_duplicate_or_an_update_in_place() {
    let (fake, provider, traffic) = env(support::settings(), None, true).await;
    let v1 = support::release("web", (1, 0, 0), &image(1));
    // Applied by the fake, then the answer is lost: the engine retries; the PUT of the same
    // name meets If-None-Match: * (412) and the VM is adopted by its token.
    fake.inject(FaultRule::new("VirtualMachines_CreateOrUpdate", Fault::LoseResponse, 1));
    let mut retried = Vec::new();
    let outcome = deployer(&provider, &traffic, BlueGreen::new())
        .build()
        .unwrap()
        .deploy(v1.clone())
        .run_with(|e| {
            if let Event::Retrying { operation, .. } = e {
                retried.push(operation.clone());
            }
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(fake.faults_fired().get("VirtualMachines_CreateOrUpdate:lose_response"), Some(&1));
    assert!(retried.iter().any(|op| op == "launch"), "the lost call was retried: {retried:?}");
    assert_eq!(all(&provider).await.len(), N, "exactly {N} VMs were ever made");
    assert!(support::updated_in_place(&fake).is_empty(), "no VM was updated in place");
    // The same launch again (the engine's adoption aside) makes nothing new either.
    let request = immut_core::LaunchRequest::new(
        Arc::new(v1.clone()),
        2,
        &immut_core::DeploymentId::new("d-again"),
        immut_core::LaunchToken::new("d-again-w1"),
    );
    let first = provider.launch(&request).await.unwrap();
    let second = provider.launch(&request).await.unwrap();
    let ids = |v: &[Instance]| v.iter().map(|i| i.id.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(ids(&first), ids(&second));
    assert!(support::updated_in_place(&fake).is_empty());
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocated_vms_are_counted_and_cleaned_up() {
    let (fake, provider, traffic) = env(support::settings(), None, false).await;
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(2))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let victim = provider.describe(&Query::service("web")).await.unwrap()[0].id.clone();
    provider.compute_client().virtual_machines_client().deallocate(GROUP, victim.as_str(), SUB).send().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = provider.describe(&Query::ids([victim.clone()])).await.unwrap();
        if seen.first().is_some_and(|i| i.state == InstanceState::Stopped) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the deallocated VM is still listed, as Stopped: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let left = all(&provider).await;
    assert_eq!(left.len(), N, "{left:?}");
    assert!(left.iter().all(|i| i.release() == Some(v2.id())), "the deallocated v1 VM was deleted too");
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_flags_the_wrong_image_and_size_that_arm_reports() {
    let (fake, provider, traffic) = env(support::settings(), None, false).await;
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
    let tags = managed[0].labels.as_ref().clone();
    for (name, source, size) in
        [("web-copy-image", image(2), "Standard_B2s"), ("web-copy-size", image(1), "Standard_D2s_v5")]
    {
        let body: azure_mgmt_compute::models::VirtualMachine =
            serde_json::from_value(hand_vm(name, &source, size, Some(&tags))).unwrap();
        provider
            .compute_client()
            .virtual_machines_client()
            .create_or_update(GROUP, name, body, SUB)
            .send()
            .await
            .unwrap();
    }
    let report = Audit::new(&provider, &traffic).run(&v1).await.unwrap();
    let verdict = |name: &str| report.findings.iter().find(|f| f.id.as_str() == name).map(|f| f.verdict.clone());
    match verdict("web-copy-image") {
        Some(Verdict::WrongArtifact { detail }) => assert!(detail.contains("versions/2.0.0"), "{detail}"),
        other => panic!("web-copy-image: {other:?}\n{}", report.table()),
    }
    match verdict("web-copy-size") {
        Some(Verdict::WrongBaseline { detail }) => assert!(detail.contains("Standard_D2s_v5"), "{detail}"),
        other => panic!("web-copy-size: {other:?}\n{}", report.table()),
    }
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pool_changes_are_retried_under_if_match_and_never_lost() {
    let (fake, provider, traffic) = env(support::settings(), None, false).await;
    let v1 = support::release("web", (1, 0, 0), &image(1));
    let request = |t: &str| {
        immut_core::LaunchRequest::new(
            Arc::new(v1.clone()),
            3,
            &immut_core::DeploymentId::new("d"),
            immut_core::LaunchToken::new(t),
        )
    };
    let (a, b) = (provider.launch(&request("d-w1")).await.unwrap(), provider.launch(&request("d-w2")).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (a, b) = loop {
        let now = provider.describe(&Query::service("web")).await.unwrap();
        if now.iter().all(|i| i.state == InstanceState::Running) {
            let pick =
                |set: &[Instance]| now.iter().filter(|i| set.iter().any(|s| s.id == i.id)).cloned().collect::<Vec<_>>();
            break (pick(&a), pick(&b));
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    // Two attaches at once: one writes on an etag the other has just changed (412), reads
    // again and applies its change to the new state. Every round must keep both changes; the
    // rounds go on until the race has happened at least once.
    let all_ids: Vec<InstanceId> = a.iter().chain(&b).map(|i| i.id.clone()).collect();
    let conflicts =
        || fake.requests().iter().filter(|r| r.operation == "LoadBalancers_CreateOrUpdate" && r.status == 412).count();
    for round in 0..10 {
        let (ra, rb) = tokio::join!(traffic.attach(&a), traffic.attach(&b));
        ra.unwrap();
        rb.unwrap();
        let serving = traffic.serving().await.unwrap();
        assert_eq!(serving.len(), 6, "round {round}: both changes are in the pool: {serving:?}");
        if conflicts() > 0 {
            break;
        }
        traffic.detach(&all_ids).await.unwrap();
    }
    assert!(conflicts() >= 1, "the race was real: {:?}", fake.calls());
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_rate_limit_headers_slow_the_client_down_before_a_429() {
    // ARM's read bucket here is small (40, refilled at 20/s); the client's own read bucket has
    // ARM's refill rate but a burst too large to empty, so only the
    // x-ms-ratelimit-remaining-subscription-reads header can slow it.
    let settings = Settings { buckets: [[40, 20], [100_000, 100_000], [100_000, 100_000]], ..support::settings() };
    let pacing = Pacing { reads: Bucket { burst: 10_000, per_second: 20 }, ..support::fast_pacing() };
    let (fake, provider, traffic) = env(settings, Some(pacing), false).await;
    for _ in 0..60 {
        provider.describe(&Query::service("web")).await.unwrap();
    }
    let throttled = fake.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 0, "never throttled");
    assert!(provider.slowdowns() > 0, "the headers slowed the reads down");
    assert!(provider.pacing().waits > 0);
    clean_up(&fake, &provider, &traffic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_polled_as_retry_after_says() {
    let (fake, provider, traffic) =
        env(Settings { retry_after_s: 1, create_ms: 1500, ..support::settings() }, None, false).await;
    let v1 = support::release("web", (1, 0, 0), &image(1));
    let request = immut_core::LaunchRequest::new(
        Arc::new(v1),
        1,
        &immut_core::DeploymentId::new("d"),
        immut_core::LaunchToken::new("d-w1"),
    );
    provider.launch(&request).await.unwrap();
    let polls: Vec<u64> =
        fake.requests().iter().filter(|r| r.operation == "ComputeOperations_Get").map(|r| r.at_ms).collect();
    assert!(polls.len() >= 2 && polls.len() <= 3, "polled about every second for 1.5 s: {polls:?}");
    assert!(polls.windows(2).all(|w| w[1] - w[0] >= 950), "{polls:?}");
    assert_eq!(fake.calls().get("VirtualMachines_CreateOrUpdate"), Some(&1), "the PUT is never repeated to poll");
    clean_up(&fake, &provider, &traffic).await;
}

/// A journal that dies (panics, as a killed process stops) before its `crash_at`-th record.
#[derive(Debug)]
struct CrashingJournal {
    inner: MemoryJournal,
    crash_at: usize,
    appended: AtomicUsize,
}

impl Journal for CrashingJournal {
    fn append(&self, service: &str, record: &JournalRecord) -> immut_core::Result<()> {
        if self.appended.fetch_add(1, Ordering::SeqCst) == self.crash_at {
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
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("simulated crash")) {
            default(info);
        }
    }));
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    let fast = || Settings {
        create_ms: 30,
        boot_ms: 10,
        healthy_after_ms: 10,
        delete_ms: 20,
        lb_update_ms: 5,
        ..support::settings()
    };
    let deployer = |provider: &AzureProvider, traffic: &AzureTraffic, journal: Arc<dyn Journal>| {
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
    let total = {
        let (_fake, provider, traffic) = env(fast(), None, true).await;
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
        let (fake, provider, traffic) = env(fast(), None, true).await;
        assert!(
            deployer(&provider, &traffic, Arc::new(MemoryJournal::new())).deploy(v1.clone()).run().await.succeeded()
        );
        let journal = MemoryJournal::new();
        let crashing = Arc::new(CrashingJournal { inner: journal.clone(), crash_at, appended: Default::default() });
        let run =
            tokio::spawn(deployer(&provider, &traffic, crashing).deploy(v2.clone()).with_previous(v1.clone()).run());
        assert!(run.await.unwrap_err().is_panic(), "crash {crash_at}: the run should have died");
        let Some(resumed) = deployer(&provider, &traffic, Arc::new(journal)).resume("web").unwrap() else {
            assert_eq!(crash_at, 0, "only a run that died before its first record leaves nothing to resume");
            clean_up(&fake, &provider, &traffic).await;
            continue;
        };
        let outcome = resumed.run().await;
        assert!(outcome.succeeded(), "crash {crash_at}: {}", outcome.summary());
        let left = all(&provider).await;
        assert!(
            left.len() == 3 && left.iter().all(|i| i.release() == Some(v2.id())),
            "crash {crash_at}: exactly 3 VMs of v2, nothing launched twice or left over: {left:?}"
        );
        assert_eq!(traffic.serving().await.unwrap().len(), 3, "crash {crash_at}");
        assert!(support::updated_in_place(&fake).is_empty());
        clean_up(&fake, &provider, &traffic).await;
    }
    println!("kill points exercised on the fake: {total}");
}
