//! The keyed ledger on the local state store: tamper detection (edit, re-chain without the key,
//! deletion, reordering, a cut tail), concurrent writers, import of a JSON-lines ledger,
//! rollback to the previous release, and the semver policy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{latencies, release};
use immut_core::engine::{Event, Phase};
use std::path::PathBuf;

use immut_core::ledger::{Ledger, LedgerEntry, LedgerKey, Tamper};
use immut_core::policy::ChangePolicy;
use immut_core::sim::SimProvider;
use immut_core::state::StateStore;
use immut_core::{BlueGreen, Deployer, Provider, Query};

fn key() -> LedgerKey {
    LedgerKey::new("ledger-test-key-0123456789abcdef").unwrap()
}

fn dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-ledger-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ledger(tag: &str) -> Arc<Ledger> {
    Arc::new(Ledger::on_store(StateStore::local(dir(tag)).unwrap(), key()))
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

/// The file of entry `seq` on the local store.
fn entry_file(ledger: &Ledger, seq: u64) -> PathBuf {
    PathBuf::from(ledger.store().location()).join(format!("ledger/entries/{seq:020}.json"))
}

fn head_file(ledger: &Ledger, seq: u64) -> PathBuf {
    PathBuf::from(ledger.store().location()).join(format!("ledger/heads/{seq:020}.json"))
}

fn read_object(ledger: &Ledger, seq: u64) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(entry_file(ledger, seq)).unwrap()).unwrap()
}

fn write_object(ledger: &Ledger, seq: u64, object: &serde_json::Value) {
    std::fs::write(entry_file(ledger, seq), object.to_string()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_intact_chain_verifies() {
    let (_, ledger) = three_releases("intact").await;
    let v = ledger.verify().unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    assert_eq!((v.entries, v.first_broken), (3, None));
    let entries = ledger.entries().unwrap();
    assert_eq!(entries[2].release.artifact().version.to_string(), "1.2.0");
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(v.head, entries[2].hash);
    assert!(entries.iter().all(|e| e.outcome == immut_core::Phase::Succeeded && e.strategy == "blue_green"));
    assert!((0..3).all(|n| entry_file(&ledger, n).is_file() && head_file(&ledger, n).is_file()));
    // Another key sees nothing but forgeries.
    let other = Ledger::on_store(ledger.store().clone(), LedgerKey::new("another-key-0123456789abcdef").unwrap());
    let v = other.verify().unwrap();
    assert_eq!(v.first_broken, Some(0));
    assert!(
        v.problems.contains(&Tamper::Edited { seq: 0 }) && v.problems.contains(&Tamper::ForgedHead { seq: 2 }),
        "{:?}",
        v.problems
    );
}

#[tokio::test(start_paused = true)]
async fn an_edited_entry_is_detected() {
    let (_, ledger) = three_releases("edited").await;
    let mut object = read_object(&ledger, 1);
    object["entry"]["strategy"] = "rolling".into();
    write_object(&ledger, 1, &object);
    let v = ledger.verify().unwrap();
    assert_eq!(v.problems, vec![Tamper::Edited { seq: 1 }]);
    assert_eq!(v.first_broken, Some(1));
}

#[tokio::test(start_paused = true)]
async fn an_edit_rechained_without_the_key_still_breaks_the_chain() {
    let (_, ledger) = three_releases("rehashed").await;
    // Forge entry 1 completely and re-chain entry 2 onto it: hashes that match the contents,
    // computed without the ledger key (SHA-256, as an unkeyed chain would have it).
    let sha = |entry: &serde_json::Value| -> String {
        let mut unhashed: LedgerEntry = serde_json::from_value(entry.clone()).unwrap();
        unhashed.hash = String::new();
        use sha2::Digest;
        sha2::Sha256::digest(serde_json::to_vec(&unhashed).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut one = read_object(&ledger, 1);
    one["entry"]["strategy"] = "rolling".into();
    one["entry"]["hash"] = sha(&one["entry"]).into();
    write_object(&ledger, 1, &one);
    let mut two = read_object(&ledger, 2);
    two["entry"]["prev_hash"] = one["entry"]["hash"].clone();
    two["entry"]["hash"] = sha(&two["entry"]).into();
    write_object(&ledger, 2, &two);
    let v = ledger.verify().unwrap();
    assert_eq!(v.first_broken, Some(1), "{:?}", v.problems);
    assert!(
        v.problems.contains(&Tamper::Edited { seq: 1 }) && v.problems.contains(&Tamper::Edited { seq: 2 }),
        "{:?}",
        v.problems
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_entry_is_detected() {
    let (_, ledger) = three_releases("deleted").await;
    std::fs::remove_file(entry_file(&ledger, 1)).unwrap();
    let v = ledger.verify().unwrap();
    assert_eq!(v.problems, vec![Tamper::Deleted { after: Some(0) }]);
    assert_eq!(v.first_broken, Some(1));
}

#[tokio::test(start_paused = true)]
async fn reordered_entries_are_detected() {
    let (_, ledger) = three_releases("reordered").await;
    let (one, two) = (read_object(&ledger, 1), read_object(&ledger, 2));
    write_object(&ledger, 1, &two);
    write_object(&ledger, 2, &one);
    let v = ledger.verify().unwrap();
    assert_eq!(v.problems, vec![Tamper::Reordered { seq: 1 }, Tamper::Reordered { seq: 2 }]);
    assert_eq!(v.first_broken, Some(1));
}

#[tokio::test(start_paused = true)]
async fn an_object_that_is_not_an_entry_is_named() {
    let (_, ledger) = three_releases("unreadable").await;
    std::fs::write(entry_file(&ledger, 1), b"{\"entry\": 7").unwrap();
    assert_eq!(ledger.verify().unwrap().problems, vec![Tamper::Unreadable { seq: 1 }]);
    let e = ledger.entries().unwrap_err();
    assert!(e.message().contains("ledger/entries/00000000000000000001.json"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_cut_tail_is_caught_by_the_signed_head() {
    let (_, ledger) = three_releases("truncated").await;
    let kept = ledger.verify().unwrap().head;
    std::fs::remove_file(entry_file(&ledger, 2)).unwrap();
    let v = ledger.verify().unwrap();
    assert_eq!(v.problems, vec![Tamper::Truncated { after: Some(1), head: 2 }], "no head kept elsewhere is needed");
    assert_eq!(v.first_broken, Some(2));
    // Removing the heads too rolls the whole store back to an earlier state: only a head kept
    // elsewhere shows that.
    std::fs::remove_file(head_file(&ledger, 2)).unwrap();
    assert!(ledger.verify().unwrap().is_intact());
    assert_eq!(ledger.verify_head(&kept).unwrap().problems, vec![Tamper::Deleted { after: Some(1) }]);
    // A forged head (signed without the key) is named.
    std::fs::write(
        head_file(&ledger, 5),
        serde_json::json!({"writer":"x","nonce":"y","seq":5,"hash":"00","at_ms":1,"signature":"00"}).to_string(),
    )
    .unwrap();
    assert_eq!(ledger.verify().unwrap().problems, vec![Tamper::ForgedHead { seq: 5 }]);
}

#[test]
fn concurrent_writers_get_unique_gapless_numbers_and_one_chain() {
    let dir = dir("concurrent");
    let outcome = |i: usize| immut_core::Outcome {
        deployment: immut_core::DeploymentId::new(format!("d{i}")),
        service: "web".into(),
        release: release((1, 0, 0)).id().clone(),
        previous: None,
        phase: immut_core::Phase::Succeeded,
        elapsed: Duration::ZERO,
        steps: 1,
        waves: 1,
        serving: Vec::new(),
        calls: Default::default(),
    };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                // Each thread its own handle, as each process would have.
                let ledger = Ledger::on_store(StateStore::local(&dir).unwrap(), key());
                for i in 0..25 {
                    ledger.record(&outcome(t * 100 + i), &release((1, 0, 0)), "rolling", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ledger = Ledger::on_store(StateStore::local(&dir).unwrap(), key());
    let v = ledger.verify().unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 100);
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64), "gapless and unique");
    let deployments: std::collections::BTreeSet<_> = entries.iter().map(|e| e.deployment.clone()).collect();
    assert_eq!(deployments.len(), 100, "every record landed exactly once");
}

#[tokio::test(start_paused = true)]
async fn a_file_ledger_of_an_earlier_version_is_imported_and_verified() {
    let (_, source) = three_releases("import-source").await;
    // The JSON-lines ledger of earlier versions: the same entries, chained with unkeyed SHA-256.
    let mut lines = Vec::new();
    let mut prev = immut_core::ledger::GENESIS.to_owned();
    for mut e in source.entries().unwrap() {
        e.prev_hash = prev.clone();
        e.hash = String::new();
        use sha2::Digest;
        e.hash = sha2::Sha256::digest(serde_json::to_vec(&e).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        prev = e.hash.clone();
        lines.push(serde_json::to_string(&e).unwrap());
    }
    let file = dir("import-file").with_extension("jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let target = ledger("import-target");
    let import = target.import_file(&file).unwrap();
    assert_eq!((import.entries, import.file_head.as_str()), (3, prev.as_str()));
    assert!(target.verify().unwrap().is_intact());
    let entries = target.entries().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2].imported.as_ref().unwrap().hash, prev);
    assert_eq!(target.current("web").unwrap().unwrap().release.artifact().version.to_string(), "1.2.0");
    assert!(target.import_file(&file).unwrap_err().message().contains("not empty"));

    // Ledger::open on such a file imports it once, beside it.
    let opened = Ledger::open(&file).unwrap();
    assert_eq!(opened.entries().unwrap().len(), 3);
    assert!(opened.verify().unwrap().is_intact());
    assert_eq!(Ledger::open(&file).unwrap().entries().unwrap().len(), 3, "imported once");

    // A broken file is refused, naming its line, and nothing is imported.
    let edited = lines[1].replace("\"blue_green\"", "\"rolling\"");
    let broken = dir("import-broken").with_extension("jsonl");
    std::fs::write(&broken, [lines[0].clone(), edited, lines[2].clone()].join("\n")).unwrap();
    let empty = ledger("import-refused");
    let e = empty.import_file(&broken).unwrap_err();
    assert!(e.message().contains("line 2") && e.message().contains("nothing was imported"), "{e}");
    assert!(empty.entries().unwrap().is_empty());
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

#[tokio::test(start_paused = true)]
async fn a_ledger_opened_by_path_keeps_its_key_beside_it() {
    let path = dir("by-path").join("ledger.jsonl");
    let first = Arc::new(Ledger::open(&path).unwrap());
    let sim = latencies(SimProvider::builder()).build().unwrap();
    assert!(deployer(&sim, &first).deploy(release((1, 0, 0))).run().await.succeeded());
    assert!(path.is_dir(), "the ledger is a local state store at the path");
    // Opened again (another process), with the same key from the key file: intact.
    let again = Ledger::open(&path).unwrap();
    assert_eq!(again.entries().unwrap().len(), 1);
    assert!(again.verify().unwrap().is_intact());
    let key_file = path.with_extension("jsonl.key");
    assert!(key_file.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
