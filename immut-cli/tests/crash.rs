//! Kill `immut deploy` with SIGKILL just before each journal record of a blue/green and a
//! rolling deployment of real processes (the local provider), and inside its spawn loop, then
//! run `immut resume` in a new process.
//!
//! The expected outcome of each kill point follows from the record the kill prevented, since
//! resume sees exactly the records before it:
//!
//! - before record 0 (`begin`): nothing of the deployment is durable, so there is nothing to
//!   resume and the previous release keeps serving, untouched;
//! - before any later record: the deployment began and no `rolling_back` record is durable,
//!   so resume continues it in `Deploying` to `Succeeded` on the new release. When the record
//!   is the `applied` answer of a launch intent, the launch was in flight: resume completes it
//!   under its token, adopting what the dead process launched;
//! - inside the spawn loop of a launch (its intent is durable, its answer is not): after the
//!   record of spawn k was written ahead and before its process started, or after the process
//!   started and before its record was completed. Before the resume, everything that runs is
//!   visible to describe; resume then completes the launch in flight like any other;
//! - (were a `rolling_back` record durable, resume would go on rolling back to the previous
//!   release; a healthy deployment journals none, and the test asserts that it does not.)
//!
//! Every time the fleet ends with exactly the desired count, all serving, all of one release:
//! no duplicate instance, no orphan (checked against the processes themselves, found by the
//! state directory they carry, not against the state files), and no record of a terminated
//! instance left behind. The kill points are `immut`'s hidden `--kill-at-record N` and
//! `--kill-at-spawn N:before|after`.

mod support;

use std::process::ExitStatus;

use immut::engine::Event;
use immut::journal::{JournalEntry, JournalRecord};
use immut::{InstanceId, Phase, Provider, ProviderExt, Query, Traffic};
use support::Case;

const DESIRED: usize = 2;
const SERVICE: &str = "crash";

/// A finished run of `immut`: its exit status and the events it printed.
struct Run {
    status: ExitStatus,
    events: Vec<Event>,
    /// What it printed, for failure messages.
    said: String,
}

fn run(case: &Case, args: &[&str]) -> Run {
    let output = case.run(args);
    let said = format!("{}{}", support::stdout(&output), support::stderr(&output));
    Run { status: output.status, events: support::events(&output), said }
}

fn deploy(case: &Case, version: &str, extra: &[&str]) -> Run {
    let set = format!("artifact.version={version}");
    run(case, &[&["deploy", "--json", "--set", &set][..], extra].concat())
}

/// A record as a person names it: `begin`, `intent launch`, `applied`, `end`...
fn shape(record: &JournalRecord) -> String {
    let kind = serde_json::to_value(&record.entry).unwrap()["kind"].as_str().unwrap().to_owned();
    match &record.entry {
        JournalEntry::Intent { decision, .. } => {
            format!("{kind} {}", serde_json::to_value(decision).unwrap()["action"].as_str().unwrap_or("?"))
        }
        _ => kind,
    }
}

/// What a kill just before record `n` of `records` (one uninterrupted deployment) must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// Nothing durable: no resume, the previous release serves as before.
    Untouched,
    /// Resumed in `Deploying` and carried to `Succeeded`.
    Succeeded {
        /// A launch intent without its answer was durable.
        pending_launch: bool,
    },
}

fn expected(records: &[JournalRecord], n: usize) -> Expected {
    let durable = &records[..n];
    assert!(
        !durable.iter().any(|r| matches!(r.entry, JournalEntry::RollingBack { .. })),
        "a healthy deployment journals no rollback: {:?}",
        durable.iter().map(shape).collect::<Vec<_>>()
    );
    match durable.last() {
        None => Expected::Untouched,
        Some(last) => {
            Expected::Succeeded { pending_launch: matches!(&last.entry, JournalEntry::Intent { launch: Some(_), .. }) }
        }
    }
}

/// The fleet after the resumed run: exactly DESIRED live instances, all serving, all of one
/// release, and only their records in the state directory. Cleans it up; returns the
/// release's artifact version.
async fn settled_fleet(case: &Case, context: &str) -> String {
    let provider = case.provider();
    let dir = case.local_dir();
    let balancer = case.balancer().await;
    let live = provider.describe(&Query::service(SERVICE)).await.unwrap();
    let running: Vec<String> = support::processes_from(&dir).into_keys().collect();
    let mut described: Vec<String> = live.iter().map(|i| i.id.to_string()).collect();
    described.sort();
    assert_eq!(running, described, "{context}: what runs is not what describe sees");
    let serving = balancer.serving().await.unwrap();
    let ids: Vec<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
    assert_eq!(live.len(), DESIRED, "{context}: live {ids:?}");
    let versions: std::collections::BTreeSet<String> =
        live.iter().map(|i| i.provenance.as_ref().unwrap().artifact_version.to_string()).collect();
    assert_eq!(versions.len(), 1, "{context}: mixed releases {versions:?}");
    for i in &live {
        assert!(serving.contains(&i.id), "{context}: {} is live but not serving (orphan)", i.id);
    }
    assert_eq!(support::records(&dir).len(), DESIRED, "{context}: records of terminated instances remain");
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    assert!(support::records(&dir).is_empty(), "{context}: terminated instances left records");
    assert!(support::processes_from(&dir).is_empty(), "{context}: processes outlived their terminate");
    balancer.stop().await.unwrap();
    assert!(support::balancers_from(&dir).is_empty(), "{context}: the balancer outlived its stop");
    versions.into_iter().next().unwrap()
}

fn resumed_how(resumed: &Run) -> (Option<(bool, bool)>, Option<Phase>) {
    let resume_event = resumed.events.iter().find_map(|e| match e {
        Event::Resumed { rolling_back, pending_launch, .. } => Some((*rolling_back, *pending_launch)),
        _ => None,
    });
    let finished = resumed.events.iter().find_map(|e| match e {
        Event::Finished { outcome } => Some(outcome.phase.clone()),
        _ => None,
    });
    (resume_event, finished)
}

fn killed(run: &Run) -> bool {
    use std::os::unix::process::ExitStatusExt;
    run.status.signal() == Some(9)
}

async fn kill_at_every_record(strategy: &str) -> usize {
    // One uninterrupted run gives the records of the 1.0.0 -> 2.0.0 deployment, in order.
    let case = Case::new(&format!("count-{strategy}"), SERVICE, DESIRED, strategy);
    assert!(deploy(&case, "1.0.0", &[]).status.success());
    let before = case.journal().len();
    let uninterrupted = deploy(&case, "2.0.0", &[]);
    assert!(uninterrupted.status.success());
    let spawns: usize = uninterrupted
        .events
        .iter()
        .map(|e| match e {
            Event::Launched { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum();
    let records: Vec<JournalRecord> = case.journal().split_off(before);
    settled_fleet(&case, "uninterrupted").await;
    drop(case);
    let shapes: Vec<String> = records.iter().map(shape).collect();
    assert_eq!(shapes.first().map(String::as_str), Some("begin"), "{shapes:?}");
    assert_eq!(shapes.last().map(String::as_str), Some("end"), "{shapes:?}");

    for (kill_at, killed_record) in shapes.iter().enumerate() {
        let context = format!("{strategy}, killed before record {kill_at} ({killed_record})");
        let expect = expected(&records, kill_at);
        let case = Case::new(&format!("{strategy}-{kill_at}"), SERVICE, DESIRED, strategy);
        assert!(deploy(&case, "1.0.0", &[]).status.success(), "{context}: the first deployment failed");
        let before = case.journal().len();

        let run = deploy(&case, "2.0.0", &["--kill-at-record", &kill_at.to_string()]);
        assert!(killed(&run), "{context}: immut was not killed ({}):\n{}", run.status, run.said);
        // Resume sees what the uninterrupted run wrote before this point, and nothing more.
        let durable: Vec<String> = case.journal()[before..].iter().map(shape).collect();
        assert_eq!(durable, shapes[..kill_at], "{context}: the durable records differ from the uninterrupted run");

        let resumed = run_resume(&case, &context);
        let (resume_event, finished) = resumed_how(&resumed);
        let version = settled_fleet(&case, &context).await;
        match expect {
            Expected::Untouched => {
                assert_eq!(resume_event, None, "{context}: resumed a deployment that never began");
                assert_eq!(finished, None, "{context}: ran a deployment that never began");
                assert_eq!(version, "1.0.0", "{context}: the previous release must serve untouched");
            }
            Expected::Succeeded { pending_launch } => {
                assert_eq!(
                    resume_event,
                    Some((false, pending_launch)),
                    "{context}: expected a resume in Deploying with launch in flight = {pending_launch}"
                );
                assert_eq!(finished, Some(Phase::Succeeded), "{context}: the resumed deployment did not succeed");
                assert_eq!(version, "2.0.0", "{context}: the new release must serve");
            }
        }
        println!("{context}: {expect:?}, ended on {version}");
    }
    let spawn_points = kill_inside_the_spawn_loop(strategy, spawns).await;
    println!(
        "{strategy}: {} kill points exercised with real processes ({} journal records, {spawn_points} in the spawn loop)",
        records.len() + spawn_points,
        records.len()
    );
    records.len() + spawn_points
}

/// `immut resume --json`, which must succeed: `context` names the kill point in the failure.
fn run_resume(case: &Case, context: &str) -> Run {
    let resumed = run(case, &["resume", "--json"]);
    assert!(resumed.status.success(), "{context}: the resumed immut exited with {}:\n{}", resumed.status, resumed.said);
    resumed
}

/// Kills `immut deploy` around each of the `spawns` process starts of the 1.0.0 -> 2.0.0
/// deployment: after the record is written ahead, and after the process started.
async fn kill_inside_the_spawn_loop(strategy: &str, spawns: usize) -> usize {
    assert!(spawns >= DESIRED, "{strategy}: the deployment spawned {spawns} processes");
    let mut points = 0;
    for k in 0..spawns {
        for when in ["before", "after"] {
            let context = format!("{strategy}, killed {when} spawn {k}");
            let case = Case::new(&format!("{strategy}-spawn-{k}-{when}"), SERVICE, DESIRED, strategy);
            let dir = case.local_dir();
            assert!(deploy(&case, "1.0.0", &[]).status.success(), "{context}: the first deployment failed");
            let before = case.journal().len();
            let run = deploy(&case, "2.0.0", &["--kill-at-spawn", &format!("{k}:{when}")]);
            assert!(killed(&run), "{context}: immut was not killed ({}):\n{}", run.status, run.said);
            let durable = case.journal().split_off(before);
            assert!(
                matches!(durable.last().map(|r| &r.entry), Some(JournalEntry::Intent { launch: Some(_), .. })),
                "{context}: the kill came inside a launch, after its intent: {:?}",
                durable.iter().map(shape).collect::<Vec<_>>()
            );

            // Before anyone resumes: everything that runs is visible to describe.
            let provider = case.provider();
            let running = support::processes_from(&dir);
            let described = provider.describe(&Query::service(SERVICE)).await.unwrap();
            for id in running.keys() {
                assert!(
                    described.iter().any(|i| i.id.as_str() == id),
                    "{context}: process {id} ({:?}) runs, but describe does not see it: {described:?}",
                    running[id]
                );
            }
            let spawned_by_the_killed = described
                .iter()
                .filter(|i| i.provenance.as_ref().is_some_and(|p| p.artifact_version.to_string() == "2.0.0"))
                .count();
            let visible_v2 = if when == "after" { k + 1 } else { k };
            assert_eq!(
                spawned_by_the_killed, visible_v2,
                "{context}: describe must see exactly the {visible_v2} processes of 2.0.0 that were started"
            );
            assert!(
                described.iter().all(|i| i.state == immut::InstanceState::Running),
                "{context}: a process whose launcher died is completed and running: {described:?}"
            );
            if when == "before" {
                // The record of the process that never started went with that describe.
                assert_eq!(
                    support::records(&dir).len(),
                    described.len(),
                    "{context}: a record without a process stayed"
                );
            }

            let resumed = run_resume(&case, &context);
            let (resume_event, finished) = resumed_how(&resumed);
            assert_eq!(resume_event, Some((false, true)), "{context}: expected a resume with its launch in flight");
            assert_eq!(finished, Some(Phase::Succeeded), "{context}: the resumed deployment did not succeed");
            let version = settled_fleet(&case, &context).await;
            assert_eq!(version, "2.0.0", "{context}: the new release must serve");
            println!("{context}: adopted what it started, ended on {version}");
            points += 1;
        }
    }
    points
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_survives_a_kill_at_every_journal_record_and_spawn() {
    assert!(kill_at_every_record("blue-green").await >= 8 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_survives_a_kill_at_every_journal_record_and_spawn() {
    assert!(kill_at_every_record("rolling").await >= 18 + 4);
}
