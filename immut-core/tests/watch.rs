//! Watch on the simulator: each out-of-band change is found and repaired by replacement
//! within two intervals with the floor held (the independent checker says so), the watch
//! yields to deployments and deployments wait for its repairs, a release that fails at
//! start opens the breaker, and a restart does not note a finding twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CrashingJournal, release};
use immut_core::checker::Checker;
use immut_core::journal::{Journal, MemoryJournal};
use immut_core::ledger::{Ledger, LedgerKey, WatchNote};
use immut_core::sim::{Faults, OutOfBand, SimProvider};
use immut_core::state::StateStore;
use immut_core::watch::{Cycle, UnmanagedAction, Watch};
use immut_core::{BlueGreen, Deployer, DeploymentId, Event, Provider, Query, Release, ReplacementStrategy, Traffic};

const INTERVAL: Duration = Duration::from_secs(60);
const DESIRED: usize = 3;

fn sim(faults: Faults) -> SimProvider {
    SimProvider::builder()
        .api_latency(Duration::from_millis(100))
        .launch_to_running(Duration::from_secs(5))
        .boot_to_healthy(Duration::from_secs(5))
        .drain(Duration::from_secs(1))
        .faults(faults)
        .build()
        .unwrap()
}

fn ledger() -> Arc<Ledger> {
    Arc::new(Ledger::on_store(StateStore::memory(), LedgerKey::new("watch-tests-ledger-key-0123").unwrap()))
}

/// A deployer on `sim` behind the checker, sharing `journal` and `ledger`.
fn deployer(sim: &SimProvider, checker: Option<&Checker>, journal: &MemoryJournal, ledger: &Arc<Ledger>) -> Deployer {
    deployer_on(sim, checker, Arc::new(journal.clone()), ledger)
}

fn deployer_on(
    sim: &SimProvider,
    checker: Option<&Checker>,
    journal: Arc<dyn Journal>,
    ledger: &Arc<Ledger>,
) -> Deployer {
    let b = Deployer::builder()
        .health(sim.health())
        .strategy(BlueGreen::new())
        .desired(DESIRED)
        .poll_interval(Duration::from_secs(1))
        .instance_deadline(Duration::from_secs(60))
        .progress_deadline(Duration::from_secs(300))
        .journal_arc(journal)
        .ledger(ledger.clone());
    match checker {
        Some(c) => {
            let (p, t) = c.wrap(sim.clone(), sim.traffic());
            b.provider(p).traffic(t).build().unwrap()
        }
        None => b.provider(sim.clone()).traffic(sim.traffic()).build().unwrap(),
    }
}

struct Fixture {
    sim: SimProvider,
    checker: Checker,
    journal: MemoryJournal,
    ledger: Arc<Ledger>,
    v1: Release,
}

/// v1 deployed to three instances, and a checker started on that fleet.
async fn deployed(faults: Faults) -> Fixture {
    let sim = sim(faults);
    let (journal, ledger) = (MemoryJournal::new(), ledger());
    let v1 = release((1, 0, 0));
    let outcome = deployer(&sim, None, &journal, &ledger).deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let checker = Checker::new(sim.clone(), "web", DESIRED, BlueGreen::new().limits(DESIRED));
    Fixture { sim, checker, journal, ledger, v1 }
}

impl Fixture {
    fn watch(&self, unmanaged: UnmanagedAction) -> Watch {
        let d = deployer(&self.sim, Some(&self.checker), &self.journal, &self.ledger);
        Watch::builder(d, self.v1.clone()).interval(INTERVAL).grace(INTERVAL / 2).unmanaged(unmanaged).build().unwrap()
    }

    fn serving_v1(&self) -> usize {
        let (fleet, serving) = self.sim.inspect();
        fleet
            .iter()
            .filter(|i| {
                serving.contains(&i.id) && i.release() == Some(self.v1.id()) && self.sim.true_health(&i.id).is_healthy()
            })
            .count()
    }
}

/// Runs `n` cycles at the interval, as [`Watch::run`] paces them.
async fn cycles(watch: &mut Watch, n: usize) -> Vec<Cycle> {
    let mut out = Vec::new();
    for _ in 0..n {
        let start = tokio::time::Instant::now();
        out.push(watch.run_once().await.unwrap());
        tokio::time::sleep_until(start + INTERVAL).await;
    }
    out
}

/// The first cycle that opened a finding of `kind`, and the first one after it that ends
/// with nothing left to repair.
fn found_and_clean(cycles: &[Cycle], kind: &str) -> (usize, usize) {
    let found = cycles
        .iter()
        .position(|c| c.opened.iter().any(|f| f.kind == kind))
        .unwrap_or_else(|| panic!("no cycle found {kind}: {:#?}", summary(cycles)));
    let clean = cycles[found..]
        .iter()
        .position(|c| c.findings.is_empty())
        .map(|i| found + i)
        .unwrap_or_else(|| panic!("{kind} was never repaired: {:#?}", summary(cycles)));
    (found, clean)
}

fn summary(cycles: &[Cycle]) -> Vec<String> {
    cycles
        .iter()
        .flat_map(|c| c.events.iter().filter(|e| !matches!(e, Event::Step { .. })).map(|e| format!("{}: {e}", c.cycle)))
        .collect()
}

/// Every launch of a repair is one instance: a blue/green fleet is never replaced whole.
fn launches(cycles: &[Cycle]) -> Vec<usize> {
    cycles
        .iter()
        .flat_map(|c| c.events.iter())
        .filter_map(|e| match e {
            Event::Launched { ids, .. } => Some(ids.len()),
            _ => None,
        })
        .collect()
}

fn assert_repaired(f: &Fixture, cycles: &[Cycle], kind: &str) {
    let (found, clean) = found_and_clean(cycles, kind);
    // Found at the first cycle after the change, repaired during the next one at the latest.
    assert!(clean - found <= 2, "{kind}: found at cycle {found}, clean at {clean}: {:#?}", summary(cycles));
    assert!(launches(cycles).iter().all(|n| *n == 1), "{:?}\n{:#?}", launches(cycles), summary(cycles));
    assert!(cycles.iter().all(|c| c.repair.as_ref().is_none_or(|r| r.outcome.succeeded())), "{:#?}", summary(cycles));
    assert_eq!(f.checker.violations(), Vec::<String>::new());
    assert_eq!(f.serving_v1(), DESIRED, "three healthy instances of v1 serve again");
}

#[tokio::test(start_paused = true)]
async fn a_killed_instance_is_replaced_by_one_new_one() {
    let faults =
        Faults { out_of_band: vec![OutOfBand { at: Duration::from_secs(100), count: 1 }], ..Faults::default() };
    let f = deployed(faults).await;
    let mut watch = f.watch(UnmanagedAction::Report);
    let cycles = cycles(&mut watch, 5).await;
    assert_repaired(&f, &cycles, "missing_capacity");
    let repaired: Vec<_> = cycles.iter().filter_map(|c| c.repair.as_ref()).collect();
    assert_eq!(repaired.len(), 1, "one repair: {:#?}", summary(&cycles));
    assert_eq!(repaired[0].missing, 1);
    // The ledger holds the repair and the finding's opening and closing, once each.
    let entries = f.ledger.entries().unwrap();
    assert!(entries.iter().any(|e| e.deployment == repaired[0].deployment && e.succeeded()));
    let notes: Vec<_> = entries.iter().filter_map(|e| e.watch.as_ref()).collect();
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(matches!(notes[0], WatchNote::FindingOpened { finding } if finding.kind == "missing_capacity"));
    assert!(matches!(notes[1], WatchNote::FindingClosed { finding } if finding.kind == "missing_capacity"));
    assert!(f.ledger.verify().unwrap().is_intact());
}

#[tokio::test(start_paused = true)]
async fn an_instance_stopped_out_of_band_is_replaced_after_the_grace_period() {
    let faults =
        Faults { out_of_band_stops: vec![OutOfBand { at: Duration::from_secs(100), count: 1 }], ..Faults::default() };
    let f = deployed(faults).await;
    let mut watch = f.watch(UnmanagedAction::Report);
    let cycles = cycles(&mut watch, 5).await;
    assert_repaired(&f, &cycles, "unhealthy");
    let (found, _) = found_and_clean(&cycles, "unhealthy");
    assert!(cycles[found].repair.is_none(), "within its grace period the instance is not replaced yet");
    let stopped = f.sim.inspect().0.into_iter().filter(|i| i.state == immut_core::InstanceState::Stopped).count();
    assert_eq!(stopped, 0, "the stopped instance was terminated");
}

#[tokio::test(start_paused = true)]
async fn an_unmanaged_copy_is_replaced_when_the_settings_say_so_and_reported_otherwise() {
    let f = deployed(Faults::default()).await;
    let hand = f.sim.launch_unmanaged(1, &f.v1.artifact().image, true).remove(0).id;
    let mut reporting = f.watch(UnmanagedAction::Report);
    let seen = reporting.run_once().await.unwrap();
    assert_eq!(seen.findings.len(), 1, "{:#?}", seen.findings);
    assert_eq!(seen.findings[0].kind, "unmanaged");
    assert!(seen.repair.is_none(), "reported only");
    drop(reporting);

    let mut watch = f.watch(UnmanagedAction::Replace);
    let cycles = cycles(&mut watch, 4).await;
    let clean = cycles.iter().position(|c| c.findings.is_empty()).expect("repaired");
    assert!(clean <= 2, "{:#?}", summary(&cycles));
    assert!(!f.sim.traffic().serving().await.unwrap().contains(&hand));
    assert!(f.sim.describe(&Query::ids([hand.clone()]).with_unmanaged()).await.unwrap().is_empty(), "terminated");
    assert_eq!(f.checker.violations(), Vec::<String>::new());
    assert_eq!(f.serving_v1(), DESIRED);
}

#[tokio::test(start_paused = true)]
async fn another_build_wearing_copied_labels_is_replaced() {
    let f = deployed(Faults::default()).await;
    let real = f.sim.describe(&Query::service("web")).await.unwrap().remove(0);
    let copy = f.sim.launch_unmanaged(1, "img-9.9.9", true).remove(0).id;
    for (k, v) in real.labels.iter() {
        f.sim.edit_label(&copy, k, v);
    }
    let mut watch = f.watch(UnmanagedAction::Report);
    let cycles = cycles(&mut watch, 4).await;
    let (found, clean) = found_and_clean(&cycles, "unrecorded");
    assert!(clean - found <= 2, "{:#?}", summary(&cycles));
    assert!(f.sim.describe(&Query::ids([copy]).with_unmanaged()).await.unwrap().is_empty());
    assert_eq!(f.checker.violations(), Vec::<String>::new());
    assert_eq!(f.serving_v1(), DESIRED);
}

#[tokio::test(start_paused = true)]
async fn the_watch_yields_to_a_deployment_and_a_deployment_waits_for_a_repair() {
    let f = deployed(Faults::default()).await;
    let mut watch = f.watch(UnmanagedAction::Report);
    let held = f.journal.lock("web", &DeploymentId::new("d-someone")).unwrap();
    let cycle = watch.run_once().await.unwrap();
    assert_eq!(cycle.yielded.as_ref().map(|d| d.as_str()), Some("d-someone"));
    assert!(cycle.events.iter().any(|e| matches!(e, Event::WatchYielded { .. })));
    drop(held);
    assert!(watch.run_once().await.unwrap().yielded.is_none());

    // A repair holds the lease: a deployment of v2 waits for it, then proceeds.
    let repair = f.journal.lock("web", &DeploymentId::new("watch-0123456789ab")).unwrap();
    let d = deployer(&f.sim, None, &f.journal, &f.ledger);
    let v2 = release((2, 0, 0));
    let run = tokio::spawn(async move {
        let mut events = Vec::new();
        let outcome = d.deploy(v2).run_with(|e| events.push(e.clone())).await;
        (outcome, events)
    });
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!run.is_finished(), "the deployment waits while the repair holds the lease");
    drop(repair);
    let (outcome, events) = run.await.unwrap();
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let waited = events.iter().filter(|e| matches!(e, Event::WaitingForLease { .. })).count();
    assert_eq!(waited, 1, "one message says why it waits");
    assert!(events.iter().any(|e| e.to_string().contains("watch repair watch-0123456789ab holds the lease")));
    // A deployment that finds anyone else holding the lease is refused as before.
    let other = f.journal.lock("web", &DeploymentId::new("d-someone")).unwrap();
    let refused = deployer(&f.sim, None, &f.journal, &f.ledger).deploy(release((3, 0, 0))).run().await;
    assert!(matches!(refused.phase, immut_core::Phase::Refused { .. }), "{}", refused.summary());
    drop(other);
}

#[tokio::test(start_paused = true)]
async fn a_release_whose_instances_never_come_up_opens_the_breaker() {
    // The fleet was put in place before; every instance launched from now on never turns
    // healthy, as a release that crashes at start. Someone kills one instance.
    let faults = Faults {
        never_healthy_rate: 1.0,
        out_of_band: vec![OutOfBand { at: Duration::from_secs(10), count: 1 }],
        ..Faults::default()
    };
    let sim = sim(faults);
    let (journal, ledger) = (MemoryJournal::new(), ledger());
    let v1 = release((1, 0, 0));
    sim.seed(&v1, DESIRED, true);
    let d = deployer(&sim, None, &journal, &ledger);
    let mut watch = Watch::builder(d, v1.clone()).interval(INTERVAL).breaker_threshold(2).build().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut all = Vec::new();
    for _ in 0..4 {
        all.push(watch.run_once().await.unwrap());
        tokio::time::sleep(INTERVAL).await;
    }
    let failed = all.iter().filter(|c| c.repair.as_ref().is_some_and(|r| !r.outcome.succeeded())).count();
    assert_eq!(failed, 2, "two repairs fail, then no more are tried: {:#?}", summary(&all));
    let opened: Vec<String> = all
        .iter()
        .flat_map(|c| &c.events)
        .filter_map(|e| match e {
            Event::BreakerOpened { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1, "said once: {opened:?}");
    assert!(opened[0].contains("stopped repairing") && opened[0].contains("replacement budget"), "{}", opened[0]);
    assert!(all.last().unwrap().breaker_open && all.last().unwrap().repair.is_none());
    assert!(watch.breaker_open());
    // The serving instances were never touched: the two that survived still serve.
    let (_, serving) = sim.inspect();
    assert_eq!(serving.len(), DESIRED - 1);
    // A restarted watch reads the open breaker back from the ledger.
    let d = deployer(&sim, None, &journal, &ledger);
    let mut again = Watch::builder(d, v1).interval(INTERVAL).breaker_threshold(2).build().unwrap();
    let cycle = again.run_once().await.unwrap();
    assert!(cycle.breaker_open && cycle.repair.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_watch_does_not_note_an_open_finding_twice() {
    let faults =
        Faults { out_of_band_stops: vec![OutOfBand { at: Duration::from_secs(100), count: 1 }], ..Faults::default() };
    let f = deployed(faults).await;
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(110)).await;
    let build = || {
        let d = deployer(&f.sim, Some(&f.checker), &f.journal, &f.ledger);
        // A long grace: the finding stays open across the restart.
        Watch::builder(d, f.v1.clone()).interval(INTERVAL).grace(Duration::from_secs(3600)).build().unwrap()
    };
    let mut first = build();
    let seen = first.run_once().await.unwrap();
    assert_eq!(seen.opened.len(), 1, "{:#?}", seen.findings);
    drop(first);
    let mut second = build();
    let again = second.run_once().await.unwrap();
    assert!(again.opened.is_empty() && again.closed.is_empty(), "{:#?}", again.events);
    assert_eq!(again.findings, seen.findings, "the same finding, seen at the same time");
    let opened = f
        .ledger
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.watch, Some(WatchNote::FindingOpened { .. })))
        .count();
    assert_eq!(opened, 1);
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_refused_in_build_naming_the_field() {
    let f = deployed(Faults::default()).await;
    let d = || deployer(&f.sim, None, &f.journal, &f.ledger);
    let e = Watch::builder(d(), f.v1.clone()).interval(Duration::ZERO).build().unwrap_err();
    assert!(e.to_string().contains("watch.interval"), "{e}");
    let e = Watch::builder(d(), f.v1.clone()).max_repairs(0).build().unwrap_err();
    assert!(e.to_string().contains("watch.max_repairs"), "{e}");
    let e = Watch::builder(d(), f.v1.clone()).breaker_threshold(0).build().unwrap_err();
    assert!(e.to_string().contains("watch.breaker_threshold"), "{e}");
    let bare = f.sim.deployer().strategy(BlueGreen::new()).desired(3).build().unwrap();
    let e = Watch::builder(bare, f.v1.clone()).build().unwrap_err();
    assert!(e.to_string().contains("journal"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn run_stops_on_cancel() {
    let f = deployed(Faults::default()).await;
    let mut watch = f.watch(UnmanagedAction::Report);
    let cancel = watch.cancel_handle();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(INTERVAL * 3 + Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let mut cycles = 0;
    watch
        .run(|e| {
            if matches!(e, Event::WatchCycle { .. }) {
                cycles += 1;
            }
        })
        .await;
    stopper.await.unwrap();
    assert_eq!(cycles, 4, "cycles at 0, 1, 2 and 3 intervals, then the cancel");
    assert_eq!(f.journal.holder("web").unwrap(), None, "no lease left held");
}

#[tokio::test(start_paused = true)]
async fn at_most_max_repairs_instances_are_replaced_per_interval() {
    let f = deployed(Faults::default()).await;
    let hands: Vec<_> = f.sim.launch_unmanaged(3, &f.v1.artifact().image, true).into_iter().map(|i| i.id).collect();
    let mut watch = f.watch(UnmanagedAction::Replace);
    let cycles = cycles(&mut watch, 6).await;
    let per_cycle: Vec<usize> = cycles.iter().map(|c| c.repair.as_ref().map_or(0, |r| r.replacing.len())).collect();
    assert!(per_cycle.iter().all(|n| *n <= 1), "{per_cycle:?}");
    assert_eq!(per_cycle.iter().sum::<usize>(), 3, "{per_cycle:?}");
    assert!(cycles.last().unwrap().findings.is_empty(), "{:#?}", summary(&cycles));
    let left = f.sim.describe(&Query::ids(hands).with_unmanaged()).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(f.checker.violations(), Vec::<String>::new());
    assert_eq!(f.serving_v1(), DESIRED);
}

#[tokio::test(start_paused = true)]
async fn unmanaged_instances_are_terminated_outright_when_asked_and_only_in_scope() {
    let f = deployed(Faults::default()).await;
    let serving = f.sim.launch_unmanaged(1, &f.v1.artifact().image, true).remove(0).id;
    let idle = f.sim.launch_unmanaged(1, &f.v1.artifact().image, false).remove(0).id;
    let mut watch = f.watch(UnmanagedAction::Terminate);
    let cycle = watch.run_once().await.unwrap();
    assert_eq!(cycle.removed, vec![serving.clone()], "{:#?}", cycle.events);
    assert!(cycle.repair.is_none(), "no deployment for it");
    assert!(f.sim.describe(&Query::ids([serving]).with_unmanaged()).await.unwrap().is_empty());
    // The idle one is outside the default scope (serving): reported, never touched.
    let next = watch.run_once().await.unwrap();
    assert_eq!(next.findings.len(), 1);
    assert_eq!(next.findings[0].instance.as_ref(), Some(&idle));
    assert_eq!(next.findings[0].action, immut_core::watch::FindingAction::Report);
    assert_eq!(f.sim.describe(&Query::ids([idle]).with_unmanaged()).await.unwrap().len(), 1);
    assert_eq!(f.checker.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_deployment_whose_process_died_is_left_to_resume() {
    let f = deployed(Faults::default()).await;
    let crashing = Arc::new(CrashingJournal::new(f.journal.clone(), 3));
    let d = deployer_on(&f.sim, None, crashing, &f.ledger);
    let run = tokio::spawn(d.deploy(release((2, 0, 0))).run());
    assert!(run.await.unwrap_err().is_panic());
    let mut watch = f.watch(UnmanagedAction::Replace);
    let cycle = watch.run_once().await.unwrap();
    assert!(cycle.yielded.is_some(), "{:#?}", cycle.events);
    assert!(cycle.repair.is_none() && cycle.findings.is_empty(), "nothing of it is drift yet");
}

#[tokio::test(start_paused = true)]
async fn a_repair_interrupted_by_a_crash_is_resumed_by_the_next_watch() {
    let faults =
        Faults { out_of_band: vec![OutOfBand { at: Duration::from_secs(100), count: 1 }], ..Faults::default() };
    let f = deployed(faults).await;
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(110)).await;
    // The watch dies after the repair's launch intent, before its result is journaled.
    let crashing = Arc::new(CrashingJournal::new(f.journal.clone(), 3));
    let d = deployer_on(&f.sim, Some(&f.checker), crashing, &f.ledger);
    let mut first = Watch::builder(d, f.v1.clone()).interval(INTERVAL).build().unwrap();
    let died = tokio::spawn(async move { first.run_once().await });
    assert!(died.await.unwrap_err().is_panic());
    let interrupted = immut_core::journal::interrupted(&f.journal.read("web").unwrap()).expect("a repair in flight");
    assert!(immut_core::watch::is_watch(&interrupted.deployment));

    let mut second = f.watch(UnmanagedAction::Report);
    let resumed = second.run_once().await.unwrap();
    let repair = resumed.repair.expect("the interrupted repair was resumed");
    assert_eq!(repair.deployment, interrupted.deployment);
    assert!(repair.outcome.succeeded(), "{}", repair.outcome.summary());
    assert!(resumed.events.iter().any(|e| matches!(e, Event::Resumed { pending_launch: true, .. })));
    let clean = second.run_once().await.unwrap();
    assert!(clean.findings.is_empty(), "{:#?}", clean.events);
    assert_eq!(f.sim.instances_created(), DESIRED + 1, "the launch in flight was adopted, not repeated");
    assert_eq!(f.checker.violations(), Vec::<String>::new());
    assert_eq!(f.serving_v1(), DESIRED);
}
