//! Kill the deploying process with SIGKILL at every journal record of a blue/green and a
//! rolling deployment, then resume in a new process. Each time the deployment must end on the
//! new release or cleanly on the old one, with no duplicate instance and no orphan.

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus};

use immut_core::{InstanceId, Provider, ProviderExt, Query, Traffic};
use immut_local::LocalProvider;

const DESIRED: usize = 2;

fn deploy(state_dir: &Path, strategy: &str, extra: &[&str]) -> ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_immut-local-deploy"))
        .args(["--state-dir", state_dir.to_str().unwrap(), "--service", "crash", "--strategy", strategy])
        .args(["--desired", &DESIRED.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
}

fn journal_lines(state_dir: &Path) -> usize {
    std::fs::read_to_string(state_dir.join("journal").join("crash.journal.jsonl")).map_or(0, |t| t.lines().count())
}

/// The fleet after the resumed run: exactly DESIRED live instances, all serving, all of one
/// release; returns that release's artifact version.
async fn settled_fleet(state_dir: &Path, context: &str) -> String {
    let provider = LocalProvider::builder().state_dir(state_dir).build().unwrap();
    let balancer = provider.balancer().build().await.unwrap();
    let live = provider.describe(&Query::service("crash")).await.unwrap();
    let serving = balancer.serving().await.unwrap();
    assert_eq!(live.len(), DESIRED, "{context}: live {:?}", live.iter().map(|i| &i.id).collect::<Vec<_>>());
    let versions: std::collections::BTreeSet<String> =
        live.iter().map(|i| i.provenance.as_ref().unwrap().artifact_version.to_string()).collect();
    assert_eq!(versions.len(), 1, "{context}: mixed releases {versions:?}");
    for i in &live {
        assert!(serving.contains(&i.id), "{context}: {} is live but not serving (orphan)", i.id);
    }
    // Clean up for the next kill point.
    let ids: Vec<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    versions.into_iter().next().unwrap()
}

async fn kill_at_every_record(strategy: &str) -> usize {
    let artifact = ["--artifact", support::sample_path()];
    // One uninterrupted run counts the records of the v1 -> v2 deployment.
    let dir = support::state_dir(&format!("count-{strategy}"));
    assert!(deploy(&dir, strategy, &[&artifact[..], &["--version", "1.0.0"]].concat()).success());
    let before = journal_lines(&dir);
    assert!(
        deploy(&dir, strategy, &[&artifact[..], &["--version", "2.0.0", "--previous-version", "1.0.0"]].concat())
            .success()
    );
    let records = journal_lines(&dir) - before;
    settled_fleet(&dir, "uninterrupted").await;

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for kill_at in 0..records {
        let dir = support::state_dir(&format!("{strategy}-{kill_at}"));
        assert!(deploy(&dir, strategy, &[&artifact[..], &["--version", "1.0.0"]].concat()).success());
        let kill = kill_at.to_string();
        let killed = deploy(
            &dir,
            strategy,
            &[&artifact[..], &["--version", "2.0.0", "--previous-version", "1.0.0", "--kill-at-record", &kill]]
                .concat(),
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(killed.signal(), Some(9), "{strategy} kill point {kill_at}: the deployer was not killed ({killed})");
        let resumed = deploy(&dir, strategy, &["--resume"]);
        assert!(resumed.code().is_some(), "{strategy} kill point {kill_at}: the resumed deployer died ({resumed})");
        let version = settled_fleet(&dir, &format!("{strategy} kill point {kill_at}")).await;
        *outcomes.entry(version).or_default() += 1;
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{strategy}: {records} kill points exercised with real processes; ended on {outcomes:?}");
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_survives_a_kill_at_every_journal_record() {
    assert!(kill_at_every_record("blue-green").await >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_survives_a_kill_at_every_journal_record() {
    assert!(kill_at_every_record("rolling").await >= 18);
}
