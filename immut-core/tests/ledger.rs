//! The hash-chained ledger: tamper detection, rollback to the previous release, and the
//! semver policy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{latencies, release};
use immut_core::engine::{Event, Phase};
use immut_core::ledger::{Ledger, Tamper};
use immut_core::policy::ChangePolicy;
use immut_core::sim::SimProvider;
use immut_core::{BlueGreen, Deployer, Provider, Query};

fn ledger(tag: &str) -> Arc<Ledger> {
    let path = std::env::temp_dir().join(format!("immut-ledger-{}-{tag}/ledger.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Arc::new(Ledger::open(path).unwrap())
}

fn deployer(sim: &SimProvider, ledger: &Arc<Ledger>) -> Deployer {
    sim.deployer().strategy(BlueGreen::new()).desired(2).ledger(ledger.clone()).build().unwrap()
}

/// Deploys 1.0.0, 1.1.0 and 1.2.0, one after the other.
async fn three_releases(tag: &str) -> (SimProvider, Arc<Ledger>) {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let ledger = ledger(tag);
    let d = deployer(&sim, &ledger);
    for minor in 0..3 {
        assert!(d.deploy(release((1, minor, 0))).run().await.succeeded());
    }
    (sim, ledger)
}

fn rewrite(ledger: &Ledger, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(ledger.path()).unwrap().lines().map(str::to_owned).collect();
    edit(&mut lines);
    std::fs::write(ledger.path(), lines.join("\n") + "\n").unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_intact_chain_verifies() {
    let (_, ledger) = three_releases("intact").await;
    let v = ledger.verify().unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    assert_eq!(v.entries, 3);
    let entries = ledger.entries().unwrap();
    assert_eq!(entries[2].release.artifact().version.to_string(), "1.2.0");
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(v.head, entries[2].hash);
    assert!(entries.iter().all(|e| e.outcome == immut_core::Phase::Succeeded && e.strategy == "blue_green"));
}

#[tokio::test(start_paused = true)]
async fn an_edited_entry_is_detected() {
    let (_, ledger) = three_releases("edited").await;
    rewrite(&ledger, |lines| lines[1] = lines[1].replace("\"blue_green\"", "\"rolling\""));
    assert_eq!(ledger.verify().unwrap().problems, vec![Tamper::Edited { seq: 1 }]);
}

#[tokio::test(start_paused = true)]
async fn an_edited_entry_with_a_recomputed_hash_still_breaks_the_chain() {
    let (_, ledger) = three_releases("rehashed").await;
    // Forge entry 1 completely: new contents, and a hash that matches them.
    let mut entry: immut_core::ledger::LedgerEntry =
        serde_json::from_str(std::fs::read_to_string(ledger.path()).unwrap().lines().nth(1).unwrap()).unwrap();
    entry.strategy = "rolling".into();
    // Recompute the hash the way the ledger does.
    entry.hash = String::new();
    let canonical = serde_json::to_vec(&entry).unwrap();
    use sha2::Digest;
    entry.hash = sha2::Sha256::digest(&canonical).iter().map(|b| format!("{b:02x}")).collect();
    rewrite(&ledger, |lines| lines[1] = serde_json::to_string(&entry).unwrap());
    assert_eq!(ledger.verify().unwrap().problems, vec![Tamper::Edited { seq: 1 }]);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_entry_is_detected() {
    let (_, ledger) = three_releases("deleted").await;
    rewrite(&ledger, |lines| {
        lines.remove(1);
    });
    assert_eq!(ledger.verify().unwrap().problems, vec![Tamper::Deleted { after: Some(0) }]);
}

#[tokio::test(start_paused = true)]
async fn reordered_entries_are_detected() {
    let (_, ledger) = three_releases("reordered").await;
    rewrite(&ledger, |lines| lines.swap(1, 2));
    let problems = ledger.verify().unwrap().problems;
    assert!(problems.contains(&Tamper::Reordered { seq: 1 }), "{problems:?}");
}

#[tokio::test(start_paused = true)]
async fn a_truncated_tail_is_caught_against_a_kept_head() {
    let (_, ledger) = three_releases("truncated").await;
    let head = ledger.verify().unwrap().head;
    rewrite(&ledger, |lines| {
        lines.pop();
    });
    assert!(ledger.verify().unwrap().is_intact(), "a shorter chain is valid on its own");
    assert_eq!(ledger.verify_head(&head).unwrap().problems, vec![Tamper::Deleted { after: Some(1) }]);
}

#[tokio::test(start_paused = true)]
async fn rollback_to_previous_redeploys_the_last_good_release() {
    let (sim, ledger) = three_releases("rollback").await;
    let d = deployer(&sim, &ledger);
    let outcome = d.rollback_to_previous("web").unwrap().run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let live = sim.describe(&Query::service("web")).await.unwrap();
    assert!(live.iter().all(|i| i.release() == Some(release((1, 1, 0)).id())), "{live:?}");
    assert_eq!(ledger.current("web").unwrap().unwrap().release.artifact().version.to_string(), "1.1.0");
    assert!(ledger.verify().unwrap().is_intact());
}

#[tokio::test(start_paused = true)]
async fn a_downgrade_is_refused_unless_it_is_an_explicit_rollback() {
    let (sim, ledger) = three_releases("downgrade").await;
    let launches = sim.calls().launch;
    let d = deployer(&sim, &ledger);
    let outcome = d.deploy(release((1, 0, 0))).run().await;
    match &outcome.phase {
        Phase::Refused { reason } => {
            assert!(reason.contains("artifact.version") && reason.contains("explicit rollback"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.calls().launch, launches, "nothing launched");
    assert!(d.deploy(release((1, 0, 0))).as_rollback().run().await.succeeded());
}

#[tokio::test(start_paused = true)]
async fn the_strategy_follows_the_version_change() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let d = sim
        .deployer()
        .strategy_by_change(ChangePolicy { major: Arc::new(BlueGreen::new()), ..ChangePolicy::default() })
        .desired(4)
        .min_ready(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut chosen = Vec::new();
    for version in [(1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0)] {
        let outcome = d
            .deploy(release(version))
            .run_with(|e| {
                if let Event::Started { strategy, .. } = e {
                    chosen.push(strategy.clone())
                }
            })
            .await;
        assert!(outcome.succeeded(), "{}", outcome.summary());
    }
    assert_eq!(chosen, vec!["blue_green", "rolling", "canary", "blue_green"]);
}
