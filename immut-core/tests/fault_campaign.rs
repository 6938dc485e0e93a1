//! Randomized fault schedules × strategies × fleet sizes on the simulator, in virtual time.
//!
//! Every step is checked against the invariants by an independent reader of the event stream,
//! and every run must end either on the new release (all serving, nothing else left) or on the
//! old release serving, with no orphans. 256 cases by default; raise `PROPTEST_CASES` for more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Checker, assert_final_fleet, latencies, release};
use immut_core::engine::RetryPolicy;
use immut_core::sim::{Faults, OutOfBand, SimProvider};
use immut_core::strategy::{Promotion, ReplacementStrategy};
use immut_core::{BlueGreen, Canary, Count, Rolling};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Debug, Clone)]
enum Plan {
    BlueGreen { bake: u64, keep_old: u64 },
    Rolling { surge: Count, unavailable: Count, pause: u64 },
    Canary { steps: Vec<u8>, pause: u64 },
}

impl Plan {
    fn strategy(&self) -> Arc<dyn ReplacementStrategy> {
        match self {
            Plan::BlueGreen { bake, keep_old } => Arc::new(
                BlueGreen::new()
                    .bake(Duration::from_secs(*bake))
                    .keep_old(Duration::from_secs(*keep_old))
                    .promotion(Promotion::Auto),
            ),
            Plan::Rolling { surge, unavailable, pause } => Arc::new(
                Rolling::new().max_surge(*surge).max_unavailable(*unavailable).pause(Duration::from_secs(*pause)),
            ),
            Plan::Canary { steps, pause } => {
                Arc::new(Canary::new(steps.iter().map(|p| Count::Percent(*p))).pause(Duration::from_secs(*pause)))
            }
        }
    }
}

fn count() -> impl Strategy<Value = Count> {
    prop_oneof![(0usize..4).prop_map(Count::Count), (0u8..=100).prop_map(Count::Percent)]
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        (0u64..90, 0u64..60).prop_map(|(bake, keep_old)| Plan::BlueGreen { bake, keep_old }),
        (count(), count(), 0u64..30).prop_map(|(surge, unavailable, pause)| Plan::Rolling {
            surge,
            unavailable,
            pause
        }),
        (proptest::collection::btree_set(1u8..100, 0..3), 0u64..60)
            .prop_map(|(steps, pause)| Plan::Canary { steps: steps.into_iter().collect(), pause }),
    ]
}

#[derive(Debug, Clone)]
struct Schedule {
    launch_failure_rate: f64,
    throttle_rate: f64,
    quota_at_launch: Option<u64>,
    new_never_healthy: bool,
    out_of_band: Vec<(u64, usize)>,
    seed: u64,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        prop_oneof![Just(0.0), Just(0.2), Just(0.4)],
        prop_oneof![Just(0.0), Just(0.1), Just(0.3)],
        proptest::option::weighted(0.2, 1u64..6),
        proptest::bool::weighted(0.2),
        proptest::collection::vec((0u64..400, 1usize..3), 0..3),
        any::<u64>(),
    )
        .prop_map(|(launch_failure_rate, throttle_rate, quota_at_launch, new_never_healthy, out_of_band, seed)| {
            Schedule { launch_failure_rate, throttle_rate, quota_at_launch, new_never_healthy, out_of_band, seed }
        })
}

fn campaign(plan: Plan, desired: usize, old: usize, min_ready: u64, schedule: Schedule) -> Result<(), TestCaseError> {
    let strategy = plan.strategy();
    prop_assert!(strategy.validate(desired).is_ok(), "valid_settings() let invalid settings through");
    immut_core::sim::run_in_virtual_time(async move {
        let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
        let faults = Faults {
            launch_failure_rate: schedule.launch_failure_rate,
            throttle_rate: schedule.throttle_rate,
            failing_launch_calls: schedule.quota_at_launch.into_iter().collect(),
            failing_launch_release: Some(v2.id().clone()),
            never_healthy_releases: if schedule.new_never_healthy { vec![v2.id().clone()] } else { vec![] },
            out_of_band: schedule
                .out_of_band
                .iter()
                .map(|&(at, count)| OutOfBand { at: Duration::from_secs(at), count })
                .collect(),
            ..Faults::default()
        };
        let sim = latencies(SimProvider::builder()).faults(faults).seed(schedule.seed).build().unwrap();
        if old > 0 {
            sim.seed(&v1, old, true);
        }
        let deployer = sim
            .deployer()
            .strategy_arc(strategy)
            .desired(desired)
            .min_ready(Duration::from_secs(min_ready))
            .progress_deadline(Duration::from_secs(240))
            .retry(RetryPolicy {
                max_retries: 30,
                min_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
            })
            .build()
            .unwrap();
        let mut checker = Checker::new(schedule.out_of_band.is_empty());
        let mut deployment = deployer.deploy(v2.clone());
        if old > 0 {
            deployment = deployment.with_previous(v1.clone());
        }
        let outcome = deployment.run_with(|e| checker.observe(e)).await;
        prop_assert!(checker.violations.is_empty(), "{:?}\n{}", checker.violations, outcome.summary());
        prop_assert!(checker.refused.is_empty(), "the engine refused its own strategy: {:?}", checker.refused);
        prop_assert_eq!(checker.finished.as_ref(), Some(&outcome));
        if schedule.new_never_healthy || schedule.quota_at_launch.is_some_and(|k| k == 1) {
            prop_assert!(!outcome.succeeded(), "a release that cannot come up succeeded: {}", outcome.summary());
        }
        assert_final_fleet(&sim, &outcome, &v2, (old > 0).then_some(&v1), desired, checker.previous_count).await;
        Ok(())
    })
}

/// A strategy and a desired count that `build()` accepts: invalid settings are refused there,
/// which has its own tests, so they are filtered out here rather than counted as passes.
fn valid_settings(desired: std::ops::Range<usize>) -> impl Strategy<Value = (Plan, usize)> {
    (plan(), desired)
        .prop_filter("settings build() accepts", |(plan, desired)| plan.strategy().validate(*desired).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.max(256),
        // The checked-in seeds next to this file are replayed before new cases.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_fault_schedules_keep_the_invariants(
        (plan, desired) in valid_settings(1..12),
        min_ready in prop_oneof![Just(0u64), Just(5), Just(20)],
        schedule in schedule(),
    ) {
        campaign(plan, desired, desired, min_ready, schedule)?;
    }

    #[test]
    fn resized_and_first_deployments_keep_the_invariants(
        (plan, desired) in valid_settings(1..8),
        old in 0usize..8,
        schedule in schedule(),
    ) {
        campaign(plan, desired, old, 0, schedule)?;
    }
}
