//! `immut` on the local provider, as an operator runs it: a deployer killed mid-run leaves
//! instances the next one can describe; deployments under load fail no request and the
//! service outlives every command; a crash-looping release rolls back quoting its log;
//! corrupt state fails loudly, changes nothing, and `immut repair` mends it; and the crash
//! tests' hidden flags stay hidden.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use immut::engine::Event;
use immut::{Phase, Provider, ProviderExt, Query};
use support::{Case, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_deployer_leaves_instances_a_new_deployer_can_describe() {
    let case = Case::new("killed", "killed", 3, "blue-green");
    let mut child = case.command(&["deploy", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let (mut deployment, mut launched) = (None, Vec::new());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        match serde_json::from_str(&line.unwrap()) {
            Ok(Event::Started { deployment: d, .. }) => deployment = Some(d),
            Ok(Event::Launched { ids, .. }) => {
                launched = ids;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(launched.len(), 3, "immut reported its wave");
    child.kill().unwrap(); // SIGKILL: no cleanup, no goodbye
    child.wait().unwrap();

    let provider = case.provider();
    let described = provider.describe(&Query::service("killed")).await.unwrap();
    let mut ids: Vec<_> = described.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    launched.sort();
    assert_eq!(ids, launched, "a new deployer sees exactly the instances the killed one launched");
    for i in &described {
        assert_eq!(i.state, immut::InstanceState::Running);
        assert_eq!(Some(&i.provenance.as_ref().unwrap().deployment), deployment.as_ref());
    }
    let by_token =
        provider.describe(&Query::token(described[0].provenance.as_ref().unwrap().token.clone())).await.unwrap();
    assert_eq!(by_token.len(), 3, "they can be adopted by their launch token");
    provider.terminate_all(&ids).await.unwrap();
    assert!(provider.describe(&Query::service("killed")).await.unwrap().is_empty());
}

/// An independent load generator (8 clients, 4 of them keep-alive) sees no error through a
/// blue/green and a rolling deployment driven by `immut`, and the service answers on the same
/// address after every command has exited. Then a downgrade is refused, naming `--rollback`,
/// and `immut stop-balancer` stops the balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_under_mixed_keep_alive_load_fail_no_request_and_the_service_outlives_the_command() {
    let case = Case::new("load", "web", 3, "blue-green");
    let first = case.run(&["deploy", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let info = immut::local::LocalBalancer::find(&case.local_dir(), "web").unwrap().expect("immut started a balancer");
    assert!(info.running, "{info:?}");
    let (addr, pid) = (info.address, info.pid.unwrap());

    let live = Arc::new(support::Live::default());
    let load = support::Load::start(addr, 8, live.clone());
    let served = |version: &'static str, at_least: u64| {
        let live = live.clone();
        async move {
            support::eventually(&format!("{at_least} requests served by {version}"), Duration::from_secs(20), || {
                let n = live.served_by(version);
                async move { (n >= at_least).then_some(()) }
            })
            .await
        }
    };
    served("1.0.0", 100).await;
    let blue_green = case.run(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
    assert!(blue_green.status.success(), "{}", stderr(&blue_green));
    // immut has exited: the balancer it found answers on, at the same address.
    served("2.0.0", live.served_by("2.0.0") + 100).await;
    let rolling = case.run(&["deploy", "--json", "--set", "artifact.version=3.0.0", "--set", "strategy.kind=rolling"]);
    assert!(rolling.status.success(), "{}", stderr(&rolling));
    served("3.0.0", live.served_by("3.0.0") + 100).await;
    let seen = load.stop().await;
    assert_eq!(seen.failed, 0, "{} of {} requests failed: {:?}", seen.failed, seen.sent, seen.errors);
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        assert!(seen.served_by(version) > 0, "{:?}", seen.by_version);
    }
    let after = immut::local::LocalBalancer::find(&case.local_dir(), "web").unwrap().unwrap();
    assert_eq!((after.address, after.pid), (addr, Some(pid)), "one balancer, on one address, for every command");
    println!("immut under load: {} requests, 0 failed, {:?}", seen.sent, seen.by_version);

    // A downgrade is refused, naming the flag that allows it.
    let down = case.run(&["deploy", "--json"]);
    assert_eq!(down.status.code(), Some(6), "{}", stderr(&down));
    assert!(stderr(&down).contains("immut deploy --rollback"), "{}", stderr(&down));
    assert!(matches!(support::finished(&down).map(|o| o.phase), Some(Phase::Refused { .. })));

    // What runs, then a clean stop of everything.
    let provider = case.provider();
    let live_ids: Vec<_> = provider.describe(&Query::service("web")).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(live_ids.len(), 3);
    let stopped = case.run(&["stop-balancer"]);
    assert!(stopped.status.success() && stdout(&stopped).contains(&format!("pid {pid}")), "{}", stdout(&stopped));
    assert!(support::balancers_from(&case.local_dir()).is_empty(), "the balancer process is gone");
    assert!(!support::listening(addr.port()).await, "nothing answers on {addr} any more");
    let again = case.run(&["stop-balancer"]);
    assert!(again.status.success() && stdout(&again).contains("no balancer of web runs"), "{}", stdout(&again));
    provider.terminate_all(&live_ids).await.unwrap();
    assert!(support::processes_from(&case.local_dir()).is_empty());
}

/// A release whose processes exit as they start: the engine's replacement budget fails its
/// wave after a bounded number of replacements, the deployment rolls back (exit 3) well
/// within the progress deadline, and immut quotes the last lines of a failed instance's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_release_rolls_back_within_the_progress_deadline_quoting_its_log() {
    let case = Case::new("crash-loop", "web", 2, "blue-green");
    let first = case.run(&["deploy", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let deadline = Duration::from_secs(10);
    let started = std::time::Instant::now();
    let looping = case.run(&[
        "deploy",
        "--json",
        "--set",
        "artifact.version=2.0.0",
        "--set",
        "baseline.env.SAMPLE_EXIT_AT_START=\"1\"",
        "--set",
        "rollout.progress_deadline=10s",
    ]);
    let took = started.elapsed();
    let text = format!("{}{}", stdout(&looping), stderr(&looping));
    assert_eq!(looping.status.code(), Some(3), "{text}");
    let outcome = support::finished(&looping).expect("the deployment finished");
    let Phase::RolledBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("replacement budget"), "{reason}");
    assert!(outcome.elapsed < deadline && took < deadline, "rolled back after {:?} (immut {took:?})", outcome.elapsed);
    let launched: usize = support::events(&looping)
        .iter()
        .map(|e| match e {
            Event::Launched { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum();
    assert!((2..=4).contains(&launched), "bounded replacements: {launched} processes launched");
    // immut quotes the failed instance's log: its own words, then its exit status.
    let said = stderr(&looping);
    assert!(said.contains("exited on its own"), "{said}");
    assert!(said.contains("| sample: SAMPLE_EXIT_AT_START=1"), "{said}");
    assert!(said.contains("exit status: 3"), "{said}");
    // 1.0.0 serves, untouched.
    let provider = case.provider();
    let live = provider.describe(&Query::service("web")).await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.provenance.as_ref().unwrap().artifact_version.to_string() == "1.0.0"));
    assert!(case.run(&["destroy", "--yes"]).status.success());
    assert!(support::processes_from(&case.local_dir()).is_empty());
}

/// An unreadable instance record, balancer state or journal record stops every command with
/// the file and the position, and changes nothing; `immut repair` lists what runs, and
/// `immut repair --yes` moves the files aside and rebuilds the instance records from the
/// running processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_fails_loudly_changes_nothing_and_is_repaired() {
    let case = Case::new("corrupt", "web", 2, "blue-green");
    let dir = case.local_dir();
    let v2 = ["deploy", "--json", "--set", "artifact.version=2.0.0"];
    assert!(case.run(&["deploy", "--json"]).status.success());
    let running = support::processes_from(&dir);
    assert_eq!(running.len(), 2);
    let clean = case.run(&["repair"]);
    assert!(clean.status.success() && stdout(&clean).contains("nothing to repair"), "{}", stdout(&clean));

    // An instance record that does not parse.
    let record = support::records(&dir).into_iter().next().unwrap();
    let victim = record.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::write(&record, "{\n  \"id\": \"garbled\",\n  \"pid\": ???\n}\n").unwrap();
    let provider = case.provider();
    let e = provider.describe(&Query::service("web")).await.unwrap_err();
    assert!(e.to_string().contains(&record.display().to_string()) && e.to_string().contains("line 3"), "{e}");
    let refused = case.run(&v2);
    assert_ne!(refused.status.code(), Some(0), "{}", stderr(&refused));
    let named = format!("instances/{victim}.json is unreadable at line 3");
    assert!(stderr(&refused).contains(&named), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("immut repair --yes"), "{}", stderr(&refused));
    assert_eq!(support::processes_from(&dir), running, "nothing was launched or stopped");
    let shown = case.run(&["repair"]);
    assert_eq!(shown.status.code(), Some(1), "{}", stderr(&shown));
    let table = stdout(&shown);
    assert!(table.contains(&victim) && table.contains("`immut repair --yes` rebuilds its record"), "{table}");
    assert!(table.contains("unreadable files") && table.contains("line 3"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&case.run(&["repair", "--json"]))).unwrap();
    assert_eq!(json["repaired"], false, "{json}");

    // A journal whose first record is garbled.
    let records = case.state_dir().join("journal/journal/web");
    let mut objects: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().map(|e| e.path()).collect();
    objects.sort();
    let first = objects.into_iter().next().expect("a journal record");
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, text.replacen('{', "{{garbage", 1)).unwrap();
    let resumed = case.run(&["resume"]);
    let said = stderr(&resumed);
    assert_eq!(resumed.status.code(), Some(7), "{said}");
    assert!(said.contains("corrupt state") && said.contains("journal/web"), "{said}");
    assert_eq!(support::processes_from(&dir), running, "nothing was launched or stopped");

    // A balancer state that does not parse, while the balancer runs.
    let state = dir.join("balancers/web/state.json");
    std::fs::write(&state, b"{ \"service\": \"web\",\n oops").unwrap();
    let e = provider.balancer("web").executable(support::BIN).build().await.unwrap_err().to_string();
    assert!(e.contains(&state.display().to_string()) && e.contains("line 2"), "{e}");
    let shown = stdout(&case.run(&["repair"]));
    assert!(shown.contains("the journal of web cannot be read"), "{shown}");

    // The repair: files aside, records rebuilt, the running balancer writes its state again.
    let repaired = case.run(&["repair", "--yes"]);
    let report = stdout(&repaired);
    assert!(repaired.status.success(), "{report}\n{}", stderr(&repaired));
    assert!(report.contains(&format!("rebuilt the record of {victim}")), "{report}");
    assert!(report.contains("the running balancer of web wrote its state again"), "{report}");
    assert_eq!(std::fs::read_dir(dir.join("quarantine")).unwrap().count(), 2, "{report}");
    assert_eq!(std::fs::read_dir(case.state_dir().join("quarantine")).unwrap().count(), 1, "{report}");
    let live = provider.describe(&Query::service("web")).await.unwrap();
    assert_eq!(live.len(), 2, "both instances are managed again");
    assert!(immut::local::LocalBalancer::find(&dir, "web").unwrap().unwrap().running);
    let next = case.run(&v2);
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(case.run(&["destroy", "--yes"]).status.success());
    assert!(support::processes_from(&dir).is_empty() && support::balancers_from(&dir).is_empty());
}

/// The crash tests' flags are not in the help, and bad values are refused before anything
/// runs.
#[test]
fn the_fault_flags_are_hidden_and_checked() {
    let case = Case::new("flags", "web", 2, "blue-green");
    for help in [&["--help"][..], &["deploy", "--help"], &["resume", "--help"]] {
        let out = case.run(help);
        assert!(out.status.success());
        assert!(!stdout(&out).contains("kill-at"), "{help:?} shows a fault flag: {}", stdout(&out));
    }
    for (bad, says) in [
        (&["deploy", "--kill-at-spawn", "1:sometime"][..], "use N:before or N:after"),
        (&["deploy", "--kill-at-spawn", "x"], "use N:before or N:after"),
        (&["resume", "--kill-at-record", "first"], "use N or KIND:N"),
        (&["resume", "--kill-at-record", ":3"], "use N or KIND:N"),
    ] {
        let out = case.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?} is refused: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{bad:?}: {}", stderr(&out));
    }
    assert!(!case.local_dir().exists(), "nothing ran");
    assert!(case.run(&["init", "--provider", "sim", "-f", "sim.toml"]).status.success());
    let out = case.run(&["deploy", "-f", "sim.toml", "--kill-at-spawn", "0:before"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--kill-at-spawn needs the local provider"), "{}", stderr(&out));
}

/// `health.verify`: every instance must say it runs its release's executable. A release whose
/// artifact is a launcher script that starts another executable (here: this binary) never
/// turns healthy, whatever its labels and environment say, and rolls back with the old
/// release serving; the reason names both digests.
#[test]
fn health_verify_never_counts_another_executable_healthy() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new("verify", "vf", 2, "blue-green");
    let verify = ["--set", "health.verify=/version", "--set", "rollout.progress_deadline=6s"];
    let first = case.run(&[&["deploy", "--json"][..], &verify].concat());
    assert!(first.status.success(), "{}\n{}", stdout(&first), stderr(&first));
    let v1 = case.provider();

    let script = case.dir.join("app-2.0.0.sh");
    let flag = immut::local::sample::SAMPLE_FLAG;
    std::fs::write(&script, format!("#!/bin/sh\nexec {} {flag} \"$@\"\n", support::BIN)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = format!("artifact.image={}", script.display());
    let second =
        case.run(&[&["deploy", "--json", "--set", "artifact.version=2.0.0", "--set", &image][..], &verify].concat());
    let out = stdout(&second);
    assert!(!second.status.success(), "another executable must not pass: {out}");
    let phase = support::finished(&second).map(|o| o.phase);
    let Some(Phase::RolledBack { reason }) = phase else { panic!("a rollback, not {phase:?}: {out}") };
    println!("2.0.0 behind a launcher script: rolled back: {reason}");
    assert!(reason.contains("it runs another build than its labels say"), "{reason}");
    let digest = |path: &std::path::Path| {
        immut::local::artifact("a", immut::semver::Version::new(1, 0, 0), path).unwrap().digest.unwrap()
    };
    let (claimed, runs) = (digest(&script), digest(std::path::Path::new(support::BIN)));
    assert!(reason.contains(&claimed) && reason.contains(&runs), "both digests named: {reason}");

    // Ground truth: the old release's processes serve, and nothing of 2.0.0 is left.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let live = runtime.block_on(v1.describe(&Query::service("vf"))).unwrap();
    assert!(live.iter().all(|i| i.labels.get("immut-artifact-version").is_none_or(|v| v == "1.0.0")), "{live:?}");
    let running = support::processes_from(&case.local_dir());
    assert_eq!(running.len(), 2, "the two instances of 1.0.0 run on: {running:?}");
}
