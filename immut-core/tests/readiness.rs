//! Rollback readiness on the simulator: a previous release whose image goes away during a
//! deployment is never destroyed; the deployment stops before the point of no return, and a
//! later run with `accept_no_way_back` finishes. Checked against the simulator's ground truth.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{latencies, release};
use immut_core::checker::Checker;
use immut_core::engine::{Event, Phase, ReadinessCheck};
use immut_core::journal::MemoryJournal;
use immut_core::ledger::{Ledger, LedgerKey};
use immut_core::model::InstanceState;
use immut_core::sim::{Faults, SimProvider};
use immut_core::state::StateStore;
use immut_core::{BlueGreen, Deployer, ErrorKind, Readiness, Release, ReplacementStrategy, Rolling};

fn checked(sim: &SimProvider, strategy: impl ReplacementStrategy + 'static) -> (immut_core::DeployerBuilder, Checker) {
    let truth = Checker::new(sim.clone(), "web", 3, strategy.limits(3));
    let (provider, traffic) = truth.wrap(sim.clone(), sim.traffic());
    let builder = Deployer::builder()
        .provider(provider)
        .traffic(traffic)
        .health(sim.health())
        .strategy(strategy)
        .desired(3)
        .min_ready(Duration::from_secs(5));
    (builder, truth)
}

/// Live instances of `release`, from the ground truth.
fn live(sim: &SimProvider, release: &Release) -> Vec<immut_core::InstanceId> {
    let (fleet, _) = sim.inspect();
    fleet.into_iter().filter(|i| i.release() == Some(release.id()) && i.state.is_live()).map(|i| i.id).collect()
}

fn readiness_events(events: &[Event]) -> Vec<(ReadinessCheck, bool, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Readiness { at, readiness, accepted, .. } => Some((*at, readiness.is_blocked(), *accepted)),
            _ => None,
        })
        .collect()
}

fn ledger_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-readiness-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(start_paused = true)]
async fn an_image_gone_after_the_switch_keeps_the_old_instances_until_accepted() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 3, true);
    let old = live(&sim, &v1);
    let journal = MemoryJournal::new();
    let ledger = Arc::new(Ledger::on_store(
        StateStore::local(ledger_dir("bg")).unwrap(),
        LedgerKey::new("readiness-test-key-0123456789abcdef").unwrap(),
    ));
    let (builder, truth) = checked(&sim, BlueGreen::new().bake(Duration::from_secs(30)));
    let d = builder.journal(journal.clone()).ledger(ledger.clone()).build().unwrap();
    let mut events = Vec::new();
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| {
            // Someone deregisters the old image once traffic has moved.
            if matches!(e, Event::Switched { .. }) {
                sim.set_readiness(v1.id(), Readiness::blocked("image img-1.0.0 was deregistered"));
            }
            events.push(e.clone());
        })
        .await;
    let Phase::NoWayBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains(&v1.id().to_string()) && reason.contains("deregistered"), "{reason}");
    assert!(reason.contains("accept_no_way_back"), "the reason says how to finish: {reason}");
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(live(&sim, &v1), old, "every old instance is still there");
    let (_, serving) = sim.inspect();
    let new = live(&sim, &v2);
    assert_eq!(new.len(), 3);
    assert!(new.iter().all(|id| serving.contains(id)), "the new release keeps its traffic");
    assert_eq!(sim.calls().terminate, 0, "nothing was terminated");
    assert_eq!(
        readiness_events(&events),
        vec![(ReadinessCheck::Start, false, false), (ReadinessCheck::BeforeTerminate, true, false)]
    );
    assert!(events.iter().any(|e| e.to_string().starts_with("NO WAY")), "the event prints for people");
    // The end is journaled: there is nothing to resume.
    assert!(d.resume("web").unwrap().is_none(), "a stopped deployment is not resumed");
    let recorded = ledger.entries().unwrap();
    assert!(matches!(recorded.last().map(|e| &e.outcome), Some(Phase::NoWayBack { .. })));
    assert!(!recorded.last().unwrap().accepted_no_way_back);

    // A second run that accepts the loss finishes the clean-up.
    let truth = Checker::new(sim.clone(), "web", 3, BlueGreen::new().limits(3));
    let (provider, traffic) = truth.wrap(sim.clone(), sim.traffic());
    let d = Deployer::builder()
        .provider(provider)
        .traffic(traffic)
        .health(sim.health())
        .strategy(BlueGreen::new())
        .desired(3)
        .journal(journal.clone())
        .ledger(ledger.clone())
        .build()
        .unwrap();
    let mut events = Vec::new();
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .accepting_no_way_back()
        .run_with(|e| events.push(e.clone()))
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(truth.finish(&outcome, &v2, None), Vec::<String>::new());
    assert!(live(&sim, &v1).is_empty(), "the old instances are gone now");
    assert_eq!(readiness_events(&events), vec![(ReadinessCheck::BeforeTerminate, true, true)]);
    assert!(ledger.entries().unwrap().last().unwrap().accepted_no_way_back, "the ledger records the acceptance");
    // The setting is journaled with the Begin record, so a resumed run keeps it.
    use immut_core::journal::{Journal, JournalEntry};
    let read = journal.read("web").unwrap();
    let accepted: Vec<bool> = read
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            JournalEntry::Begin { accept_no_way_back, .. } => Some(*accept_no_way_back),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, vec![false, true], "the stopped run, then the accepted one");
}

#[tokio::test(start_paused = true)]
async fn a_previous_release_already_gone_is_refused_before_any_launch() {
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    let gone = Faults {
        readiness: [(v1.id().clone(), Readiness::blocked("image img-1.0.0 is obsolete"))].into_iter().collect(),
        ..Faults::default()
    };
    let sim = latencies(SimProvider::builder()).faults(gone.clone()).build().unwrap();
    sim.seed(&v1, 3, true);
    let (builder, truth) = checked(&sim, BlueGreen::new());
    let d = builder.build().unwrap();
    let mut events = Vec::new();
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    let Phase::Refused { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.starts_with(&ErrorKind::NoWayBack.to_string()) && reason.contains("obsolete"), "{reason}");
    assert_eq!(sim.calls().launch, 0, "nothing was launched");
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(readiness_events(&events), vec![(ReadinessCheck::Start, true, false)]);

    // With accept_no_way_back set on the deployer, the same deployment goes through.
    let sim = latencies(SimProvider::builder()).faults(gone).build().unwrap();
    sim.seed(&v1, 3, true);
    let (builder, truth) = checked(&sim, BlueGreen::new());
    let d = builder.accept_no_way_back(true).build().unwrap();
    let mut events = Vec::new();
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(
        readiness_events(&events),
        vec![(ReadinessCheck::Start, true, true), (ReadinessCheck::BeforeTerminate, true, true)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_deprecated_previous_image_warns_and_the_deployment_goes_on() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 3, true);
    sim.set_readiness(v1.id(), Readiness::ready().with_warning("image img-1.0.0 is deprecated since 2026-11-01"));
    let (builder, truth) = checked(&sim, Rolling::new());
    let d = builder.build().unwrap();
    let mut events = Vec::new();
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    let warned = events
        .iter()
        .filter(|e| matches!(e, Event::Readiness { readiness, .. } if readiness.warnings.iter().any(|w| w.contains("deprecated"))))
        .count();
    // At the start, and before the termination of the last old instances at least: a
    // termination that keeps some reuses an answer younger than a minute.
    assert!(warned >= 2, "{warned} warnings");
    let checks: Vec<ReadinessCheck> =
        events.iter().filter_map(|e| if let Event::Readiness { at, .. } = e { Some(*at) } else { None }).collect();
    assert_eq!(checks.first(), Some(&ReadinessCheck::Start), "{checks:?}");
    assert_eq!(checks.last(), Some(&ReadinessCheck::BeforeTerminate), "{checks:?}");
    assert_eq!(outcome.calls.readiness as usize, warned);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_deployment_stops_at_the_wave_after_the_image_went_away() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 3, true);
    let (builder, truth) = checked(&sim, Rolling::new());
    let d = builder.build().unwrap();
    let outcome = d
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| {
            if matches!(e, Event::Terminated { .. }) {
                sim.set_readiness(v1.id(), Readiness::blocked("image img-1.0.0 was deleted"));
            }
        })
        .await;
    assert!(matches!(outcome.phase, Phase::NoWayBack { .. }), "{}", outcome.summary());
    assert_eq!(truth.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
    assert_eq!(sim.calls().terminate, 1, "only the wave before the image went away was terminated");
    assert_eq!(live(&sim, &v1).len(), 2, "the rest of the old release stays");
    let (fleet, serving) = sim.inspect();
    let serving_healthy = fleet.iter().filter(|i| serving.contains(&i.id) && i.state == InstanceState::Running).count();
    assert_eq!(serving_healthy, 3, "the service keeps its capacity");
}

#[tokio::test]
async fn the_plan_reports_readiness_and_ends_as_the_deployment_would() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 3, true);
    let d = sim.deployer().strategy(BlueGreen::new()).desired(3).build().unwrap();
    let lat = immut_core::sim::Latencies::default();
    sim.set_readiness(v1.id(), Readiness::ready().with_warning("image img-1.0.0 is deprecated"));
    let plan = d.dry_run(&v2, Some(&v1), lat).await.unwrap();
    let r = plan.readiness.as_ref().expect("the plan says whether the way back exists");
    assert_eq!((&r.release, r.readiness.warnings.len(), r.readiness.is_blocked()), (v1.id(), 1, false));
    assert!(plan.outcome.succeeded(), "{}", plan.outcome.summary());

    sim.set_readiness(v1.id(), Readiness::blocked("image img-1.0.0 is obsolete"));
    let plan = d.dry_run(&v2, Some(&v1), lat).await.unwrap();
    assert!(plan.readiness.as_ref().unwrap().readiness.is_blocked());
    let Phase::Refused { reason } = &plan.outcome.phase else { panic!("{}", plan.outcome.summary()) };
    assert!(reason.contains("obsolete"), "{reason}");
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["readiness"]["readiness"]["blocking"], "image img-1.0.0 is obsolete");
    assert_eq!(sim.calls().launch, 0, "a plan changes nothing");
}
