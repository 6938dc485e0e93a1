//! End-to-end deployments of EC2 instances through the Deployer, against moto: blue/green
//! with a listener switch, rolling through a target group, rollbacks, throttling and 5xx
//! through a fault-injecting proxy, and a lost launch response that must not duplicate.
//! The modules test what moto alone cannot show: ELB's health checks (`alb`: targets that
//! stay `initial`, a lost ModifyListener answer, canary weights), launch options, zones
//! without capacity, timeouts and credentials (`launch`), fleets of 500 and the scope of
//! unmanaged instances (`fleet`), and web identity credentials from the standard environment
//! against moto's STS (`web_identity`), and CloudWatch alarms as a canary's analysis
//! (`alarms`).

mod support;

#[path = "deployments_aws/alarms.rs"]
mod alarms;
#[path = "deployments_aws/alb.rs"]
mod alb;
#[path = "deployments_aws/fleet.rs"]
mod fleet;
#[path = "deployments_aws/launch.rs"]
mod launch;
#[path = "deployments_aws/sealed.rs"]
mod sealed;
#[path = "deployments_aws/web_identity.rs"]
mod web_identity;

use std::sync::Arc;
use std::time::Duration;

use immut_aws::{AwsProvider, AwsTraffic, stack};
use immut_core::engine::{Event, RetryPolicy};
use immut_core::{
    AllOf, BlueGreen, Count, Deployer, DeployerBuilder, FnCheck, Health, Instance, InstanceId, Phase, Provider, Query,
    Release, Rolling, Traffic,
};
use support::{AMI, AMI_2, FaultPlan, FaultProxy};

const N: usize = 6;

fn deployer(
    provider: &AwsProvider,
    traffic: &AwsTraffic,
    strategy: impl immut_core::ReplacementStrategy + 'static,
) -> DeployerBuilder {
    Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(provider.status_checks()).and(traffic.clone()))
        .strategy(strategy)
        .desired(N)
        .poll_interval(Duration::from_millis(200))
        .progress_deadline(Duration::from_secs(20))
        .retry(RetryPolicy {
            max_retries: 10,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        })
}

/// A turn on moto, a provider, and a blue/green stack with listener-switch traffic.
async fn listener_stack(name: &str) -> (support::Turn, AwsProvider, stack::Stack, AwsTraffic) {
    let turn = support::turn().await;
    let provider = support::provider(&turn.endpoint).await;
    let stack = stack::create(&provider, name).await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_secs(5),
        )
        .unwrap();
    (turn, provider, stack, traffic)
}

async fn live(provider: &AwsProvider, release: &Release) -> usize {
    provider.describe(&Query::service("web").with_release(release.id().clone())).await.unwrap().len()
}

/// The group the listener sends every request to (weight above 0, the other at 0).
async fn serving_group(traffic: &AwsTraffic) -> String {
    let forwarding = traffic.forwarding().await.unwrap();
    let serving: Vec<&(String, i32)> = forwarding.iter().filter(|(_, w)| *w > 0).collect();
    assert_eq!(serving.len(), 1, "exactly one group takes traffic: {forwarding:?}");
    assert_eq!(forwarding.len(), 2, "both groups stay in the forward, so ELB probes both: {forwarding:?}");
    serving[0].0.clone()
}

fn modify_listener(provider: &AwsProvider) -> u64 {
    provider.calls().get("ModifyListener").copied().unwrap_or(0)
}

async fn serving_release(provider: &AwsProvider, traffic: &AwsTraffic, release: &Release) -> bool {
    let serving = traffic.serving().await.unwrap();
    let instances = provider.describe(&Query::ids(serving.clone())).await.unwrap();
    serving.len() == N && instances.len() == N && instances.iter().all(|i| i.release() == Some(release.id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_listener_and_a_rollback_switches_back() {
    let (_turn, provider, stack, traffic) = listener_stack("bg").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    assert!(serving_release(&provider, &traffic, &v1).await);
    let first = serving_group(&traffic).await;

    let switches = modify_listener(&provider);
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(modify_listener(&provider) - switches, 1, "one listener switch");
    assert!(serving_release(&provider, &traffic, &v2).await);
    let second = serving_group(&traffic).await;
    assert_ne!(first, second, "traffic moved to the other group");
    assert!([&stack.blue_target_group_arn, &stack.green_target_group_arn].contains(&&second));
    assert_eq!(live(&provider, &v1).await, 0, "the old colour terminated after the switch");
    let old_targets = provider.elb().describe_target_health().target_group_arn(&first).send().await.unwrap();
    assert!(old_targets.target_health_descriptions().is_empty(), "the old targets were deregistered");

    // A release whose instances never pass health: launched into the idle group, never
    // switched to; the rollback terminates them and the listener never moves.
    let v3 = support::release("web", (3, 0, 0), AMI);
    let failing = deployer(&provider, &traffic, BlueGreen::new())
        .health(FnCheck({
            let v3 = v3.id().clone();
            move |i: &Instance| {
                if i.release() == Some(&v3) {
                    Health::Unhealthy("the new release never answers".into())
                } else {
                    Health::Healthy
                }
            }
        }))
        .progress_deadline(Duration::from_secs(3))
        .build()
        .unwrap();
    let switches = modify_listener(&provider);
    let outcome = failing.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 kept its traffic");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
    assert_eq!(modify_listener(&provider), switches, "the listener never moved");
    assert_eq!(serving_group(&traffic).await, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rolls_back_by_switching_back_when_the_bake_fails() {
    let (_turn, provider, _stack, traffic) = listener_stack("bake").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    assert!(
        deployer(&provider, &traffic, BlueGreen::new()).build().unwrap().deploy(v1.clone()).run().await.succeeded()
    );
    let (blue, switches) = (serving_group(&traffic).await, modify_listener(&provider));
    // v2 looks healthy until it takes traffic, then fails during the bake.
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = switched.clone();
    let sick_after_switch = FnCheck(move |i: &Instance| {
        let v2_instance = i.observed.image.as_deref() == Some(AMI_2);
        if v2_instance && flag.load(std::sync::atomic::Ordering::SeqCst) {
            Health::Unhealthy("500s".into())
        } else {
            Health::Healthy
        }
    });
    let d = deployer(&provider, &traffic, BlueGreen::new().bake(Duration::from_secs(5)))
        .health(AllOf::default().and(provider.status_checks()).and(sick_after_switch))
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
    assert_eq!(modify_listener(&provider) - switches, 2, "one switch forward, one switch back");
    assert!(serving_release(&provider, &traffic, &v1).await, "blue serves again");
    assert_eq!(serving_group(&traffic).await, blue);
    assert_eq!(live(&provider, &v2).await, 0, "green terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_through_a_target_group_and_quota_fails_closed() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, "rolling").await.unwrap();
    let traffic = provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(5)).unwrap();
    let (v1, v2, v3) = (
        support::release("web", (1, 0, 0), AMI),
        support::release("web", (2, 0, 0), AMI_2),
        support::release("web", (3, 0, 0), AMI),
    );
    let strategy = Rolling::new().max_surge(Count::Count(2));
    let d = deployer(&provider, &traffic, strategy.clone()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(outcome.waves, 3);
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0);

    // Capacity runs out on the second wave of v3: no retry, the deployment fails closed and
    // the rollback relaunches v2 where v3 replaced it.
    let outcome_events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let events = outcome_events.clone();
    let mut first_wave_done = false;
    let outcome = d
        .deploy(v3.clone())
        .with_previous(v2.clone())
        .run_with(|e| {
            if let Event::Launched { .. } = e
                && !first_wave_done
            {
                first_wave_done = true;
                proxy.plan("RunInstances", FaultPlan { no_capacity: 1, ..FaultPlan::default() });
            }
            events.lock().unwrap().push(e.clone());
        })
        .await;
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("QuotaExceeded"), "{reason}"),
        other => panic!("{other:?}: {}", outcome.summary()),
    }
    assert!(
        !outcome_events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Retrying { operation, .. } if operation == "launch")),
        "quota is not retried"
    );
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 serves again, {N} strong");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_and_the_deployment_completes() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    // Tight describe pacing, so that the client-side rate limit shows in the events too.
    let pacing =
        immut_aws::Pacing { describe: immut_aws::Bucket { burst: 3, per_second: 15 }, ..immut_aws::Pacing::default() };
    let provider = support::provider_with(&proxy.endpoint, pacing).await;
    let stack = stack::create(&provider, "throttle").await.unwrap();
    let traffic = provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(5)).unwrap();
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, Rolling::new().max_surge(Count::Count(3))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    proxy.plan("RunInstances", FaultPlan { throttle: 2, server_errors: 1, ..FaultPlan::default() });
    proxy.plan("DescribeInstances", FaultPlan { throttle: 3, ..FaultPlan::default() });
    proxy.plan("TerminateInstances", FaultPlan { server_errors: 1, ..FaultPlan::default() });
    proxy.plan("RegisterTargets", FaultPlan { throttle: 1, ..FaultPlan::default() });
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
    assert!(paced > 0, "pacing shows in the events");
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let injected = proxy.injected();
    assert_eq!(injected.values().sum::<usize>(), 8, "{injected:?}");
    assert!(retries.iter().any(|r| r.contains("RateLimited") && r.contains("RequestLimitExceeded")), "{retries:?}");
    assert!(retries.iter().any(|r| r.contains("Unavailable") && r.contains("InternalError")), "{retries:?}");
    assert!(retries.iter().any(|r| r.contains("Throttling")), "{retries:?}");
    assert_eq!(outcome.calls.retries as usize, retries.len());
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_launch_response_is_adopted_not_launched_twice() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, "dup").await.unwrap();
    let traffic = provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(5)).unwrap();
    let v1 = support::release("web", (1, 0, 0), AMI);
    // moto ignores ClientToken: only the engine's adopt-before-launch prevents a duplicate.
    proxy.plan("RunInstances", FaultPlan { lose_responses: 1, ..FaultPlan::default() });
    let mut adopted = Vec::new();
    let outcome = deployer(&provider, &traffic, BlueGreen::new())
        .build()
        .unwrap()
        .deploy(v1.clone())
        .run_with(|e| {
            if let Event::Launched { adopted: a, .. } = e {
                adopted.push(*a);
            }
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(proxy.injected().get("RunInstances:lost_response"), Some(&1));
    assert_eq!(adopted, vec![N], "the retry adopted the {N} instances the lost call launched");
    let all = provider.describe(&Query::service("web").with_terminated()).await.unwrap();
    assert_eq!(all.len(), N, "exactly {N} instances were ever launched: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_follows_every_page_and_pacing_holds_calls_back() {
    let turn = support::turn().await;
    let tight =
        immut_aws::Pacing { describe: immut_aws::Bucket { burst: 2, per_second: 10 }, ..immut_aws::Pacing::default() };
    let provider = support::builder(&turn.endpoint).describe_page_size(5).pacing(tight).build().await.unwrap();
    let release = support::release("paged", (1, 0, 0), AMI);
    // Seven launch calls make seven reservations; moto pages by reservation.
    for wave in 0..7 {
        let request = immut_core::LaunchRequest::new(
            Arc::new(release.clone()),
            1,
            &immut_core::DeploymentId::new("d-paged"),
            immut_core::LaunchToken::new(format!("t-{wave}")),
        );
        provider.launch(&request).await.unwrap();
    }
    let before = provider.calls().get("DescribeInstances").copied().unwrap_or(0);
    let found = provider.describe(&Query::service("paged")).await.unwrap();
    assert_eq!(found.len(), 7);
    let pages = provider.calls()["DescribeInstances"] - before;
    assert!(pages >= 2, "expected several pages, made {pages} calls");
    assert!(provider.pacing().waits > 0, "a burst of 2 describes must make later calls wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_target_health_read_during_the_bake_is_retried_and_the_deployment_succeeds() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, "bake-throttle").await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_millis(300),
        )
        .unwrap();
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new().bake(Duration::from_secs(3))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    // Once traffic has moved, the balancer's health API is throttled: the serving read and the
    // target-health check of the bake fail a few times. Neither is a verdict on the targets.
    const THROTTLED: usize = 4;
    let mut retries = Vec::new();
    let mut baking = false;
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| match e {
            Event::Switched { .. } => {
                baking = true;
                proxy.plan("DescribeTargetHealth", FaultPlan { throttle: THROTTLED, ..FaultPlan::default() });
            }
            Event::Retrying { operation, error, .. } if baking => retries.push(format!("{operation}: {error}")),
            _ => {}
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(proxy.injected().get("DescribeTargetHealth:throttle"), Some(&THROTTLED), "{:?}", proxy.injected());
    let throttled: Vec<&String> =
        retries.iter().filter(|r| r.contains("DescribeTargetHealth") && r.contains("Throttling")).collect();
    assert_eq!(throttled.len(), THROTTLED, "each throttled read was retried once by the engine: {retries:?}");
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 serves after the bake");
    assert_eq!(live(&provider, &v1).await, 0, "blue terminated after the bake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_lists_over_200_are_sent_in_chunks_on_every_path() {
    use aws_sdk_ec2::types::Filter;
    use immut_core::{DeploymentId, HealthCheck, LaunchRequest, LaunchToken, ProviderExt};
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    // The proxy refuses what EC2 refuses, a filter of 201 values, so the calls below prove the
    // chunking.
    let too_many: Vec<String> = (0..=support::MAX_FILTER_VALUES).map(|i| format!("i-{i:017x}")).collect();
    let refused = provider
        .ec2()
        .describe_instances()
        .filters(Filter::builder().name("instance-id").set_values(Some(too_many)).build())
        .send()
        .await;
    assert!(refused.is_err(), "the proxy lets a filter of 201 values through");
    let stack = stack::create(&provider, "chunks").await.unwrap();
    let release = support::release("chunks", (1, 0, 0), AMI);
    let mut launched = Vec::new();
    for (wave, count) in [100, 100, 10].into_iter().enumerate() {
        let request = LaunchRequest::new(
            Arc::new(release.clone()),
            count,
            &DeploymentId::new("d-chunks"),
            LaunchToken::new(format!("t-chunks-{wave}")),
        );
        launched.extend(provider.launch(&request).await.unwrap());
    }
    let mut ids: Vec<_> = launched.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    assert_eq!(ids.len(), 210);

    let found = provider.describe(&Query::ids(ids.clone())).await.unwrap();
    assert_eq!(found.len(), 210, "describe by 210 ids");
    let health = provider.status_checks().check_many(&found).await.unwrap();
    assert!(health.iter().all(Health::is_healthy), "DescribeInstanceStatus for 210 ids: {health:?}");

    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_millis(50),
        )
        .unwrap();
    let (few, many) = found.split_at(5);
    traffic.attach(few).await.unwrap();
    let few_ids: Vec<_> = few.iter().map(|i| i.id.clone()).collect();
    traffic.switch(many, &few_ids).await.unwrap();
    let mut serving = traffic.serving().await.unwrap();
    serving.sort();
    let mut many_ids: Vec<_> = many.iter().map(|i| i.id.clone()).collect();
    many_ids.sort();
    assert_eq!(serving, many_ids, "205 instances serve after the switch");
    traffic.detach(&ids).await.unwrap();
    assert!(traffic.serving().await.unwrap().is_empty(), "detach of 210 ids");

    provider.terminate_all(&ids).await.unwrap();
    assert!(provider.describe(&Query::ids(ids.clone())).await.unwrap().is_empty(), "terminate of 210 ids");
    let limits: Vec<(String, usize)> =
        proxy.injected().into_iter().filter(|(k, _)| k.ends_with(":too_many_filter_values")).collect();
    assert_eq!(limits, vec![("DescribeInstances:too_many_filter_values".to_owned(), 1)], "only the deliberate call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_switch_returns_only_after_the_drain() {
    use immut_core::{DeploymentId, LaunchRequest, LaunchToken};
    const DRAIN: Duration = Duration::from_millis(1500);
    let turn = support::turn().await;
    let provider = support::provider(&turn.endpoint).await;
    let stack = stack::create(&provider, "drain").await.unwrap();
    let traffic = provider
        .listener_switch(&stack.listener_arn, &stack.blue_target_group_arn, &stack.green_target_group_arn, DRAIN)
        .unwrap();
    let release = support::release("drain", (1, 0, 0), AMI);
    let launch = |token: &'static str| {
        let request =
            LaunchRequest::new(Arc::new(release.clone()), 2, &DeploymentId::new("d-drain"), LaunchToken::new(token));
        let provider = provider.clone();
        async move { provider.launch(&request).await.unwrap() }
    };
    let (blue, green) = (launch("t-blue").await, launch("t-green").await);
    let ids = |set: &[Instance]| set.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    // Described again: moto reports them running from the first describe on.
    let blue = provider.describe(&Query::ids(ids(&blue))).await.unwrap();
    let green = provider.describe(&Query::ids(ids(&green))).await.unwrap();
    traffic.attach(&blue).await.unwrap();

    let started = std::time::Instant::now();
    traffic.switch(&green, &ids(&blue)).await.unwrap();
    let took = started.elapsed();
    assert!(took >= DRAIN, "the switch returned after {took:?}, before the {DRAIN:?} drain of the old targets");
    let started = std::time::Instant::now();
    traffic.switch(&green, &ids(&blue)).await.unwrap();
    assert!(started.elapsed() >= DRAIN, "a repeated switch may follow a cut-short one: it drains too");
    assert_eq!(provider.calls()["ModifyListener"], 1, "the repeated switch did not move the listener");
    assert_eq!(serving_group(&traffic).await, stack.green_target_group_arn);
    // The old group kept its targets: the switch back registers nothing and moves the listener.
    let registered = provider.calls()["RegisterTargets"];
    traffic.switch(&blue, &ids(&green)).await.unwrap();
    assert_eq!(provider.calls()["RegisterTargets"], registered, "the old targets were still registered");
    assert_eq!(provider.calls()["ModifyListener"], 2);
    let mut serving = traffic.serving().await.unwrap();
    serving.sort();
    let mut want = ids(&blue);
    want.sort();
    assert_eq!(serving, want, "blue serves again");
}
