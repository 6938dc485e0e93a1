//! The write-ahead journal, the service lock, and resuming after a crash at every journal
//! record, on the simulator in virtual time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CrashingJournal, assert_final_fleet, latencies, release};
use immut_core::engine::{Event, Phase};
use immut_core::journal::{FileJournal, Journal, JournalEntry, JournalRecord, MemoryJournal, StoreJournal};
use immut_core::sim::SimProvider;
use immut_core::strategy::ReplacementStrategy;
use immut_core::{BlueGreen, Canary, Count, Deployer, DeploymentId, ErrorKind, Provider, Query, Rolling};

fn deployer(sim: &SimProvider, journal: Arc<dyn Journal>, strategy: Arc<dyn ReplacementStrategy>) -> Deployer {
    sim.deployer()
        .strategy_arc(strategy)
        .desired(4)
        .min_ready(Duration::from_secs(5))
        .journal_arc(journal)
        .build()
        .unwrap()
}

fn strategies() -> Vec<Arc<dyn ReplacementStrategy>> {
    vec![
        Arc::new(BlueGreen::new().bake(Duration::from_secs(10))),
        Arc::new(Rolling::new()),
        Arc::new(Canary::new([Count::Count(1)])),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_mutation_is_journaled_before_and_after() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let journal = MemoryJournal::new();
    let outcome =
        deployer(&sim, Arc::new(journal.clone()), Arc::new(Rolling::new())).deploy(v2).with_previous(v1).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let records = journal.read("web").unwrap().records;
    assert!(matches!(records.first().unwrap().entry, JournalEntry::Begin { .. }));
    assert!(matches!(records.last().unwrap().entry, JournalEntry::End { .. }));
    let intents = records.iter().filter(|r| matches!(r.entry, JournalEntry::Intent { .. })).count();
    let applied = records.iter().filter(|r| matches!(r.entry, JournalEntry::Applied { .. })).count();
    // 4 waves of launch, attach, detach, terminate.
    assert_eq!((intents, applied), (16, 16));
    for pair in records.windows(2) {
        if let JournalEntry::Intent { step, .. } = &pair[0].entry {
            assert!(matches!(&pair[1].entry, JournalEntry::Applied { step: s, .. } if s == step), "{pair:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_every_journal_record_resumes_to_a_clean_end() {
    let mut kill_points = 0;
    for strategy in strategies() {
        // An uninterrupted run counts the records, so every one of them is a kill point.
        let total = {
            let sim = latencies(SimProvider::builder()).build().unwrap();
            sim.seed(&release((1, 0, 0)), 4, true);
            let journal = MemoryJournal::new();
            let d = deployer(&sim, Arc::new(journal.clone()), strategy.clone());
            assert!(d.deploy(release((2, 0, 0))).with_previous(release((1, 0, 0))).run().await.succeeded());
            journal.read("web").unwrap().records.len()
        };
        for crash_at in 0..total {
            let sim = latencies(SimProvider::builder()).build().unwrap();
            let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
            sim.seed(&v1, 4, true);
            let journal = MemoryJournal::new();
            let crashing = Arc::new(CrashingJournal::new(journal.clone(), crash_at));
            let d = deployer(&sim, crashing, strategy.clone());
            let run = tokio::spawn(d.deploy(v2.clone()).with_previous(v1.clone()).run());
            assert!(
                run.await.unwrap_err().is_panic(),
                "{} crash {crash_at}: the run should have died",
                strategy.name()
            );
            kill_points += 1;

            let d = deployer(&sim, Arc::new(journal.clone()), strategy.clone());
            let outcome = match d.resume("web").unwrap() {
                Some(resumed) => resumed.run().await,
                None => {
                    // Died before its Begin record: nothing changed, v1 serves untouched.
                    assert_eq!(crash_at, 0);
                    let live = sim.describe(&Query::service("web")).await.unwrap();
                    assert!(live.len() == 4 && live.iter().all(|i| i.release() == Some(v1.id())));
                    continue;
                }
            };
            assert!(outcome.succeeded(), "{} crash {crash_at}: {}", strategy.name(), outcome.summary());
            // Exactly 4 instances of v2, all serving: nothing launched twice, nothing left over.
            assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
        }
    }
    println!("kill points exercised on the simulator: {kill_points}");
    assert!(kill_points > 40, "{kill_points}");
}

#[tokio::test(start_paused = true)]
async fn a_resumed_deployment_can_be_rolled_back_instead() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let journal = MemoryJournal::new();
    let crashing = Arc::new(CrashingJournal::new(journal.clone(), 6));
    let run = tokio::spawn(
        deployer(&sim, crashing, Arc::new(Rolling::new())).deploy(v2.clone()).with_previous(v1.clone()).run(),
    );
    assert!(run.await.unwrap_err().is_panic());
    let resumed = deployer(&sim, Arc::new(journal), Arc::new(Rolling::new())).resume("web").unwrap().unwrap();
    resumed.cancel_handle().cancel();
    let mut events = Vec::new();
    let outcome = resumed.run_with(|e| events.push(e.clone())).await;
    assert!(matches!(events[0], Event::Resumed { pending_launch: false, .. }), "{:?}", events[0]);
    assert!(matches!(outcome.phase, Phase::RolledBack { .. }), "{}", outcome.summary());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn resume_refuses_a_deployer_that_differs_from_the_journal() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let journal = MemoryJournal::new();
    let crashing = Arc::new(CrashingJournal::new(journal.clone(), 6));
    let run = tokio::spawn(
        deployer(&sim, crashing, Arc::new(Rolling::new())).deploy(v2.clone()).with_previous(v1.clone()).run(),
    );
    assert!(run.await.unwrap_err().is_panic());
    journal.clear_locks();

    let other_count =
        sim.deployer().strategy(Rolling::new()).desired(6).journal_arc(Arc::new(journal.clone())).build().unwrap();
    let e = other_count.resume("web").unwrap_err();
    assert_eq!(e.kind(), immut_core::ErrorKind::InvalidInput);
    assert!(
        e.message().starts_with("desired:") && e.message().contains("desired 4") && e.message().contains("desired 6"),
        "{e}"
    );

    let other_strategy = deployer(&sim, Arc::new(journal.clone()), Arc::new(BlueGreen::new()));
    let e = other_strategy.resume("web").unwrap_err();
    assert!(
        e.message().starts_with("strategy:") && e.message().contains("rolling") && e.message().contains("blue_green"),
        "{e}"
    );

    // The matching deployer resumes it, and nothing was changed by the refusals.
    let resumed = deployer(&sim, Arc::new(journal), Arc::new(Rolling::new())).resume("web").unwrap().unwrap();
    let outcome = resumed.run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
}

#[tokio::test(start_paused = true)]
async fn a_second_deployment_of_the_service_is_refused_naming_the_first() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    sim.seed(&v1, 4, true);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let first = deployer(&sim, journal.clone(), Arc::new(Rolling::new()))
        .deploy(v2.clone())
        .with_id(DeploymentId::new("d-first"));
    let first = tokio::spawn(first.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = deployer(&sim, journal.clone(), Arc::new(Rolling::new())).deploy(v2.clone()).run().await;
    match &second.phase {
        Phase::Refused { reason } => assert!(reason.contains("d-first") && reason.contains("Conflict"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(first.await.unwrap().succeeded());
    // Once the first ended, the lock is free again.
    let third = deployer(&sim, journal, Arc::new(Rolling::new()))
        .deploy(v1.clone())
        .with_previous(v2)
        .as_rollback()
        .run()
        .await;
    assert!(!matches!(third.phase, Phase::Refused { .. }), "{}", third.summary());
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-journal-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record(gate: &str) -> JournalRecord {
    JournalRecord {
        deployment: DeploymentId::new("d1"),
        at_ms: 1,
        entry: JournalEntry::GatePassed { gate: gate.into() },
    }
}

fn record_file(dir: &std::path::Path, seq: u64) -> std::path::PathBuf {
    dir.join(StoreJournal::record_key("web", seq))
}

#[test]
fn records_are_numbered_objects_stamped_with_writer_nonce_and_epoch() {
    let dir = temp_dir("objects");
    let journal = FileJournal::open(&dir).unwrap();
    journal.append("web", &record("a")).unwrap();
    let guard = journal.lock("web", &DeploymentId::new("d1")).unwrap();
    journal.append("web", &record("b")).unwrap();
    drop(guard);
    assert!(record_file(&dir, 0).is_file() && record_file(&dir, 1).is_file());
    let stored = journal.stored("web").unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["epoch"], 0, "written without a lease");
    assert_eq!(stored[1]["epoch"], 1, "written under lease epoch 1");
    assert_eq!(stored[1]["writer"], journal.store().writer());
    assert_ne!(stored[0]["nonce"], stored[1]["nonce"]);
    // Another process (a fresh handle) reads the same records.
    let other = FileJournal::open(&dir).unwrap();
    assert_eq!(other.read("web").unwrap().records, vec![record("a"), record("b")]);
    assert_eq!(other.read_last("web").unwrap().records.len(), 2);
}

#[test]
fn an_unreadable_or_missing_record_is_an_error_naming_it_never_nothing() {
    let dir = temp_dir("corrupt");
    let journal = FileJournal::open(&dir).unwrap();
    for gate in ["a", "b", "c"] {
        journal.append("web", &record(gate)).unwrap();
    }
    std::fs::write(record_file(&dir, 1), br#"{"writer":"x","nonce":"y","seq":1,"epoch":0,"record":{"deploym"#).unwrap();
    let e = FileJournal::open(&dir).unwrap().read("web").unwrap_err();
    assert!(
        e.message().contains("corrupt state")
            && e.message().contains("journal/web/00000000000000000001.json")
            && e.message().contains("record 1"),
        "{e}"
    );
    std::fs::remove_file(record_file(&dir, 1)).unwrap();
    let e = FileJournal::open(&dir).unwrap().read("web").unwrap_err();
    assert!(e.message().contains("record 1 of service web is missing while record 2 exists"), "{e}");
    // Resume, which reads the tail, stops on it too rather than starting over.
    let tail = FileJournal::open(&dir).unwrap().read_last("web").unwrap_err();
    assert!(tail.message().contains("missing"), "{tail}");
}

#[test]
fn two_writers_never_both_append_record_n() {
    let dir = temp_dir("two-writers");
    let (a, b) = (FileJournal::open(&dir).unwrap(), FileJournal::open(&dir).unwrap());
    a.append("web", &record("a0")).unwrap();
    // Both know the next number is 1; b takes it first.
    assert_eq!(b.read("web").unwrap().records.len(), 1);
    b.append("web", &record("b1")).unwrap();
    let e = a.append("web", &record("a1")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.message().contains("record 1 was appended by writer"), "{e}");
    assert_eq!(a.read("web").unwrap().records, vec![record("a0"), record("b1")]);
}

#[test]
fn the_lease_names_its_holder_and_one_of_a_dead_process_here_is_taken_over_at_once() {
    let dir = temp_dir("lock");
    let journal = FileJournal::open(&dir).unwrap();
    assert_eq!(journal.holder("web").unwrap(), None);
    let held = journal.lock("web", &DeploymentId::new("d-live")).unwrap();
    assert_eq!(held.lease().unwrap().epoch(), 1);
    assert_eq!(journal.holder("web").unwrap(), Some(DeploymentId::new("d-live")), "the audit must see the live holder");
    let e = journal.lock("web", &DeploymentId::new("d-two")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("d-live") && e.to_string().contains(&std::process::id().to_string()), "{e}");
    drop(held);
    assert!(dir.join("lease/web/00000000000000000001/released.json").is_file(), "released on drop");
    assert_eq!(journal.holder("web").unwrap(), None, "a released lease holds nothing");
    let again = journal.lock("web", &DeploymentId::new("d-two")).unwrap();
    assert_eq!(again.lease().unwrap().epoch(), 2, "the next deployer starts at once");
    drop(again);

    // A lease left by a process on this machine that is gone: a child that exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = journal.store().host().clone();
    let far =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 3_600_000;
    let dead = serde_json::json!({
        "writer": "dead", "nonce": "n", "service": "web", "epoch": 3, "deployment": "d-dead",
        "host": host.hostname, "boot_id": host.boot_id, "pid": pid, "start_ticks": 1,
        "acquired_at_ms": 1, "expires_at_ms": far, "clock_skew_ms": 0
    });
    std::fs::create_dir_all(dir.join("lease/web/00000000000000000003")).unwrap();
    std::fs::write(dir.join("lease/web/00000000000000000003/lease.json"), dead.to_string()).unwrap();
    assert_eq!(journal.holder("web").unwrap(), None, "a dead process on this machine holds nothing");
    let taken = journal.lock("web", &DeploymentId::new("d-three")).unwrap();
    assert_eq!(taken.lease().unwrap().epoch(), 4, "a dead process on this machine holds nothing");
    drop(taken);

    // The same lease from another machine is never declared dead: refused until it expires.
    let elsewhere = dead_elsewhere(&dir, 5, pid, far);
    assert_eq!(journal.holder("web").unwrap(), Some(DeploymentId::new(&elsewhere)), "unexpired: still the holder");
    let e = journal.lock("web", &DeploymentId::new("d-four")).unwrap_err();
    assert!(e.message().contains(&elsewhere) && e.message().contains("frees at"), "{e}");
}

fn dead_elsewhere(dir: &std::path::Path, epoch: u64, pid: u32, expires: u64) -> String {
    let record = serde_json::json!({
        "writer": "far", "nonce": "n", "service": "web", "epoch": epoch, "deployment": "d-elsewhere",
        "host": "another-machine", "boot_id": "another-boot", "pid": pid, "start_ticks": 1,
        "acquired_at_ms": 1, "expires_at_ms": expires, "clock_skew_ms": 0
    });
    let epoch_dir = dir.join(format!("lease/web/{epoch:020}"));
    std::fs::create_dir_all(&epoch_dir).unwrap();
    std::fs::write(epoch_dir.join("lease.json"), record.to_string()).unwrap();
    "d-elsewhere".to_owned()
}

#[test]
fn corrupt_lease_state_is_an_error_never_a_free_service() {
    let dir = temp_dir("bad-lease");
    let journal = FileJournal::open(&dir).unwrap();
    drop(journal.lock("web", &DeploymentId::new("d1")).unwrap());
    std::fs::create_dir_all(dir.join("lease/web/00000000000000000002")).unwrap();
    std::fs::write(dir.join("lease/web/00000000000000000002/lease.json"), b"{not json").unwrap();
    for e in [journal.holder("web").unwrap_err(), journal.lock("web", &DeploymentId::new("d2")).unwrap_err()] {
        assert!(
            e.message().contains("corrupt state") && e.message().contains("lease/web/00000000000000000002/lease.json"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_record_of_a_journal_on_files_resumes_to_a_clean_end() {
    // The same crash-and-resume as on the memory journal, on the local state store: the crashed
    // run's lease is released as it unwinds, so each resume takes the next epoch at once.
    let mut kill_points = 0;
    let strategy: Arc<dyn ReplacementStrategy> = Arc::new(BlueGreen::new().bake(Duration::from_millis(50)));
    let deployer = |sim: &SimProvider, journal: Arc<dyn Journal>| {
        sim.deployer()
            .strategy_arc(strategy.clone())
            .desired(3)
            .poll_interval(Duration::from_millis(5))
            .journal_arc(journal)
            .build()
            .unwrap()
    };
    let total = {
        let sim = SimProvider::builder().build().unwrap();
        sim.seed(&release((1, 0, 0)), 3, true);
        let journal = FileJournal::open(temp_dir("files-count")).unwrap();
        let d = deployer(&sim, Arc::new(journal.clone()));
        assert!(d.deploy(release((2, 0, 0))).with_previous(release((1, 0, 0))).run().await.succeeded());
        journal.read("web").unwrap().records.len()
    };
    for crash_at in 1..total {
        let sim = SimProvider::builder().build().unwrap();
        let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
        sim.seed(&v1, 3, true);
        let dir = temp_dir(&format!("files-{crash_at}"));
        let journal = FileJournal::open(&dir).unwrap();
        let crashing = Arc::new(CrashingJournal::new(journal.clone(), crash_at));
        let run = tokio::spawn(deployer(&sim, crashing).deploy(v2.clone()).with_previous(v1.clone()).run());
        assert!(run.await.unwrap_err().is_panic());
        kill_points += 1;
        // A new handle, as a new process would open.
        let resumed = deployer(&sim, Arc::new(FileJournal::open(&dir).unwrap())).resume("web").unwrap().unwrap();
        let outcome = resumed.run().await;
        assert!(outcome.succeeded(), "crash {crash_at}: {}", outcome.summary());
        assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 3, 3).await;
        let epochs = std::fs::read_dir(dir.join("lease/web")).unwrap().count();
        assert_eq!(epochs, 2, "crash {crash_at}: one epoch for the run, one for the resume");
    }
    println!("kill points exercised on the local state store: {kill_points}");
    assert!(total >= 8 && kill_points == total - 1, "{kill_points} of {total}");
}

#[test]
fn an_unwritable_journal_dir_is_named() {
    let e = FileJournal::open("/proc/immut-no-journal-here").unwrap_err();
    assert!(e.to_string().contains("journal_dir"), "{e}");
}
