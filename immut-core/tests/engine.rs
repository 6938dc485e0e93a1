//! Engine scenarios on the simulator, in virtual time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_final_fleet, latencies, release};
use futures_util::StreamExt;
use immut_core::checker::Checker;
use immut_core::engine::{Event, ManualGate, Outcome, Phase};
use immut_core::sim::{Faults, SimProvider};
use immut_core::strategy::{Decision, FleetView, Limits, ReplacementStrategy};
use immut_core::{BlueGreen, Canary, Count, Deployer, DeployerBuilder, ErrorKind, Release, Rolling};

fn deployer(sim: &SimProvider, desired: usize) -> DeployerBuilder {
    sim.deployer().desired(desired).min_ready(Duration::from_secs(5)).progress_deadline(Duration::from_secs(300))
}

/// A deployer builder whose provider and traffic go through the independent checker, which
/// reads the simulator's ground truth on every call. Call it once the old fleet is seeded.
fn checked(
    sim: &SimProvider,
    desired: usize,
    strategy: impl ReplacementStrategy + 'static,
) -> (DeployerBuilder, Checker) {
    let checker = Checker::new(sim.clone(), "web", desired, strategy.limits(desired));
    let (provider, traffic) = checker.wrap(sim.clone(), sim.traffic());
    let builder = Deployer::builder()
        .provider(provider)
        .traffic(traffic)
        .health(sim.health())
        .change_feed(sim.feed())
        .strategy(strategy)
        .desired(desired)
        .min_ready(Duration::from_secs(5))
        .progress_deadline(Duration::from_secs(300));
    (builder, checker)
}

/// What a checked run saw: the outcome, the checker's violations (end state included), the
/// decisions the engine refused, and its retries.
struct Run {
    outcome: Outcome,
    violations: Vec<String>,
    refused: Vec<String>,
    retries: usize,
}

async fn run(deployer: &Deployer, checker: &Checker, new: &Release, old: Option<&Release>) -> Run {
    let mut deployment = deployer.deploy(new.clone());
    if let Some(old) = old {
        deployment = deployment.with_previous(old.clone());
    }
    let (mut refused, mut retries, mut outcome) = (Vec::new(), 0, None);
    let events = deployment.events();
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        serde_json::to_string(&event).expect("event serializes");
        match event {
            Event::InvariantViolated { invariant, detail } => refused.push(format!("{invariant}: {detail}")),
            Event::Retrying { .. } => retries += 1,
            Event::Finished { outcome: o } => outcome = Some(o),
            _ => {}
        }
    }
    let outcome = outcome.expect("the stream ends with Finished");
    let violations = checker.finish(&outcome, new, old);
    Run { outcome, violations, refused, retries }
}

#[tokio::test(start_paused = true)]
async fn rolling_replaces_six_one_at_a_time() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 6, true);
    let (builder, checker) = checked(&sim, 6, Rolling::new());
    let d = builder.build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    let outcome = c.outcome.clone();
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert_eq!(outcome.waves, 6);
    assert_eq!(outcome.serving.len(), 6, "the outcome lists the final serving set");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 6, 6).await;
    // One launch and one terminate per wave.
    assert_eq!(sim.calls().launch, 6);
    assert_eq!(sim.calls().terminate, 6);
}

/// Polled as against a real cloud (no promise of the next change): through the change feed,
/// the same deployment reads the fleet only when something changed, and ends the same way.
#[tokio::test(start_paused = true)]
async fn polling_through_the_change_feed_reads_only_what_changed() {
    let mut describes = Vec::new();
    for feed in [false, true] {
        let faults = Faults { no_next_change: true, ..Faults::default() };
        let sim = latencies(SimProvider::builder()).faults(faults).seed(5).jitter(0.2).build().unwrap();
        let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
        sim.seed(&v1, 6, true);
        let strategy = Rolling::new().max_surge(Count::Count(2));
        let checker = Checker::new(sim.clone(), "web", 6, strategy.limits(6));
        let (provider, traffic) = checker.wrap(sim.clone(), sim.traffic());
        let mut builder = Deployer::builder()
            .provider(provider)
            .traffic(traffic)
            .health(sim.health())
            .strategy(strategy)
            .desired(6)
            .min_ready(Duration::from_secs(5));
        if feed {
            builder = builder.change_feed(sim.feed());
        }
        let c = run(&builder.build().unwrap(), &checker, &v2, Some(&v1)).await;
        assert!(c.outcome.succeeded(), "{}", c.outcome.summary());
        assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
        assert_final_fleet(&sim, &c.outcome, &v2, Some(&v1), 6, 6).await;
        assert_eq!(c.outcome.calls.changes, sim.calls().changes, "every feed call is counted");
        assert_eq!(c.outcome.calls.deltas, sim.calls().deltas, "every list of changes is counted");
        assert_eq!(c.outcome.calls.changes > 0, feed, "{:?}", c.outcome.calls);
        describes.push(sim.calls().describe);
    }
    assert!(describes[1] * 2 < describes[0], "the feed spared most full reads: {describes:?}");
}

/// At N = 10 000, an observation through a change feed that lists what changed reads what
/// changed, not the fleet: after the first full read, no step reads more than a few instances
/// per instance the wave touched (launched, attached, detached, terminated), whatever N is.
#[tokio::test(start_paused = true)]
async fn a_poll_with_k_changes_reads_o_of_k_instances_at_n_10000() {
    const N: usize = 10_000;
    const K: usize = 10;
    let faults = Faults { no_next_change: true, ..Faults::default() };
    let sim = latencies(SimProvider::builder()).faults(faults).seed(3).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, N, true);
    let deployer = deployer(&sim, N)
        .strategy(Rolling::new().max_surge(Count::Count(K)).max_unavailable(Count::Count(0)))
        // No periodic full read within the steps watched: every read after the first is a patch.
        .full_read_every(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut deployment = deployer.deploy(v2).with_previous(v1);
    let mut before = sim.calls();
    let (mut patched_steps, mut waves_done) = (0, 0);
    for step in 1..=40 {
        assert!(deployment.step().await.is_none(), "the deployment ended early");
        let now = sim.calls();
        let read = (now.described - before.described) + (now.delta_instances - before.delta_instances);
        if step == 1 {
            assert!(read >= N as u64, "the first observation reads the fleet in full: {read}");
        } else {
            assert!(read <= 4 * K as u64, "step {step} read {read} instances for a wave of {K}");
        }
        patched_steps += usize::from(now.deltas > before.deltas);
        waves_done += deployment.take_events().iter().filter(|e| matches!(e, Event::Terminated { .. })).count();
        before = now;
    }
    assert_eq!(sim.calls().describe, 1 + sim.calls().launch, "one full read, and one adoption check per launch");
    assert!(patched_steps >= 30, "most steps patched their fleet: {patched_steps}");
    assert!(waves_done >= 2, "the steps watched replaced whole waves: {waves_done}");
}

#[tokio::test(start_paused = true)]
async fn canary_walks_its_steps_through_gates() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 10, true);
    let strategy = Canary::new([Count::Count(1), Count::Percent(50)]).pause(Duration::from_secs(60));
    let (builder, checker) = checked(&sim, 10, strategy);
    let d = builder.build().unwrap();
    let (v1c, v2c) = (v1.clone(), v2.clone());
    let mut gates = Vec::new();
    let outcome = d
        .deploy(v2c)
        .with_previous(v1c)
        .run_with(|e| {
            if let Event::GatePassed { gate } = e {
                gates.push(gate.clone())
            }
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(gates, vec!["canary-step-1", "canary-step-2"]);
    assert_eq!(checker.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(outcome.waves, 3);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 10, 10).await;
}

#[tokio::test(start_paused = true)]
async fn failing_canary_gate_rolls_back() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 4, true);
    let gate = ManualGate::new();
    gate.reject("canary-step-1", "error rate 7% over budget");
    let (builder, checker) = checked(&sim, 4, Canary::new([Count::Count(1)]));
    let d = builder.gate(gate).build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    let outcome = c.outcome.clone();
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("error rate 7%"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn never_healthy_release_exhausts_its_replacement_budget_and_rolls_back() {
    let v2 = release((1, 1, 0));
    let faults = Faults { never_healthy_releases: vec![v2.id().clone()], ..Faults::default() };
    let sim = latencies(SimProvider::builder()).faults(faults).build().unwrap();
    let v1 = release((1, 0, 0));
    sim.seed(&v1, 3, true);
    let (builder, checker) = checked(&sim, 3, BlueGreen::new());
    let d = builder.progress_deadline(Duration::from_secs(120)).build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    let outcome = c.outcome.clone();
    match &outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("Unhealthy") && reason.contains("replacement budget is exhausted"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

#[tokio::test(start_paused = true)]
async fn quota_midway_through_rolling_fails_closed_and_relaunches_the_old_release() {
    let v2 = release((1, 1, 0));
    let faults =
        Faults { failing_launch_calls: vec![3], failing_launch_release: Some(v2.id().clone()), ..Faults::default() };
    let sim = latencies(SimProvider::builder()).faults(faults).build().unwrap();
    let v1 = release((1, 0, 0));
    sim.seed(&v1, 4, true);
    let (builder, checker) = checked(&sim, 4, Rolling::new());
    let d = builder.build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    let outcome = c.outcome.clone();
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("QuotaExceeded"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_and_visible_in_events() {
    let faults = Faults { throttle_rate: 0.3, launch_failure_rate: 0.3, ..Faults::default() };
    let sim = latencies(SimProvider::builder()).faults(faults).seed(11).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 5, true);
    let retry = immut_core::engine::RetryPolicy { max_retries: 20, ..Default::default() };
    let (builder, checker) = checked(&sim, 5, Rolling::new().max_surge(Count::Count(2)));
    let d = builder.retry(retry).build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    let outcome = c.outcome.clone();
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert!(c.retries > 0 && sim.calls().throttled > 0, "retries {} throttled {}", c.retries, sim.calls().throttled);
    assert_eq!(outcome.calls.retries as usize, c.retries);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 5, 5).await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_rolls_back() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 3, true);
    let (builder, checker) = checked(&sim, 3, BlueGreen::new());
    let d = builder.build().unwrap();
    let deployment = d.deploy(v2.clone()).with_previous(v1.clone());
    let cancel = deployment.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        cancel.cancel();
    });
    let outcome = deployment.run().await;
    assert!(
        matches!(&outcome.phase, Phase::RolledBack { reason } if reason.contains("cancelled")),
        "{:?}",
        outcome.phase
    );
    assert_eq!(checker.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

#[tokio::test(start_paused = true)]
async fn manual_promotion_waits_for_approval() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 2, true);
    let gate = ManualGate::new();
    let strategy = BlueGreen::new().promotion(immut_core::strategy::Promotion::Manual);
    let (builder, checker) = checked(&sim, 2, strategy);
    let d = builder.gate(gate.clone()).build().unwrap();
    let approver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(200)).await;
        gate.approve("promote");
    });
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    approver.await.unwrap();
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(outcome.elapsed >= Duration::from_secs(200));
    assert_eq!(checker.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 2, 2).await;
}

#[tokio::test(start_paused = true)]
async fn first_deployment_starts_from_nothing() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    let (builder, checker) = checked(&sim, 3, Rolling::new().max_surge(Count::Percent(100)));
    let d = builder.build().unwrap();
    let c = run(&d, &checker, &v1, None).await;
    let outcome = c.outcome.clone();
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(c.violations.is_empty() && c.refused.is_empty(), "{:?} {:?}", c.violations, c.refused);
    assert_eq!(outcome.previous, None);
    assert_final_fleet(&sim, &outcome, &v1, None, 3, 0).await;
}

/// A deliberately wrong strategy: it detaches every old instance at once, dropping below the
/// floor. The engine must refuse the decision, report the violated invariant and roll back.
#[derive(Debug)]
struct DropsBelowFloor;

impl ReplacementStrategy for DropsBelowFloor {
    fn name(&self) -> &str {
        "drops_below_floor"
    }
    fn validate(&self, _desired: usize) -> immut_core::Result<()> {
        Ok(())
    }
    fn limits(&self, desired: usize) -> Limits {
        Limits { floor: desired, ceiling: desired + 1 }
    }
    fn decide(&self, view: &FleetView) -> Decision {
        if !view.old_serving_healthy.is_empty() {
            Decision::Detach { ids: view.old_serving_healthy.clone() }
        } else {
            Decision::Done
        }
    }
}

#[tokio::test(start_paused = true)]
async fn wrong_strategy_is_caught_by_the_invariant_checker() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 4, true);
    let (builder, checker) = checked(&sim, 4, DropsBelowFloor);
    let d = builder.build().unwrap();
    let c = run(&d, &checker, &v2, Some(&v1)).await;
    assert_eq!(c.refused.len(), 1, "{:?}", c.refused);
    assert!(c.refused[0].starts_with("healthy_floor"), "{:?}", c.refused);
    assert!(c.violations.is_empty(), "the engine let it happen: {:?}", c.violations);
    let outcome = c.outcome;
    assert!(
        matches!(&outcome.phase, Phase::RolledBack { reason } if reason.contains("InvariantViolated")),
        "{:?}",
        outcome.phase
    );
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
    assert_eq!(sim.calls().detach, 0, "nothing may have been detached");
}

#[tokio::test(start_paused = true)]
async fn bad_settings_fail_in_build_naming_the_field() {
    let sim = SimProvider::builder().build().unwrap();
    let e = deployer(&sim, 0).strategy(Rolling::new()).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("desired"), "{e}");
    let e = deployer(&sim, 3).strategy(Rolling::new().max_surge(Count::Count(0))).build().unwrap_err();
    assert!(e.to_string().contains("max_surge"), "{e}");
    let e = Deployer::builder().traffic(sim.traffic()).strategy(Rolling::new()).desired(1).build().unwrap_err();
    assert!(e.to_string().contains("provider"), "{e}");
    let e = SimProvider::builder().faults(Faults { throttle_rate: 1.5, ..Faults::default() }).build().unwrap_err();
    assert!(e.to_string().contains("faults.throttle_rate"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn retried_launch_adopts_by_token() {
    // The first attempt at the wave's launch is answered with a retryable error only after the
    // instances exist, as a lost response would be; the retry must adopt them, not duplicate.
    use async_trait::async_trait;
    use immut_core::{Instance, InstanceId, LaunchRequest, Provider, Query};
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Debug)]
    struct LosesFirstResponse(SimProvider, AtomicBool);
    #[async_trait]
    impl Provider for LosesFirstResponse {
        fn name(&self) -> &str {
            "lossy"
        }
        fn capabilities(&self) -> immut_core::Capabilities {
            self.0.capabilities()
        }
        async fn launch(&self, r: &LaunchRequest) -> immut_core::Result<Vec<Instance>> {
            let out = self.0.launch(r).await?;
            if !self.1.swap(true, Ordering::SeqCst) {
                return Err(immut_core::Error::new(ErrorKind::Unavailable, "connection reset"));
            }
            Ok(out)
        }
        async fn describe(&self, q: &Query) -> immut_core::Result<Vec<Instance>> {
            self.0.describe(q).await
        }
        async fn terminate(&self, ids: &[InstanceId]) -> immut_core::Result<()> {
            self.0.terminate(ids).await
        }
        fn next_change(&self) -> Option<tokio::time::Instant> {
            self.0.next_change()
        }
    }

    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, 3, true);
    let d = Deployer::builder()
        .provider_arc(Arc::new(LosesFirstResponse(sim.clone(), AtomicBool::new(false))))
        .traffic(sim.traffic())
        .health(sim.health())
        .strategy(BlueGreen::new())
        .desired(3)
        .build()
        .unwrap();
    let mut adopted = None;
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| {
            if let Event::Launched { adopted: a, .. } = e {
                adopted = Some(*a)
            }
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(adopted, Some(3), "the retry must adopt the 3 instances the lost call launched");
    assert_eq!(sim.calls().launch, 1, "no second launch call");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

/// A health API that cannot be reached for its first `failures` calls: it says nothing about
/// the instances, so it must never fail a bake.
#[derive(Debug)]
struct UnreachableAtFirst {
    failures: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl immut_core::HealthCheck for UnreachableAtFirst {
    async fn check(&self, _: &immut_core::Instance) -> immut_core::Result<immut_core::Health> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(immut_core::Error::new(ErrorKind::RateLimited, "health API throttled"));
        }
        Ok(immut_core::Health::Healthy)
    }
}

#[tokio::test(start_paused = true)]
async fn a_health_api_that_fails_during_the_bake_is_retried_and_the_release_succeeds() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    sim.seed(&v1, 3, true);
    let flaky = Arc::new(UnreachableAtFirst { failures: std::sync::atomic::AtomicUsize::new(0) });
    let health = immut_core::AllOf::default().and(sim.health());
    let health = immut_core::AllOf(vec![Arc::new(health), flaky.clone()]);
    let d = deployer(&sim, 3).strategy(BlueGreen::new().bake(Duration::from_secs(60))).health(health).build().unwrap();
    let mut deployment = d.deploy(release((1, 1, 0))).with_previous(v1);
    let mut events = Vec::new();
    let mut armed = false;
    let outcome = loop {
        let done = deployment.step().await;
        let step_events = deployment.take_events();
        // Once the switch happened (the bake runs), the health API goes away for a while.
        if !armed && step_events.iter().any(|e| matches!(e, Event::Switched { .. })) {
            flaky.failures.store(5, std::sync::atomic::Ordering::SeqCst);
            armed = true;
        }
        events.extend(step_events);
        if let Some(outcome) = done {
            break outcome;
        }
    };
    assert!(armed, "the deployment never switched");
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let retries =
        events.iter().filter(|e| matches!(e, Event::Retrying { operation, .. } if operation == "health")).count();
    assert_eq!(retries, 5, "each failed health call is one engine retry");
}

#[tokio::test(start_paused = true)]
async fn a_health_api_that_stays_down_leaves_health_unknown_and_never_promotes() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    sim.seed(&v1, 2, true);
    let down = Arc::new(UnreachableAtFirst { failures: std::sync::atomic::AtomicUsize::new(usize::MAX) });
    let d = deployer(&sim, 2)
        .strategy(BlueGreen::new())
        .health(immut_core::AllOf(vec![Arc::new(sim.health()), down]))
        .progress_deadline(Duration::from_secs(60))
        .retry(immut_core::engine::RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        })
        .build()
        .unwrap();
    let mut events = Vec::new();
    let outcome = d.deploy(release((1, 1, 0))).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    // Nothing can be proven healthy, so nothing is promoted; the rollback cannot prove the old
    // release healthy either, so it may end as RollbackFailed, but it never touched the old
    // release's traffic.
    assert!(!outcome.succeeded(), "{}", outcome.summary());
    assert!(events.iter().any(|e| matches!(e, Event::HealthUnknown { .. })), "the unknown health is reported");
    assert!(!events.iter().any(|e| matches!(e, Event::Switched { .. })), "nothing unproven received traffic");
    let live = immut_core::Provider::describe(&sim, &immut_core::Query::service("web")).await.unwrap();
    assert!(live.len() == 2 && live.iter().all(|i| i.release() == Some(v1.id())), "the old release serves on");
}

#[tokio::test(start_paused = true)]
async fn a_label_the_provider_refuses_is_refused_before_any_call() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let mut spec = immut_core::LaunchSpec::default();
    spec.labels.insert("team".into(), "x".repeat(300));
    let bad = immut_core::Release::new(
        "web",
        &immut_core::ArtifactSpec::new("web", immut_core::semver::Version::new(1, 0, 0), "img"),
        &immut_core::BaselineSpec::new("base", immut_core::semver::Version::new(1, 0, 0), spec),
    )
    .unwrap();
    let d = deployer(&sim, 2).strategy(Rolling::new()).build().unwrap();
    let outcome = d.deploy(bad).run().await;
    match &outcome.phase {
        Phase::Refused { reason } => {
            assert!(reason.contains("baseline.labels.team") && reason.contains("255"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let calls = sim.calls();
    assert_eq!((calls.launch, calls.describe), (0, 0), "nothing was asked of the provider: {calls:?}");
}

/// The simulator's balancer, claiming a drain timeout.
#[derive(Debug)]
struct SlowDrain(immut_core::sim::SimTraffic);

#[async_trait::async_trait]
impl immut_core::Traffic for SlowDrain {
    fn drain_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
    async fn serving(&self) -> immut_core::Result<Vec<immut_core::InstanceId>> {
        self.0.serving().await
    }
    async fn attach(&self, instances: &[immut_core::Instance]) -> immut_core::Result<()> {
        self.0.attach(instances).await
    }
    async fn detach(&self, ids: &[immut_core::InstanceId]) -> immut_core::Result<()> {
        self.0.detach(ids).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_timeout_the_progress_deadline_cannot_hold_is_refused_in_build() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let builder = || {
        Deployer::builder().provider(sim.clone()).traffic(SlowDrain(sim.traffic())).strategy(Rolling::new()).desired(2)
    };
    let e = builder().progress_deadline(Duration::from_secs(20)).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().starts_with("progress_deadline:") && e.message().contains("30s"), "{e}");
    assert!(builder().progress_deadline(Duration::from_secs(60)).build().is_ok());
}
