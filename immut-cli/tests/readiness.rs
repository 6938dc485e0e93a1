//! `immut` and rollback readiness on the local provider: once the serving release's
//! executable is gone, `plan` says there is no way back, `deploy` is refused (exit code 6)
//! before it launches anything, and `--set rollout.accept_no_way_back=true` lets it through,
//! recorded in the ledger. On the fake Compute API (with the gcp feature), a deprecated image
//! of the serving release is named on plan's "way back: warning" line.

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

/// `immut plan` against the fake Compute API: the serving release's image, deprecated through
/// the API after it was deployed, shows as a "way back: warning" line, with the room the
/// region's quotas leave.
#[cfg(feature = "gcp")]
mod gcp {
    use std::time::Duration;

    use immut::gcp::fake::FakeGce;
    use serde_json::{Value, json};

    use super::support::{Case, stderr, stdout};

    const PROJECT: &str = "immut-cli";

    const SPEC: &str = r#"service = "web"
desired = 2
state = "state"

[provider]
kind = "gcp"

[provider.gcp]
project = "immut-cli"
zones = ["us-central1-a"]
endpoint = "{url}"
anonymous = true
backend_service = "{backend}"
blue_group = "{blue}"
green_group = "{green}"

[artifact]
name = "web"
version = "1.0.0"
image = "projects/immut-cli/global/images/web-v1"

[baseline]
name = "web-base"
version = "1.0.0"
machine_type = "e2-small"

[strategy]
kind = "blue_green"

[rollout]
min_ready = "100ms"
poll_interval = "100ms"
progress_deadline = "60s"
"#;

    /// Runs `immut` off the runtime's threads, so the fake in this process keeps answering.
    async fn run(case: &Case, args: &[&str]) -> std::process::Output {
        let mut command = case.command(args);
        tokio::task::spawn_blocking(move || command.output().expect("immut runs")).await.unwrap()
    }

    /// `images.deprecate` through the public API, waited on until its operation is `DONE`.
    async fn deprecate(fake: &FakeGce, image: &str, state: &str) {
        let http = reqwest::Client::new();
        let base = format!("{}/compute/v1/projects/{PROJECT}/global", fake.url());
        let body = json!({ "state": state }).to_string();
        let sent = http.post(format!("{base}/images/{image}/deprecate")).body(body).send().await.unwrap();
        let op: Value = serde_json::from_str(&sent.text().await.unwrap()).unwrap();
        let name = op["name"].as_str().unwrap_or_else(|| panic!("{op}")).to_owned();
        for _ in 0..200 {
            let got = http.get(format!("{base}/operations/{name}")).send().await.unwrap();
            let now: Value = serde_json::from_str(&got.text().await.unwrap()).unwrap();
            if now["status"] == "DONE" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the deprecate operation {name} never finished");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plan_names_a_deprecated_previous_image_on_the_way_back_line() {
        let fake = FakeGce::start().await.unwrap();
        for image in ["web-v1", "web-v2"] {
            fake.add_image(PROJECT, image, None);
        }
        let provider = immut::gcp::GcpBuilder::new()
            .project(PROJECT)
            .zone("us-central1-a")
            .endpoint(fake.url())
            .anonymous()
            .build()
            .await
            .unwrap();
        let stack = immut::gcp::stack::create(&provider, "web", Duration::from_millis(100)).await.unwrap();
        let case = Case::new("gcp-ready", "web", 2, "blue-green");
        let spec = SPEC
            .replace("{url}", fake.url())
            .replace("{backend}", &stack.backend_service)
            .replace("{blue}", &stack.blue_group)
            .replace("{green}", &stack.green_group);
        std::fs::write(case.dir.join("immut.toml"), spec).unwrap();
        let first = run(&case, &["deploy", "--json"]).await;
        assert!(first.status.success(), "{}\n{}", stdout(&first), stderr(&first));

        let v2 = [
            "plan",
            "--set",
            "artifact.version=2.0.0",
            "--set",
            "artifact.image=projects/immut-cli/global/images/web-v2",
        ];
        // (The plan's own outcome under the default cloud latencies is beside the point here.)
        let plan = run(&case, &v2).await;
        assert!(stdout(&plan).contains("can be launched again"), "{}\n{}", stdout(&plan), stderr(&plan));
        assert!(!stdout(&plan).contains("way back: warning"), "{}", stdout(&plan));

        deprecate(&fake, "web-v1", "DEPRECATED").await;
        let plan = run(&case, &v2).await;
        assert_ne!(plan.status.code(), Some(6), "a deprecated image still launches: {}", stdout(&plan));
        let out = stdout(&plan);
        let warning = out.lines().find(|l| l.starts_with("way back: warning:")).unwrap_or_else(|| panic!("{out}"));
        assert!(warning.contains("projects/immut-cli/global/images/web-v1") && warning.contains("DEPRECATED"), "{out}");
        assert!(out.contains("can be launched again") && out.contains("way back: room for"), "{out}");

        deprecate(&fake, "web-v1", "OBSOLETE").await;
        let plan = run(&case, &v2).await;
        assert_eq!(plan.status.code(), Some(6), "{}\n{}", stdout(&plan), stderr(&plan));
        assert!(stdout(&plan).contains("way back: NONE") && stdout(&plan).contains("OBSOLETE"), "{}", stdout(&plan));
    }
}
