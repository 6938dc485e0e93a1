//! Blue/green as an ALB works, with the fault proxy standing in for ELB's health checks: new
//! targets stay `initial` for a while, as on AWS, where moto would call them healthy at once.

use std::time::{Duration, Instant};

use immut_core::{BlueGreen, Canary, Count, DeploymentId, LaunchRequest, LaunchToken, Phase, Provider, Query, Traffic};

use super::*;

/// A stack behind the fault proxy, and listener traffic with a short drain.
async fn proxied(name: &str) -> (support::Turn, FaultProxy, AwsProvider, stack::Stack, AwsTraffic) {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, name).await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_millis(200),
        )
        .unwrap();
    (turn, proxy, provider, stack, traffic)
}

/// The ids of a release's live instances.
async fn ids_of(provider: &AwsProvider, release: &Release) -> Vec<String> {
    provider
        .describe(&Query::service("web").with_release(release.id().clone()))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect()
}

/// The weights a ModifyListener request set, by group ARN.
fn weights(seen: &support::Seen) -> BTreeMapOf {
    let mut w = BTreeMapOf::new();
    for n in 1..=2 {
        let arn =
            seen.form.get(&format!("DefaultActions.member.1.ForwardConfig.TargetGroups.member.{n}.TargetGroupArn"));
        let weight = seen.form.get(&format!("DefaultActions.member.1.ForwardConfig.TargetGroups.member.{n}.Weight"));
        if let (Some(arn), Some(weight)) = (arn, weight) {
            w.insert(arn.clone(), weight.parse().unwrap());
        }
    }
    w
}

type BTreeMapOf = std::collections::BTreeMap<String, i32>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_only_once_elb_reports_the_new_targets_healthy() {
    const ELB_CHECKS: Duration = Duration::from_secs(2);
    let (_turn, proxy, provider, stack, traffic) = proxied("delayed").await;
    // From here on, every new target is `initial` for 2 s after its registration, as ELB
    // reports it until its health checks pass.
    proxy.delay_target_health(ELB_CHECKS);
    let (v1, v2, v3) = (
        support::release("web", (1, 0, 0), AMI),
        support::release("web", (2, 0, 0), AMI_2),
        support::release("web", (3, 0, 0), AMI),
    );
    let d = deployer(&provider, &traffic, BlueGreen::new().bake(Duration::from_secs(1))).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let old_group = serving_group(&traffic).await;

    let mut launched_at = None;
    let mut switched_at = None;
    let mut waits_before_switch = 0;
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| match e {
            Event::Launched { .. } => launched_at = Some(Instant::now()),
            Event::Switched { .. } => switched_at = Some(Instant::now()),
            Event::Step { decision: immut_core::Decision::Wait { .. }, .. } if switched_at.is_none() => {
                waits_before_switch += 1
            }
            _ => {}
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let new_group = serving_group(&traffic).await;
    assert_ne!(new_group, old_group);
    let (launched_at, switched_at) = (launched_at.unwrap(), switched_at.unwrap());
    assert!(
        switched_at - launched_at >= ELB_CHECKS,
        "the switch came {:?} after the launch, before ELB could have checked the targets",
        switched_at - launched_at
    );
    assert!(waits_before_switch > 0, "the engine waited while the targets were initial");
    // The one ModifyListener of this deployment went out after ELB (the proxy) had reported
    // every new target healthy in the group it moved traffic to.
    let modify = proxy.requests("ModifyListener").pop().expect("the switch");
    assert_eq!(weights(&modify)[&new_group], 999);
    assert_eq!(weights(&modify)[&old_group], 0, "the old group stays in the forward, probed, at 0");
    for id in ids_of(&provider, &v2).await {
        let healthy = proxy.healthy_at(&new_group, &id).unwrap_or_else(|| panic!("{id} was never reported healthy"));
        assert!(healthy <= modify.at, "{id} was switched to before ELB reported it healthy");
    }
    assert!(serving_release(&provider, &traffic, &v2).await);
    assert_eq!(live(&provider, &v1).await, 0);

    // The counterfactual: targets that ELB never passes. The engine never switches to them; the
    // deployment rolls back at its deadline, and the listener never moved.
    proxy.delay_target_health(Duration::from_secs(3600));
    let modifies = proxy.requests("ModifyListener").len();
    let stuck =
        deployer(&provider, &traffic, BlueGreen::new()).progress_deadline(Duration::from_secs(4)).build().unwrap();
    let outcome = stuck.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert_eq!(proxy.requests("ModifyListener").len(), modifies, "no switch to targets ELB never passed");
    assert!(serving_release(&provider, &traffic, &v2).await, "v2 kept its traffic");
    assert_eq!(live(&provider, &v3).await, 0, "no orphan of v3");

    // The switch itself refuses too, when asked directly: probe before the switch.
    let request =
        LaunchRequest::new(Arc::new(v3.clone()), 2, &DeploymentId::new("d-direct"), LaunchToken::new("t-direct"));
    let launched = provider.launch(&request).await.unwrap();
    let fresh = provider.describe(&Query::ids(launched.iter().map(|i| i.id.clone()))).await.unwrap();
    let v2_ids: Vec<InstanceId> = traffic.serving().await.unwrap();
    let impatient = traffic.clone().health_timeout(Duration::from_millis(600));
    let e = impatient.switch(&fresh, &v2_ids).await.unwrap_err();
    assert_eq!(e.kind(), immut_core::ErrorKind::Unhealthy, "{e}");
    assert!(e.message().contains("initial") && e.message().contains("traffic was not moved"), "{e}");
    assert_eq!(proxy.requests("ModifyListener").len(), modifies);
    assert_eq!(serving_group(&traffic).await, new_group);
    let _ = stack;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_only_reads_and_prepare_stages_new_instances_in_the_idle_group() {
    use immut_core::HealthCheck;
    let (_turn, proxy, provider, _stack, traffic) = proxied("prepare").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new()).desired(2).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let serving = serving_group(&traffic).await;
    let launch = |release: &Release, count: usize, token: &str| {
        let request = LaunchRequest::new(
            Arc::new(release.clone()),
            count,
            &DeploymentId::new("d-prepare"),
            LaunchToken::new(token),
        );
        let provider = provider.clone();
        async move {
            let launched = provider.launch(&request).await.unwrap();
            provider.describe(&Query::ids(launched.iter().map(|i| i.id.clone()))).await.unwrap()
        }
    };
    let (new, same) = (launch(&v2, 2, "t-new").await, launch(&v1, 1, "t-same").await);
    assert!(new.iter().chain(&same).all(|i| i.state == immut_core::InstanceState::Running));
    let registrations = || proxy.requests("RegisterTargets");
    let (registered, modified) = (registrations().len(), proxy.requests("ModifyListener").len());

    // The check reads: a new release's instance in neither group is unknown (it belongs in the
    // idle group for probing); one of the serving release passes (attach puts it there). The
    // check registers nothing and leaves the listener alone.
    let verdicts = traffic.check_many(&[new.clone(), same.clone()].concat()).await.unwrap();
    assert_eq!(verdicts, vec![Health::Unknown, Health::Unknown, Health::Healthy]);
    assert_eq!(registrations().len(), registered, "the health check registered targets");
    assert_eq!(proxy.requests("ModifyListener").len(), modified, "the health check changed the listener");

    // prepare stages the new release's instances in the idle group, at weight 0: ELB probes
    // them, no request reaches them. The serving release's instance is left for attach.
    traffic.prepare(&[new.clone(), same.clone()].concat()).await.unwrap();
    let sent = registrations();
    assert_eq!(sent.len(), registered + 1, "one RegisterTargets for the staged instances");
    let staged = &sent[registered].form;
    assert_ne!(staged.get("TargetGroupArn"), Some(&serving), "staged in the idle group, not the serving one");
    let mut ids: Vec<&String> =
        staged.iter().filter(|(k, _)| k.starts_with("Targets.member.") && k.ends_with(".Id")).map(|(_, v)| v).collect();
    ids.sort();
    let mut want: Vec<String> = new.iter().map(|i| i.id.to_string()).collect();
    want.sort();
    assert_eq!(ids, want.iter().collect::<Vec<_>>(), "only the new release's instances");
    assert_eq!(serving_group(&traffic).await, serving, "traffic did not move");
    let serving_ids = traffic.serving().await.unwrap();
    assert!(new.iter().all(|i| !serving_ids.contains(&i.id)), "staged instances get no requests");

    // Again: idempotent, nothing more is sent. ELB's verdict on them now comes from the idle group.
    traffic.prepare(&new).await.unwrap();
    assert_eq!(registrations().len(), registered + 1, "a second prepare registers nothing");
    assert_eq!(traffic.check_many(&new).await.unwrap(), vec![Health::Healthy, Health::Healthy]);
    use immut_core::ProviderExt;
    provider.terminate_all(&[new, same].concat().into_iter().map(|i| i.id).collect::<Vec<_>>()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_modify_listener_answer_is_retried_to_the_same_end() {
    let (_turn, proxy, provider, _stack, traffic) = proxied("lost-switch").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new()).build().unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let old_group = serving_group(&traffic).await;
    let before = proxy.requests("ModifyListener").len();
    // ELB applies the switch, and the answer is lost: the engine sees a 500 and retries.
    proxy.plan("ModifyListener", FaultPlan { lose_responses: 1, ..FaultPlan::default() });
    let v1_ids = ids_of(&provider, &v1).await;
    let watcher = provider
        .listener_switch(
            &_stack.listener_arn,
            &_stack.blue_target_group_arn,
            &_stack.green_target_group_arn,
            Duration::ZERO,
        )
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut retried = Vec::new();
    let run = async {
        let outcome = d
            .deploy(v2.clone())
            .with_previous(v1.clone())
            .run_with(|e| {
                if let Event::Retrying { operation, error, .. } = e {
                    retried.push(format!("{operation}: {error}"));
                }
            })
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        outcome
    };
    let watch = async {
        let mut seen = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            seen.push(watcher.serving().await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    let (outcome, seen) = tokio::join!(run, watch);
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(proxy.injected().get("ModifyListener:lost_response"), Some(&1));
    assert!(retried.iter().any(|r| r.starts_with("switch") && r.contains("InternalError")), "{retried:?}");
    let sent = proxy.requests("ModifyListener").len() - before;
    assert_eq!(sent, 1, "the retry found the listener at its end and sent nothing more");
    let new_group = serving_group(&traffic).await;
    assert_ne!(new_group, old_group, "traffic did not flip back");
    assert!(serving_release(&provider, &traffic, &v2).await, "only v2 serves");
    // Every read of the serving set during the deployment held one release, never both.
    let v2_ids = ids_of(&provider, &v2).await;
    for (n, serving) in seen.iter().enumerate() {
        let ids: Vec<String> = serving.iter().map(|i| i.to_string()).collect();
        let old = ids.iter().filter(|i| v1_ids.contains(i)).count();
        let new = ids.iter().filter(|i| v2_ids.contains(i)).count();
        assert!(old == 0 || new == 0, "read {n} saw both releases serving: {ids:?}");
        assert!(old + new > 0, "read {n}: the service went dark");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_through_the_listener_gets_its_share_of_requests_by_weight() {
    let (_turn, proxy, provider, _stack, traffic) = proxied("canary").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    assert!(
        deployer(&provider, &traffic, BlueGreen::new())
            .desired(4)
            .build()
            .unwrap()
            .deploy(v1.clone())
            .run()
            .await
            .succeeded()
    );
    let old_group = serving_group(&traffic).await;
    let before = proxy.requests("ModifyListener").len();
    let canary = Canary::new([Count::Count(1), Count::Percent(50)]);
    let outcome = deployer(&provider, &traffic, canary)
        .desired(4)
        .build()
        .unwrap()
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run()
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let new_group = serving_group(&traffic).await;
    assert_ne!(new_group, old_group, "the canary went to the idle group, staged and probed there");
    let steps: Vec<(i32, i32)> = proxy.requests("ModifyListener")[before..]
        .iter()
        .map(|m| {
            let w = weights(m);
            (w[&old_group], w[&new_group])
        })
        .collect();
    // Each instance gets the same share: with 4 old and 1 canary, 999 to 250; then 1:1 with 2
    // of each; at the end everything goes to the new group.
    let share = |(old, new): (i32, i32)| f64::from(new) / f64::from(old + new);
    assert!(steps.iter().any(|&w| (share(w) - 0.2).abs() < 0.01), "the canary's 1 of 5 got 20%: {steps:?}");
    assert!(steps.iter().any(|&w| (share(w) - 0.5).abs() < 0.01), "the 50% step got half: {steps:?}");
    assert_eq!(steps.last(), Some(&(0, 999)), "all traffic on the new release at the end: {steps:?}");
    assert_eq!(live(&provider, &v1).await, 0);
    let mut serving: Vec<String> = traffic.serving().await.unwrap().into_iter().map(|i| i.to_string()).collect();
    let mut v2_ids = ids_of(&provider, &v2).await;
    serving.sort();
    v2_ids.sort();
    assert_eq!(serving, v2_ids, "the 4 instances of v2 serve, nothing else");
    assert_eq!(v2_ids.len(), 4);
}
