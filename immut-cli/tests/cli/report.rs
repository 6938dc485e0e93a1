//! `immut plan --svg` and `immut report`: pictures of a plan and of recorded deployments, drawn
//! from the state alone (a copy of it on "another machine" included).

use super::{Dir, release_of};

fn svg(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    text
}

/// Elements that carry an id and the class `class`.
fn count(text: &str, class: &str) -> usize {
    let doc = roxmltree::Document::parse(text).unwrap();
    doc.descendants()
        .filter(|n| n.attribute("id").is_some())
        .filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|w| w == class)))
        .count()
}

#[test]
fn plan_draws_a_picture_and_report_draws_a_rolled_back_deployment() {
    let d = Dir::sim("report-rollback");
    d.ok(&["deploy", "--json"]);
    let v1 = release_of(&d.status());
    let planned = d.ok(&["plan", "--set", "artifact.version=2.0.0", "--svg", "plan.svg"]);
    assert!(planned.stdout.contains("wrote plan.svg (the plan as a picture"), "{}", planned.stdout);
    let picture = svg(&d.path.join("plan.svg"));
    assert_eq!(count(&picture, "wave-band"), 4, "four waves of one (surge 25% of 4)");
    assert_eq!(count(&picture, "floor") + count(&picture, "ceiling"), 2);
    // --json keeps stdout a JSON document.
    let json = d.ok(&["plan", "--json", "--set", "artifact.version=2.0.0", "--svg", "plan2.svg"]);
    assert!(json.json()["waves"].is_array());
    d.expect(super::NEVER_HEALTHY_DEPLOY, 3);
    assert_eq!(release_of(&d.status()), v1);
    let r = d.ok(&["report", "--out", "rolled-back.html"]);
    assert!(r.stdout.contains("wrote rolled-back.html (deployment d"), "{}", r.stdout);
    assert!(r.stdout.contains("rolled back"), "{}", r.stdout);
    let html = std::fs::read_to_string(d.path.join("rolled-back.html")).unwrap();
    let start = html.find("<svg").unwrap();
    let end = html.rfind("</svg>").unwrap() + 6;
    assert_eq!(count(&html[start..end], "rollback"), 1, "the rollback marker");
    assert!(html.contains("ledger entry"), "the ledger's entry is in the summary");
    let r = d.ok(&["report", "--svg", "rolled-back.svg"]);
    assert!(r.stdout.contains("wrote rolled-back.svg"), "{}", r.stdout);
    assert_eq!(count(&svg(&d.path.join("rolled-back.svg")), "rollback"), 1);
    // The first deployment, by id, from the history.
    let history = d.ok(&["history", "--json"]).json();
    let first = history[0]["deployment"].as_str().unwrap().to_owned();
    let r = d.ok(&["report", &first]);
    let default = d.path.join(format!("immut-report-web-{first}.html"));
    assert!(r.stdout.contains(&format!("wrote immut-report-web-{first}.html")), "{}", r.stdout);
    assert!(std::fs::read_to_string(default).unwrap().contains("succeeded"));
    let r = d.expect(&["report", "d-no-such"], 2);
    assert!(r.stderr.contains("deployment: the journal holds no deployment d-no-such"), "{}", r.stderr);
}

#[test]
fn an_interrupted_deployment_is_drawn_on_another_machine_from_a_copy_of_the_state() {
    let d = Dir::sim("report-interrupted");
    d.ok(&["deploy", "--json"]);
    assert_eq!(d.killed_after_a_launch(), None, "killed");
    // Another machine: the spec and a copy of the state, no simulated fleet, another process.
    let other = super::Dir::new("report-interrupted-other");
    std::fs::copy(d.path.join("immut.toml"), other.path.join("immut.toml")).unwrap();
    copy_dir(&d.path.join(".immut/state"), &other.path.join(".immut/state"));
    let r = other.ok(&["report", "--out", "interrupted.html", "--svg", "interrupted.svg"]);
    assert!(r.stdout.contains("interrupted: no end is recorded"), "{}", r.stdout);
    let picture = svg(&other.path.join("interrupted.svg"));
    assert_eq!(count(&picture, "interrupted"), 1, "the picture shows where the record stops");
    assert!(count(&picture, "launch") >= 1, "the launch before the kill");
    assert!(!other.path.join(".immut/sim-fleet.json").exists(), "no provider was contacted");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
