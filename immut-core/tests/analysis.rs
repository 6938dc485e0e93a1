//! Analysis at each place it runs (canary steps, before a blue/green switch, during the bake),
//! on the simulator in virtual time, and a resumed deployment continuing its run.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{CrashingJournal, assert_final_fleet, latencies, release};
use immut_core::analysis::{
    Analysis, AnalysisContext, AnalysisGate, MeasurementPhase, Metric, MetricProvider, Reading, Threshold,
};
use immut_core::engine::{Event, Outcome, Phase};
use immut_core::journal::MemoryJournal;
use immut_core::sim::SimProvider;
use immut_core::strategy::Promotion;
use immut_core::{BlueGreen, Canary, Count, Deployer, DeployerBuilder, ErrorKind, Release};

/// Answers from a script, then a default; records what it was asked.
#[derive(Debug, Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Result<Reading, String>>>>,
    otherwise: Result<Reading, String>,
    asked: Arc<Mutex<Vec<AnalysisContext>>>,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Result<Reading, String>>, otherwise: Result<Reading, String>) -> Self {
        Scripted { script: Arc::new(Mutex::new(script.into_iter().collect())), otherwise, asked: Arc::default() }
    }

    fn always(reading: Result<Reading, String>) -> Self {
        Scripted::new([], reading)
    }

    fn asked(&self) -> Vec<AnalysisContext> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait]
impl MetricProvider for Scripted {
    async fn measure(&self, context: &AnalysisContext) -> Result<Reading, String> {
        self.asked.lock().unwrap().push(context.clone());
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.otherwise.clone())
    }
}

fn error_ratio(count: u32) -> Metric {
    Metric::new("error-ratio", Duration::from_secs(30), count).success(Threshold::below(0.01))
}

fn gate(metric: Metric, provider: Scripted) -> AnalysisGate {
    AnalysisGate::new(Analysis::new([metric])).provider("error-ratio", provider)
}

fn deployer(sim: &SimProvider, desired: usize) -> DeployerBuilder {
    sim.deployer().desired(desired).min_ready(Duration::from_secs(5)).progress_deadline(Duration::from_secs(300))
}

/// The simulator (with the shared latencies) running `count` serving instances of 1.0.0, and
/// the releases 1.0.0 and 1.1.0.
fn seeded(count: usize) -> (SimProvider, Release, Release) {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((1, 1, 0)));
    sim.seed(&v1, count, true);
    (sim, v1, v2)
}

/// Deploys `new` over `old` with `d`, recording every event.
async fn upgrade(d: &Deployer, old: &Release, new: &Release) -> (Outcome, Vec<Event>) {
    let mut events = Vec::new();
    let outcome = d.deploy(new.clone()).with_previous(old.clone()).run_with(|e| events.push(e.clone())).await;
    (outcome, events)
}

fn measurements(events: &[Event]) -> Vec<immut_core::analysis::Measurement> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some(measurement.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_good_canary_passes_every_step_after_its_measurements() {
    let (sim, v1, v2) = seeded(4);
    let provider = Scripted::always(Ok(Reading::Value(0.001)));
    let d = deployer(&sim, 4)
        .strategy(Canary::new([Count::Count(1), Count::Percent(50)]))
        .gate(gate(error_ratio(3), provider.clone()))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let taken = measurements(&events);
    assert_eq!(taken.len(), 6, "3 per step: {taken:?}");
    assert!(taken.iter().all(|m| m.phase == MeasurementPhase::Successful), "{taken:?}");
    let gates: Vec<&str> = taken.iter().map(|m| m.gate.as_str()).collect();
    assert_eq!(gates, ["canary-step-1"; 3].into_iter().chain(["canary-step-2"; 3]).collect::<Vec<_>>());
    // Each gate passed only after its measurements, and the provider knew what it measured.
    let first_pass = events.iter().position(|e| matches!(e, Event::GatePassed { .. })).unwrap();
    let third =
        events.iter().position(|e| matches!(e, Event::Measured { measurement } if measurement.index == 3)).unwrap();
    assert!(third < first_pass);
    let asked = provider.asked();
    assert_eq!(asked[0].instances.len(), 1, "step 1 measures the one canary: {:?}", asked[0]);
    assert_eq!(asked[3].instances.len(), 2, "step 2 measures two: {:?}", asked[3]);
    assert_eq!(asked[0].service, "web");
    assert_eq!(asked[0].release.as_ref(), Some(v2.id()));
    assert!(asked[0].deployment.is_some() && asked[0].version.as_deref() == Some("1.1.0"), "{:?}", asked[0]);
    // And of the stable release beside it, for a comparative judge.
    assert_eq!(asked[0].stable_release.as_ref(), Some(v1.id()));
    assert_eq!(asked[0].stable_version.as_deref(), Some("1.0.0"));
    assert!(!asked[0].stable_instances.is_empty(), "the old instances still serving: {:?}", asked[0]);
    assert!(asked[0].stable_instances.iter().all(|id| !asked[0].instances.contains(id)));
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_measurement_at_a_canary_step_rolls_back() {
    let (sim, v1, v2) = seeded(4);
    let provider = Scripted::new([Ok(Reading::Value(0.001))], Ok(Reading::Value(0.05)));
    let d = deployer(&sim, 4)
        .strategy(Canary::new([Count::Count(1)]))
        .gate(gate(error_ratio(5), provider))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    match &outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("analysis failed") && reason.contains("failure_limit 0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let taken = measurements(&events);
    let phases: Vec<MeasurementPhase> = taken.iter().map(|m| m.phase).collect();
    assert_eq!(phases, [MeasurementPhase::Successful, MeasurementPhase::Failed], "{taken:?}");
    assert_eq!(taken[1].value, Some(0.05));
    // The canary never went past its first step, and a step's old instances go only after its
    // gate: no old instance was terminated before the rollback.
    let rollback = events.iter().position(|e| matches!(e, Event::RollbackStarted { .. })).unwrap();
    assert!(!events[..rollback].iter().any(|e| matches!(e, Event::Terminated { .. })), "{events:?}");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn pre_promotion_analysis_measures_the_idle_set_before_the_switch() {
    let (sim, v1, v2) = seeded(3);
    let provider = Scripted::always(Ok(Reading::Value(0.0)));
    let d = deployer(&sim, 3)
        .strategy(BlueGreen::new().promotion(Promotion::Analysis).bake(Duration::from_secs(60)))
        .gate(gate(error_ratio(2), provider.clone()))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let switch = events.iter().position(|e| matches!(e, Event::Switched { .. })).unwrap();
    let before: Vec<_> = measurements(&events[..switch]);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|m| m.gate == "promote"));
    assert_eq!(provider.asked()[0].instances.len(), 3, "the whole idle set is measured");
    let after = measurements(&events[switch..]);
    assert_eq!(after.len(), 2, "the bake is analysed too: {after:?}");
    assert!(after.iter().all(|m| m.gate == "bake"));
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

#[tokio::test(start_paused = true)]
async fn no_traffic_is_inconclusive_and_never_promotes() {
    let (sim, v1, v2) = seeded(2);
    let d = deployer(&sim, 2)
        .strategy(BlueGreen::new().promotion(Promotion::Analysis))
        .progress_deadline(Duration::from_secs(120))
        .gate(gate(error_ratio(3), Scripted::always(Ok(Reading::Empty))))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    match &outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("analysis inconclusive") && reason.contains("progress deadline"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let taken = measurements(&events);
    assert!(!taken.is_empty() && taken.iter().all(|m| m.phase == MeasurementPhase::Inconclusive), "{taken:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Switched { .. })), "never switched");
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 2, 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_regression_during_the_bake_rolls_back_at_once() {
    let (sim, v1, v2) = seeded(3);
    // Pre-promotion: two good measurements; during the bake the first one fails.
    let provider = Scripted::new([Ok(Reading::Value(0.0)), Ok(Reading::Value(0.0))], Ok(Reading::Value(0.2)));
    let bake = Duration::from_secs(3600);
    let d = deployer(&sim, 3)
        .strategy(BlueGreen::new().promotion(Promotion::Analysis).bake(bake))
        .gate(gate(error_ratio(2), provider))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("gate \"bake\" failed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let failed = measurements(&events).into_iter().find(|m| m.phase == MeasurementPhase::Failed).unwrap();
    assert_eq!((failed.gate.as_str(), failed.index), ("bake", 1));
    // Rolled back well before the hour-long bake would have ended.
    assert!(outcome.elapsed < bake, "{:?}", outcome.elapsed);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_provider_fails_at_the_consecutive_error_limit() {
    let (sim, v1, v2) = seeded(2);
    let metric = error_ratio(3).consecutive_error_limit(2);
    let d = deployer(&sim, 2)
        .strategy(Canary::new([Count::Count(1)]))
        .gate(gate(metric, Scripted::always(Err("connection refused".into()))))
        .build()
        .unwrap();
    let (outcome, events) = upgrade(&d, &v1, &v2).await;
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("consecutive_error_limit 2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let taken = measurements(&events);
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert!(taken.iter().all(|m| m.phase == MeasurementPhase::Error && m.message.contains("connection refused")));
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 2, 2).await;
}

#[test]
fn settings_are_checked_when_the_deployer_is_built() {
    let sim = SimProvider::builder().build().unwrap();
    let long = Metric::new("error-ratio", Duration::from_secs(600), 3).success(Threshold::below(0.01));
    let err = deployer(&sim, 2)
        .strategy(Canary::new([Count::Count(1)]))
        .gate(gate(long, Scripted::always(Ok(Reading::Empty))))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("analysis.metrics[0].interval") && err.message().contains("progress deadline"));
    let unmeasured = AnalysisGate::new(Analysis::new([error_ratio(1)]));
    let err = deployer(&sim, 2).strategy(Canary::new([Count::Count(1)])).gate(unmeasured).build().unwrap_err();
    assert!(err.message().contains("analysis.metrics[0].provider"), "{}", err.message());
}

#[tokio::test(start_paused = true)]
async fn a_resumed_deployment_continues_the_same_analysis_run() {
    let (sim, v1, v2) = seeded(4);
    let journal = MemoryJournal::new();
    let strategy = || Canary::new([Count::Count(1)]);
    let crashing = CrashingJournal::on_measurements(journal.clone(), 2);
    let first = Scripted::always(Ok(Reading::Value(0.0)));
    let d = deployer(&sim, 4).strategy(strategy()).journal(crashing).gate(gate(error_ratio(4), first.clone())).build();
    let run = tokio::spawn(d.unwrap().deploy(v2.clone()).with_previous(v1.clone()).run());
    assert!(run.await.unwrap_err().is_panic());
    assert_eq!(first.asked().len(), 3, "two measurements journaled, the third lost with the process");
    // A new process: a new gate, the same journal.
    let second = Scripted::always(Ok(Reading::Value(0.0)));
    let d = deployer(&sim, 4).strategy(strategy()).journal(journal).gate(gate(error_ratio(4), second.clone()));
    let resumed = d.build().unwrap().resume("web").unwrap().expect("an interrupted deployment");
    let mut events = Vec::new();
    let outcome = resumed.run_with(|e| events.push(e.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let indexes: Vec<u32> = measurements(&events).iter().map(|m| m.index).collect();
    assert_eq!(indexes, [3, 4], "the run continues from its journaled measurements");
    assert_eq!(second.asked().len(), 2);
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test]
async fn the_plan_shows_where_analysis_runs_and_its_least_duration_without_measuring() {
    let (sim, v1, v2) = seeded(4);
    let provider = Scripted::always(Ok(Reading::Value(0.0)));
    let d = deployer(&sim, 4)
        .strategy(Canary::new([Count::Count(1), Count::Percent(50)]))
        .gate(gate(error_ratio(3), provider.clone()))
        .build()
        .unwrap();
    let plan = d.dry_run(&v2, Some(&v1), immut_core::sim::Latencies::default()).await.unwrap();
    assert!(plan.outcome.succeeded(), "{}", plan.outcome.summary());
    let gates: Vec<(&str, u64)> = plan.analysis.iter().map(|a| (a.gate.as_str(), a.min_duration_ms)).collect();
    assert_eq!(gates, [("canary-step-1", 90_000), ("canary-step-2", 90_000)]);
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["analysis"][1]["gate"], "canary-step-2");
    assert!(provider.asked().is_empty(), "a plan measures nothing");
}
