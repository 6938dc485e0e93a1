//! What real clouds do and a perfect simulator does not: describe that lags behind launches,
//! instances that never come up, health that blips, terminations that linger near a quota,
//! instances stopped out of band. Each test drives the engine into one of them on the
//! simulator and checks the outcome against the simulator's ground truth.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{assert_final_fleet, latencies, release};
use immut_core::checker::Checker as GroundTruth;
use immut_core::engine::{Event, Phase};
use immut_core::sim::{Faults, OutOfBand, SimProvider};
use immut_core::{BlueGreen, Count, Health, HealthCheck, Instance, ReplacementStrategy, Rolling};

/// Runs a deployment to its end; returns the decisions the engine refused (its own
/// invariant checks) beside the outcome. The checker's violations come from the ground truth.
async fn run_checked(deployment: immut_core::Deployment) -> (Vec<String>, immut_core::Outcome) {
    let mut refused = Vec::new();
    let outcome = deployment.run_with(|e| refused.extend(refusal(e))).await;
    (refused, outcome)
}

fn refusal(event: &Event) -> Option<String> {
    match event {
        Event::InvariantViolated { invariant, detail } => Some(format!("{invariant}: {detail}")),
        _ => None,
    }
}

/// A deployer builder whose provider and traffic go through the independent checker, which
/// reads the simulator's ground truth on every call.
fn checked(
    sim: &SimProvider,
    desired: usize,
    strategy: impl ReplacementStrategy + 'static,
) -> (immut_core::DeployerBuilder, GroundTruth) {
    let truth = GroundTruth::new(sim.clone(), "web", desired, strategy.limits(desired));
    let (provider, traffic) = truth.wrap(sim.clone(), sim.traffic());
    let builder = immut_core::Deployer::builder()
        .provider(provider)
        .traffic(traffic)
        .health(sim.health())
        .strategy(strategy)
        .desired(desired);
    (builder, truth)
}

#[tokio::test(start_paused = true)]
async fn a_stale_describe_neither_duplicates_a_launch_nor_leaves_an_orphan() {
    let sim = latencies(SimProvider::builder()).describe_staleness(Duration::from_secs(8)).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let (builder, truth) = checked(&sim, 4, Rolling::new().max_surge(Count::Count(2)));
    let d = builder.poll_interval(Duration::from_secs(1)).build().unwrap();
    let (refused, outcome) = run_checked(d.deploy(v2.clone()).with_previous(v1.clone())).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(sim.instances_created(), 4 + 4, "every new instance was launched exactly once");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_instance_wave_with_a_few_bad_instances_succeeds_by_replacing_them() {
    let sim = latencies(SimProvider::builder())
        .faults(Faults { never_healthy_rate: 0.001, stuck_pending_rate: 0.001, ..Faults::default() })
        .seed(11)
        .build()
        .unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 1000, true);
    let (builder, truth) = checked(&sim, 1000, BlueGreen::new().bake(Duration::from_secs(30)));
    let d = builder.min_ready(Duration::from_secs(5)).build().unwrap();
    let (refused, outcome) = run_checked(d.deploy(v2.clone()).with_previous(v1.clone())).await;
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert!(refused.is_empty(), "{refused:?}");
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(sim.instances_created() > 2000, "some bad instances were replaced: {}", sim.instances_created());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 1000, 1000).await;
}

/// Reports one instance unhealthy once, the first time it is asked after being armed.
#[derive(Debug)]
struct OneBlip {
    inner: immut_core::sim::SimHealth,
    armed: AtomicUsize,
}

#[async_trait::async_trait]
impl HealthCheck for OneBlip {
    async fn check(&self, instance: &Instance) -> immut_core::Result<Health> {
        self.inner.check(instance).await
    }
    async fn check_many(&self, instances: &[Instance]) -> immut_core::Result<Vec<Health>> {
        let mut verdicts = self.inner.check_many(instances).await?;
        if self.armed.swap(0, Ordering::SeqCst) == 1 && !verdicts.is_empty() {
            verdicts[0] = Health::Unhealthy("one failed health check".into());
        }
        Ok(verdicts)
    }
}

#[tokio::test(start_paused = true)]
async fn a_health_blip_during_the_bake_does_not_fail_it() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 3, true);
    let blip = Arc::new(OneBlip { inner: sim.health(), armed: AtomicUsize::new(0) });
    let (builder, truth) = checked(&sim, 3, BlueGreen::new().bake(Duration::from_secs(120)));
    let d = builder.health_arc(blip.clone()).build().unwrap();
    let mut deployment = d.deploy(v2.clone()).with_previous(v1.clone());
    let mut refused = Vec::new();
    let outcome = loop {
        let done = deployment.step().await;
        for e in deployment.take_events() {
            if matches!(e, Event::Switched { .. }) {
                blip.armed.store(1, Ordering::SeqCst);
            }
            refused.extend(refusal(&e));
        }
        if let Some(outcome) = done {
            break outcome;
        }
    };
    assert!(outcome.succeeded(), "one blip failed the bake: {}", outcome.summary());
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(blip.armed.load(Ordering::SeqCst), 0, "the blip was delivered");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

#[tokio::test(start_paused = true)]
async fn a_lingering_termination_near_the_quota_does_not_fail_the_next_wave() {
    // Four instances, surge one: the account holds five, and a terminated instance holds its
    // place for 30 s.
    let sim = latencies(SimProvider::builder())
        .terminate_linger(Duration::from_secs(30))
        .faults(Faults { quota: Some(5), ..Faults::default() })
        .build()
        .unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let (builder, truth) = checked(&sim, 4, Rolling::new());
    let d = builder.build().unwrap();
    let (refused, outcome) = run_checked(d.deploy(v2.clone()).with_previous(v1.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn an_instance_stopped_out_of_band_is_finished_off_and_replaced() {
    let sim = latencies(SimProvider::builder())
        .faults(Faults {
            out_of_band_stops: vec![OutOfBand { at: Duration::from_secs(40), count: 1 }],
            ..Faults::default()
        })
        .seed(3)
        .build()
        .unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let (builder, truth) = checked(&sim, 4, Rolling::new());
    let d = builder.build().unwrap();
    let (refused, outcome) = run_checked(d.deploy(v2.clone()).with_previous(v1.clone())).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(sim.out_of_band_applied(), 1);
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert!(matches!(outcome.phase, Phase::Succeeded), "{}", outcome.summary());
    let (present, _) = sim.inspect();
    assert!(
        present.iter().all(|i| i.state != immut_core::InstanceState::Stopped),
        "a stopped instance was left behind: {present:?}"
    );
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

/// Close polling (faster than the poll interval while an instance is about to turn healthy)
/// never reads faster than the backend's declared read quota allows.
#[tokio::test(start_paused = true)]
async fn close_polling_keeps_to_the_backends_read_quota() {
    let mut describes = Vec::new();
    for quota in [Duration::ZERO, Duration::from_secs(2)] {
        let faults = Faults { no_next_change: true, ..Default::default() };
        let sim = latencies(SimProvider::builder()).faults(faults).min_poll_interval(quota).build().unwrap();
        let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
        sim.seed(&v1, 3, true);
        let d = sim.deployer().strategy(BlueGreen::new()).desired(3).poll_interval(Duration::from_secs(2)).build();
        let outcome = d.unwrap().deploy(v2).with_previous(v1).run().await;
        assert!(outcome.succeeded(), "{}", outcome.summary());
        let calls = sim.calls();
        describes.push((calls.describe + calls.changes, outcome.elapsed));
    }
    let (close, paced) = (describes[0], describes[1]);
    assert!(close.0 > paced.0, "close polling reads more often where the quota allows it: {describes:?}");
    // Paced: one read (a full one or a change-feed poll) per poll interval at most, plus the
    // reads right after each action.
    let polls = paced.1.as_secs_f64() / 2.0;
    assert!((paced.0 as f64) <= polls + 12.0, "{} reads in {:?}: {describes:?}", paced.0, paced.1);
}
