//! `immut` and rollback readiness on the local provider: once the serving release's
//! executable is gone, `plan` says there is no way back, `deploy` is refused (exit code 6)
//! before it launches anything, and `--set rollout.accept_no_way_back=true` lets it through,
//! recorded in the ledger.

mod support;

use std::os::unix::fs::PermissionsExt;

use immut::Phase;
use support::{BIN, Case, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_previous_executable_is_reported_by_plan_and_refused_until_accepted() {
    let case = Case::new("ready", "rd", 2, "blue-green");
    // 1.0.0 runs from a script the test can delete; it starts this binary's sample service.
    let script = case.dir.join("app-1.0.0.sh");
    let flag = immut::local::sample::SAMPLE_FLAG;
    std::fs::write(&script, format!("#!/bin/sh\nexec {BIN} {flag} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = format!("artifact.image={}", script.display());
    let first = case.run(&["deploy", "--json", "--set", &image]);
    assert!(first.status.success(), "{}", stderr(&first));

    let v2 = ["--set", "artifact.version=2.0.0"];
    let plan = case.run(&[&["plan"][..], &v2].concat());
    // (With this spec's short deadlines the plan's own outcome under cloud latencies is beside the point.)
    assert!(
        stdout(&plan).contains("way back: r") && stdout(&plan).contains("can be launched again"),
        "{}",
        stdout(&plan)
    );

    std::fs::remove_file(&script).unwrap();
    let plan = case.run(&[&["plan"][..], &v2].concat());
    assert_eq!(plan.status.code(), Some(6), "{}\n{}", stdout(&plan), stderr(&plan));
    assert!(
        stdout(&plan).contains("way back: NONE") && stdout(&plan).contains("no executable at"),
        "{}",
        stdout(&plan)
    );
    let json = case.run(&[&["plan", "--json"][..], &v2].concat());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(doc["readiness"]["readiness"]["blocking"].as_str().is_some_and(|b| b.contains("app-1.0.0.sh")), "{doc}");

    let refused = case.run(&[&["deploy", "--json"][..], &v2].concat());
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
    match support::finished(&refused).map(|o| o.phase) {
        Some(Phase::Refused { reason }) => assert!(reason.starts_with("NoWayBack"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let launched = support::events(&refused).iter().any(|e| matches!(e, immut::Event::Launched { .. }));
    assert!(!launched, "nothing was launched");

    let accepted = case.run(&[&["deploy", "--json", "--set", "rollout.accept_no_way_back=true"][..], &v2].concat());
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let ledger = immut::ledger::Ledger::open(case.state_dir().join("ledger.jsonl")).unwrap();
    let last = ledger.entries().unwrap().pop().unwrap();
    assert!(last.accepted_no_way_back && last.outcome == Phase::Succeeded, "{last:?}");
}
