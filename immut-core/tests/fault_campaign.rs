//! The fault campaign: randomized fault schedules × strategies × fleet sizes up to 200 on the
//! simulator, in virtual time, every case checked by the independent [`Checker`], which reads
//! the simulator's ground truth on every call the engine makes.
//!
//! Faults: failed and partial launches, throttling, a quota error at a given launch, releases
//! that never turn healthy, instances stuck pending, health blips, a balancer initial period,
//! describe staleness, lingering terminations, jittered latencies, instances killed or stopped
//! out of band, a cancel at a random moment, a crash at a random journal record (rollback
//! included) resumed in the same case, and a gate that rejects. Failing seeds are persisted
//! next to this file and replayed first. 2000 cases by default; `PROPTEST_CASES` overrides.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CrashingJournal, latencies, quiet_simulated_crashes, release};
use immut_core::checker::Checker;
use immut_core::engine::{Event, Gate, GateVerdict, Phase, RetryPolicy};
use immut_core::journal::{Journal, MemoryJournal};
use immut_core::sim::{Faults, OutOfBand, SimProvider};
use immut_core::strategy::{FleetView, Promotion, ReplacementStrategy};
use immut_core::{BlueGreen, Canary, Count, Rolling};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};

/// Polled cases whose feed can list what changed (no health blips), and those of them in which
/// the engine patched its fleet from those lists: the path the polled half is there to test.
static LISTING: AtomicUsize = AtomicUsize::new(0);
static PATCHED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone)]
enum Plan {
    BlueGreen { bake: u64, keep_old: u64 },
    Rolling { surge: Count, unavailable: Count, pause: u64 },
    Canary { steps: Vec<u8>, pause: u64 },
}

impl Plan {
    fn strategy(&self, gated: bool) -> Arc<dyn ReplacementStrategy> {
        match self {
            Plan::BlueGreen { bake, keep_old } => Arc::new(
                BlueGreen::new()
                    .bake(Duration::from_secs(*bake))
                    .keep_old(Duration::from_secs(*keep_old))
                    .promotion(if gated { Promotion::Manual } else { Promotion::Auto }),
            ),
            Plan::Rolling { surge, unavailable, pause } => Arc::new(
                Rolling::new().max_surge(*surge).max_unavailable(*unavailable).pause(Duration::from_secs(*pause)),
            ),
            Plan::Canary { steps, pause } => {
                Arc::new(Canary::new(steps.iter().map(|p| Count::Percent(*p))).pause(Duration::from_secs(*pause)))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Plan::BlueGreen { .. } => "blue_green",
            Plan::Rolling { .. } => "rolling",
            Plan::Canary { .. } => "canary",
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
    partial_launch_rate: f64,
    stuck_pending_rate: f64,
    flap_rate: f64,
    staleness: u64,
    linger: u64,
    lb_initial: u64,
    jitter: f64,
    out_of_band: Vec<(u64, usize)>,
    stops: Vec<(u64, usize)>,
    cancel_at: Option<u64>,
    crash_at: Option<usize>,
    reject_gate: bool,
    seed: u64,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let rates = (
        prop_oneof![3 => Just(0.0), 1 => Just(0.2), 1 => Just(0.4)],
        prop_oneof![3 => Just(0.0), 1 => Just(0.1), 1 => Just(0.3)],
        proptest::option::weighted(0.1, 1u64..6),
        proptest::bool::weighted(0.15),
        prop_oneof![4 => Just(0.0), 1 => Just(0.3)],
        prop_oneof![4 => Just(0.0), 1 => Just(0.02)],
        prop_oneof![4 => Just(0.0), 1 => Just(0.05)],
    );
    let times = (
        prop_oneof![3 => Just(0u64), 1 => 1u64..10],
        prop_oneof![3 => Just(0u64), 1 => 1u64..40],
        prop_oneof![3 => Just(0u64), 1 => 1u64..15],
        prop_oneof![2 => Just(0.0), 1 => Just(0.3)],
    );
    let events = (
        proptest::collection::vec((0u64..400, 1usize..3), 0..2),
        proptest::collection::vec((0u64..400, 1usize..2), 0..2),
        proptest::option::weighted(0.1, 1u64..300),
        proptest::option::weighted(0.15, 0usize..40),
        proptest::bool::weighted(0.1),
        any::<u64>(),
    );
    (rates, times, events).prop_map(
        |(
            (launch_failure_rate, throttle_rate, quota_at_launch, new_never_healthy, partial, stuck, flap),
            (staleness, linger, lb_initial, jitter),
            (out_of_band, stops, cancel_at, crash_at, reject_gate, seed),
        )| Schedule {
            launch_failure_rate,
            throttle_rate,
            quota_at_launch,
            new_never_healthy,
            partial_launch_rate: partial,
            stuck_pending_rate: stuck,
            flap_rate: flap,
            staleness,
            linger,
            lb_initial,
            jitter,
            out_of_band,
            stops,
            cancel_at,
            crash_at,
            reject_gate,
            seed,
        },
    )
}

impl Schedule {
    /// Half the cases poll, as against a real cloud, through the change feed; the others are
    /// woken by the simulator's promise of its next change.
    fn polled(&self) -> bool {
        self.seed.is_multiple_of(2)
    }

    /// The faults this case injects, by name, for the campaign's printed mix.
    fn mix(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        let flags = [
            (self.launch_failure_rate > 0.0, "launch failures"),
            (self.throttle_rate > 0.0, "throttling"),
            (self.quota_at_launch.is_some(), "quota error"),
            (self.new_never_healthy, "never healthy"),
            (self.partial_launch_rate > 0.0, "partial launches"),
            (self.stuck_pending_rate > 0.0, "stuck pending"),
            (self.flap_rate > 0.0, "health blips"),
            (self.staleness > 0, "stale describe"),
            (self.linger > 0, "lingering terminations"),
            (self.lb_initial > 0, "balancer initial period"),
            (self.jitter > 0.0, "jitter"),
            (!self.out_of_band.is_empty(), "out-of-band kills"),
            (!self.stops.is_empty(), "out-of-band stops"),
            (self.cancel_at.is_some(), "cancel"),
            (self.crash_at.is_some(), "crash and resume"),
            (self.reject_gate, "gate rejection"),
        ];
        for (on, name) in flags {
            if on {
                m.push(name);
            }
        }
        m
    }
}

/// A strategy and a desired count that `build()` accepts: invalid settings are refused there,
/// which has its own tests, so they are filtered out here rather than counted as passes.
fn valid_settings() -> impl Strategy<Value = (Plan, usize)> {
    let desired = prop_oneof![8 => 1usize..12, 2 => 12usize..=200];
    (plan(), desired)
        .prop_filter("settings build() accepts", |(plan, desired)| plan.strategy(false).validate(*desired).is_ok())
}

/// Rejects every gate it is asked about.
#[derive(Debug)]
struct Reject;

#[async_trait::async_trait]
impl Gate for Reject {
    async fn evaluate(&self, name: &str, _: &FleetView) -> GateVerdict {
        GateVerdict::Fail(format!("{name} rejected by the campaign"))
    }
}

fn campaign(plan: &Plan, desired: usize, old: usize, schedule: &Schedule) -> Result<(), TestCaseError> {
    let gated = schedule.reject_gate;
    let strategy = plan.strategy(gated);
    prop_assert!(strategy.validate(desired).is_ok(), "valid_settings() let invalid settings through");
    let schedule = schedule.clone();
    immut_core::sim::run_in_virtual_time(async move {
        let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
        let oob = |v: &[(u64, usize)]| -> Vec<OutOfBand> {
            v.iter().map(|&(at, count)| OutOfBand { at: Duration::from_secs(at), count }).collect()
        };
        let faults = Faults {
            launch_failure_rate: schedule.launch_failure_rate,
            throttle_rate: schedule.throttle_rate,
            failing_launch_calls: schedule.quota_at_launch.into_iter().collect(),
            failing_launch_release: Some(v2.id().clone()),
            never_healthy_releases: if schedule.new_never_healthy { vec![v2.id().clone()] } else { vec![] },
            partial_launch_rate: schedule.partial_launch_rate,
            stuck_pending_rate: schedule.stuck_pending_rate,
            flap_rate: schedule.flap_rate,
            out_of_band: oob(&schedule.out_of_band),
            out_of_band_stops: oob(&schedule.stops),
            // Half the cases poll, as against a real cloud, through the change feed.
            no_next_change: schedule.polled(),
            ..Faults::default()
        };
        let sim = latencies(SimProvider::builder())
            .describe_staleness(Duration::from_secs(schedule.staleness))
            .terminate_linger(Duration::from_secs(schedule.linger))
            .lb_initial(Duration::from_secs(schedule.lb_initial))
            .jitter(schedule.jitter)
            .faults(faults)
            .seed(schedule.seed)
            .build()
            .unwrap();
        if old > 0 {
            sim.seed(&v1, old, true);
        }
        let checker = Checker::new(sim.clone(), "web", desired, strategy.limits(desired));
        let (provider, traffic) = checker.wrap(sim.clone(), sim.traffic());
        let (provider, traffic) = (Arc::new(provider), Arc::new(traffic));
        let journal = MemoryJournal::new();
        let deployer = |journal: Arc<dyn Journal>| {
            let mut b = immut_core::Deployer::builder()
                .provider_arc(provider.clone())
                .traffic_arc(traffic.clone())
                .health(sim.health())
                .strategy_arc(strategy.clone())
                .desired(desired)
                .min_ready(Duration::from_secs(5))
                .progress_deadline(Duration::from_secs(240))
                .journal_arc(journal)
                .retry(RetryPolicy {
                    max_retries: 30,
                    min_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(5),
                });
            if gated {
                b = b.gate(Reject);
            }
            // The polled half reads through the simulator's change feed, skipping reads of an
            // unchanged fleet; the checker sees every call that changes the fleet either way.
            if schedule.polled() {
                b = b.change_feed(sim.feed());
            }
            b.build().unwrap()
        };
        let first: Arc<dyn Journal> = match schedule.crash_at {
            Some(crash_at) => Arc::new(CrashingJournal::new(journal.clone(), crash_at)),
            None => Arc::new(journal.clone()),
        };
        let mut deployment = deployer(first).deploy(v2.clone());
        if old > 0 {
            deployment = deployment.with_previous(v1.clone());
        }
        if let Some(at) = schedule.cancel_at {
            let cancel = deployment.cancel_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(at)).await;
                cancel.cancel();
            });
        }
        let refused = Arc::new(Mutex::new(Vec::new()));
        let seen = refused.clone();
        let run = tokio::spawn(deployment.run_with(move |e| {
            serde_json::to_string(e).expect("every event serializes");
            if let Event::InvariantViolated { invariant, detail } = e {
                seen.lock().unwrap().push(format!("{invariant}: {detail}"));
            }
        }));
        let outcome = match run.await {
            Ok(outcome) => Some(outcome),
            Err(e) if e.is_panic() => {
                // The process died between two records: a new one resumes from the journal.
                match deployer(Arc::new(journal.clone())).resume("web").unwrap() {
                    Some(resumed) => Some(resumed.run().await),
                    None => None,
                }
            }
            Err(e) => panic!("the run failed: {e}"),
        };
        let refused = refused.lock().unwrap().clone();
        prop_assert!(refused.is_empty(), "the engine refused its own decisions: {refused:?}");
        let Some(outcome) = outcome else {
            // Died before its first record: nothing may have changed.
            prop_assert_eq!(sim.calls().launch, 0);
            return Ok(());
        };
        if schedule.polled() && schedule.flap_rate == 0.0 && outcome.steps > 1 {
            LISTING.fetch_add(1, Ordering::SeqCst);
            if sim.calls().deltas > 0 {
                PATCHED.fetch_add(1, Ordering::SeqCst);
            }
        }
        let violations = checker.finish(&outcome, &v2, (old > 0).then_some(&v1));
        prop_assert!(violations.is_empty(), "{violations:?}\n{}", outcome.summary());
        prop_assert!(matches!(outcome.phase, Phase::Succeeded | Phase::RolledBack { .. }), "{}", outcome.summary());
        // A quota error on the first launch fails the deployment, unless a crash interrupted
        // it before it journaled its rollback: the resumed one launches again, and may succeed.
        if schedule.new_never_healthy || (schedule.quota_at_launch == Some(1) && schedule.crash_at.is_none()) {
            prop_assert!(!outcome.succeeded(), "a release that cannot come up succeeded: {}", outcome.summary());
        }
        Ok(())
    })
}

#[test]
fn randomized_fault_schedules_keep_every_invariant() {
    quiet_simulated_crashes();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    let config = ProptestConfig {
        cases,
        // The checked-in seeds next to this file are replayed before new cases.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mix: Arc<Mutex<BTreeMap<&'static str, usize>>> = Arc::default();
    let run = Arc::new(AtomicUsize::new(0));
    let (m, r) = (mix.clone(), run.clone());
    let old_sizes = prop_oneof![3 => Just(None), 1 => (0usize..8).prop_map(Some)];
    let result = TestRunner::new(config).run(
        &(valid_settings(), old_sizes, schedule()),
        move |((plan, desired), old, schedule)| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut m = m.lock().unwrap();
            *m.entry(plan.name()).or_default() += 1;
            *m.entry(if desired > 11 { "fleet 12-200" } else { "fleet 1-11" }).or_default() += 1;
            if old.is_some() {
                *m.entry("resized or first deployment").or_default() += 1;
            }
            if schedule.polled() {
                *m.entry("polled, change feed").or_default() += 1;
            }
            for f in schedule.mix() {
                *m.entry(f).or_default() += 1;
            }
            drop(m);
            campaign(&plan, desired, old.unwrap_or(desired), &schedule)
        },
    );
    println!("fault campaign: {} cases run", run.load(Ordering::SeqCst));
    for (what, n) in mix.lock().unwrap().iter() {
        println!("  {what:<28} {n}");
    }
    let (listing, patched) = (LISTING.load(Ordering::SeqCst), PATCHED.load(Ordering::SeqCst));
    println!("  {:<28} {patched} of {listing}", "polled, patched from lists");
    if let Err(e) = result {
        panic!("{e}");
    }
    // Every polled case whose feed lists changes and that observed more than once patched its
    // fleet from those lists at least once (cases that ran into an error may have stopped first).
    assert!(
        listing == 0 || patched * 10 >= listing * 9,
        "only {patched} of {listing} polled cases patched their fleet from the change feed"
    );
}

/// A case the campaign found: an instance stuck pending reached its deadline in the step
/// that had to detach an instance stopped out of band first, and was then never terminated.
#[test]
fn a_failed_instance_is_terminated_even_when_a_detach_goes_first() {
    let plan = Plan::Rolling { surge: Count::Count(0), unavailable: Count::Percent(80), pause: 24 };
    let schedule = Schedule {
        launch_failure_rate: 0.0,
        throttle_rate: 0.0,
        quota_at_launch: Some(1),
        new_never_healthy: false,
        partial_launch_rate: 0.0,
        stuck_pending_rate: 0.02,
        flap_rate: 0.05,
        staleness: 0,
        linger: 0,
        lb_initial: 0,
        jitter: 0.3,
        out_of_band: vec![],
        stops: vec![(149, 1)],
        cancel_at: None,
        crash_at: None,
        reject_gate: false,
        seed: 16931215177855889783,
    };
    campaign(&plan, 5, 5, &schedule).unwrap();
}
