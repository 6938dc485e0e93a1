//! The `immut` binary as a user runs it: every command and every exit code, against the
//! simulator (fast, its fleet kept in a file between commands) and the local provider (real
//! processes). JSON output is parsed back; human output is compared with the checked-in
//! snapshots in `tests/snapshots` (run with `UPDATE_SNAPSHOTS=1` to rewrite them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_immut");

#[path = "cli/report.rs"]
mod report;

/// A directory of its own for one test, with a spec in it.
struct Dir {
    path: PathBuf,
    local: bool,
}

impl Dir {
    fn new(name: &str) -> Dir {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("immut-cli").join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir { path, local: false }
    }

    /// A directory with `immut init --provider sim`'s spec, sped up.
    fn sim(name: &str) -> Dir {
        let d = Dir::new(name);
        d.ok(&["init", "--provider", "sim"]);
        d
    }

    fn run(&self, args: &[&str]) -> Ran {
        let out = Command::new(BIN).args(args).current_dir(&self.path).output().expect("immut runs");
        Ran {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects exit 0.
    fn ok(&self, args: &[&str]) -> Ran {
        self.expect(args, 0)
    }

    fn expect(&self, args: &[&str], code: i32) -> Ran {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "immut {args:?} exited {}, expected {code}\nstdout:\n{}\nstderr:\n{}",
            r.code, r.stdout, r.stderr
        );
        r
    }

    /// Starts the deployment of 2.0.0 (slow to turn healthy), SIGKILLs it once it has
    /// launched, and answers its exit code (`None`: killed by the signal).
    fn killed_after_a_launch(&self) -> Option<i32> {
        let mut run = self.spawn(&[
            "deploy",
            "--json",
            "--set",
            "artifact.version=2.0.0",
            "--set",
            "provider.sim.boot_to_healthy=30s",
        ]);
        run.wait_for("\"event\":\"launched\"");
        run.signal(nix::sys::signal::Signal::SIGKILL);
        run.finish().0
    }

    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(&self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines: rx, seen: Vec::new() }
    }

    fn fleet(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path.join(".immut/sim-fleet.json")).unwrap()).unwrap()
    }

    fn set_fleet(&self, fleet: &Value) {
        std::fs::write(self.path.join(".immut/sim-fleet.json"), serde_json::to_vec_pretty(fleet).unwrap()).unwrap();
    }

    fn status(&self) -> Value {
        self.ok(&["status", "--json"]).json()
    }
}

impl Drop for Dir {
    /// Local instances are real processes: stop them whatever happened to the test.
    fn drop(&mut self) {
        if self.local {
            let _ = self.run(&["destroy", "--yes"]);
        }
    }
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// Every stdout line as a JSON object.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect()
    }

    fn finished(&self) -> Value {
        let events = self.events();
        let last = events.last().expect("events").clone();
        assert_eq!(last["event"], "finished", "the last event is the outcome: {last}");
        last["outcome"].clone()
    }
}

/// A command running in the background; stopped by pid when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Waits for a stdout line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n"));
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit; returns the code and every stdout line.
    fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status.code(), std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn release_of(status: &Value) -> String {
    status["serving_release"].as_str().unwrap_or("none").to_owned()
}

/// Deployment ids, times and durations change from run to run.
fn normalize(text: &str) -> String {
    let re = |p: &str| regex::Regex::new(p).unwrap();
    let text = re(r"\bd[0-9a-f]{12}\b").replace_all(text, "d<id>");
    let text = re(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").replace_all(&text, "<time>");
    let text = re(r"\b\d+(\.\d+)?s\b").replace_all(&text, "<secs>");
    let text = re(r"\b[0-9a-f]{64}\b").replace_all(&text, "<hash>");
    text.into_owned()
}

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    let actual = normalize(actual);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_SNAPSHOTS=1 to write it", path.display()));
    assert_eq!(actual, expected, "{name} changed; if on purpose, rerun with UPDATE_SNAPSHOTS=1");
}

#[test]
fn a_session_on_the_simulator_plan_deploy_status_history_verify_rollback_audit() {
    let d = Dir::sim("session");
    let plan = d.ok(&["plan", "--json"]).json();
    assert_eq!(plan["outcome"]["phase"]["phase"], "succeeded");
    assert_eq!(
        plan["waves"].as_array().unwrap().len(),
        1,
        "a first deployment of 4 with a 25% surge is one wave: {plan}"
    );
    assert_eq!(plan["calls"]["launch"], 1);
    snapshot("plan_first", &d.ok(&["plan"]).stdout);

    let first = d.ok(&["deploy", "--json"]);
    let events = first.events();
    assert_eq!(events[0]["event"], "started");
    assert!(events.iter().any(|e| e["event"] == "launched"), "{}", first.stdout);
    let outcome = first.finished();
    assert_eq!(outcome["phase"]["phase"], "succeeded");
    assert_eq!(outcome["serving"].as_array().unwrap().len(), 4);
    let v1 = outcome["release"].as_str().unwrap().to_owned();

    let status = d.status();
    assert_eq!(release_of(&status), v1);
    assert_eq!(status["releases"][0]["live"], 4);
    assert_eq!(status["lock_holder"], Value::Null);
    snapshot("status_after_first", &d.ok(&["status"]).stdout);

    // Rolling to 2.0.0 (one at a time: surge 25% of 4).
    let plan = d.ok(&["plan", "--json", "--set", "artifact.version=2.0.0"]).json();
    assert_eq!(plan["waves"].as_array().unwrap().len(), 4, "{plan}");
    assert!(
        plan["capacity"].as_array().unwrap().iter().all(|c| c["serving_healthy"].as_u64() >= Some(4) || c["step"] == 1)
    );
    let second = d.ok(&["deploy", "--set", "artifact.version=2.0.0", "--json"]).finished();
    let v2 = second["release"].as_str().unwrap().to_owned();
    assert_eq!(second["previous"], Value::String(v1.clone()));
    assert_eq!(release_of(&d.status()), v2);

    let history = d.ok(&["history", "--json"]).json();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[1]["release"]["artifact"]["version"], "2.0.0");
    snapshot("history", &d.ok(&["history"]).stdout);
    let verify = d.ok(&["verify", "--json"]).json();
    assert_eq!(verify["entries"], 2);
    let head = verify["head"].as_str().unwrap().to_owned();
    d.ok(&["verify", "--head", &head]);

    let audit = d.ok(&["audit", "--json", "--set", "artifact.version=2.0.0"]).json();
    assert_eq!(audit["expected"], Value::String(v2.clone()));
    assert_eq!(audit["counts"]["ok"], 4);
    snapshot("audit_clean", &d.ok(&["audit"]).stdout);

    let back = d.ok(&["rollback", "--json"]).finished();
    assert_eq!(back["release"], Value::String(v1.clone()));
    assert_eq!(release_of(&d.status()), v1);
    // The rolled-back-to release is now the current one: audit checks against it.
    assert_eq!(d.ok(&["audit", "--json"]).json()["expected"], Value::String(v1));
    d.ok(&["verify"]);
}

#[test]
fn human_deploy_output_is_one_line_per_event() {
    let d = Dir::sim("lines");
    let r = d.ok(&["deploy", "--output", "lines", "--set", "desired=2"]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].contains("start    nothing -> r"), "{}", r.stdout);
    assert!(
        lines.iter().any(|l| l.contains("launch   wave 1: 2 instances [sim-0000000, sim-0000001]")),
        "{}",
        r.stdout
    );
    assert!(lines.last().unwrap().contains("done     deployment d"), "{}", r.stdout);
    assert!(r.stderr.contains("done (exit 0)"), "{}", r.stderr);
}

/// `immut deploy --json` of 2.0.0 on the simulator, which never turns healthy: it rolls back
/// (exit 3) once the short progress deadline passes.
const NEVER_HEALTHY_DEPLOY: &[&str] = &[
    "deploy",
    "--json",
    "--set",
    "artifact.version=2.0.0",
    "--set",
    "provider.sim.never_healthy_versions=[\"2.0.0\"]",
    "--set",
    "rollout.progress_deadline=300ms",
];

#[test]
fn a_release_that_never_turns_healthy_rolls_back_with_exit_3() {
    let d = Dir::sim("rolled-back");
    d.ok(&["deploy", "--json"]);
    let v1 = release_of(&d.status());
    let r = d.expect(NEVER_HEALTHY_DEPLOY, 3);
    let outcome = r.finished();
    assert_eq!(outcome["phase"]["phase"], "rolled_back", "{outcome}");
    assert!(r.events().iter().any(|e| e["event"] == "rollback_started"));
    assert_eq!(release_of(&d.status()), v1, "the previous release serves");
    let history = d.ok(&["history", "--json"]).json();
    assert_eq!(history[1]["outcome"]["phase"], "rolled_back");
}

#[test]
fn a_failed_rollback_exits_4() {
    let d = Dir::sim("rollback-failed");
    d.ok(&["deploy", "--set", "desired=2", "--json"]);
    // Wave 1 replaces one instance; the second launch fails closed (quota), and so does the
    // rollback's relaunch of the old release.
    let r = d.expect(
        &[
            "deploy",
            "--json",
            "--set",
            "desired=2",
            "--set",
            "strategy.max_surge=1",
            "--set",
            "artifact.version=2.0.0",
            "--set",
            "provider.sim.fail_launch_calls=[2, 3]",
            "--set",
            "rollout.progress_deadline=2s",
        ],
        4,
    );
    assert_eq!(r.finished()["phase"]["phase"], "rollback_failed", "{}", r.stdout);
}

#[test]
fn a_downgrade_is_refused_without_rollback_exit_6() {
    let d = Dir::sim("downgrade");
    d.ok(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
    let r = d.expect(&["deploy", "--json"], 6);
    let outcome = r.finished();
    assert_eq!(outcome["phase"]["phase"], "refused");
    assert!(outcome["phase"]["reason"].as_str().unwrap().contains("artifact.version"), "{outcome}");
    assert!(d.status()["releases"][0]["version"] == "2.0.0", "nothing changed");
    d.ok(&["deploy", "--json", "--rollback"]);
    assert_eq!(d.status()["releases"][0]["version"], "1.0.0");
}

#[test]
fn a_held_lock_refuses_exit_6_status_names_the_holder_and_sigterm_cancels_exit_5() {
    let d = Dir::sim("lock");
    d.ok(&["deploy", "--json"]);
    let mut first =
        d.spawn(&["deploy", "--json", "--set", "artifact.version=2.0.0", "--set", "provider.sim.boot_to_healthy=30s"]);
    first.wait_for("\"event\":\"launched\"");
    let second = d.expect(&["deploy", "--json", "--set", "artifact.version=2.0.0"], 6);
    let reason = second.finished()["phase"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("is being deployed by deployment d"), "{reason}");
    let status = d.status();
    let holder = status["lock_holder"].as_str().expect("a holder").to_owned();
    assert!(reason.contains(&holder), "{reason} names {holder}");
    assert_eq!(status["in_flight"]["deployment"], Value::String(holder.clone()));
    assert_eq!(status["in_flight"]["running"], true);
    assert!(d.ok(&["status"]).stdout.contains(&format!("lock held by      {holder}")));

    first.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, lines) = first.finish();
    assert_eq!(code, Some(5), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("cancelling: the deployment rolls back")), "{}", lines.join("\n"));
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["outcome"]["phase"]["phase"], "rolled_back");
    let status = d.status();
    assert_eq!(status["releases"][0]["version"], "1.0.0");
    assert_eq!(status["releases"].as_array().unwrap().len(), 1, "the new instances are gone: {status}");
    assert_eq!(status["lock_holder"], Value::Null);
}

#[test]
fn a_second_interrupt_says_what_is_in_flight() {
    let d = Dir::sim("second-interrupt");
    d.ok(&["deploy", "--json"]);
    // The rollback has to wait out a slow drain, so the second interrupt finds it running.
    let mut run = d.spawn(&[
        "deploy",
        "--json",
        "--set",
        "artifact.version=2.0.0",
        "--set",
        "provider.sim.boot_to_healthy=30s",
        "--set",
        "provider.sim.api=300ms",
    ]);
    run.wait_for("\"event\":\"launched\"");
    run.signal(nix::sys::signal::Signal::SIGINT);
    run.wait_for("cancelling");
    run.signal(nix::sys::signal::Signal::SIGINT);
    run.wait_for("still in flight: deployment d");
    let (code, lines) = run.finish();
    assert_eq!(code, Some(5), "{}", lines.join("\n"));
}

#[test]
fn a_killed_deployment_is_resumed_from_the_journal() {
    let d = Dir::sim("resume");
    d.ok(&["deploy", "--json"]);
    let ok = d.ok(&["resume", "--json"]);
    assert_eq!(ok.events()[0]["event"], "nothing_to_resume");
    assert_eq!(d.killed_after_a_launch(), None, "killed");
    let status = d.status();
    assert_eq!(status["in_flight"]["running"], false, "{status}");
    assert!(d.ok(&["status"]).stdout.contains("was interrupted (its process died): run `immut resume`"));
    let resumed = d.ok(&["resume", "--json"]);
    assert_eq!(resumed.events()[0]["event"], "resumed");
    assert_eq!(resumed.finished()["phase"]["phase"], "succeeded");
    let status = d.status();
    assert_eq!(status["releases"][0]["version"], "2.0.0");
    assert_eq!(status["releases"][0]["live"], 4, "no duplicate, no orphan: {status}");
    assert_eq!(status["in_flight"], Value::Null);
}

#[test]
fn resume_rollback_rolls_an_interrupted_deployment_back() {
    let d = Dir::sim("resume-rollback");
    d.ok(&["deploy", "--json"]);
    let _ = d.killed_after_a_launch();
    let r = d.ok(&["resume", "--rollback", "--json"]);
    assert_eq!(r.finished()["phase"]["phase"], "rolled_back");
    assert_eq!(d.status()["releases"][0]["version"], "1.0.0");
}

#[test]
fn audit_finds_tampered_and_unmanaged_instances_exit_1_and_reconcile_replaces_them() {
    let d = Dir::sim("audit");
    // SAFETY of the test: the key goes to the child through its environment only.
    let key_env = ("IMMUT_TEST_KEY", "a-long-random-test-signing-key");
    let run_keyed = |args: &[&str], code: i32| {
        let out = Command::new(BIN).args(args).current_dir(&d.path).env(key_env.0, key_env.1).output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{stdout}\n{stderr}");
        Ran { code, stdout, stderr }
    };
    let keyed = ["--set", "signing_key_env=IMMUT_TEST_KEY"];
    let missing = d.expect(&["deploy", "--json", keyed[0], keyed[1]], 2);
    assert!(missing.stderr.contains("set IMMUT_TEST_KEY"), "{}", missing.stderr);
    assert!(!missing.stderr.contains(key_env.1));
    run_keyed(&["deploy", "--json", keyed[0], keyed[1]], 0);
    // Someone edits a label by hand, and starts an instance outside immut.
    let mut fleet = d.fleet();
    let instances = fleet["instances"].as_array_mut().unwrap();
    instances[0]["labels"]["immut-version"] = Value::String("9.9.9".into());
    instances[0]["provenance"]["artifact_version"] = Value::String("9.9.9".into());
    let mut stranger = instances[1].clone();
    stranger["id"] = Value::String("hand-0000099".into());
    stranger["provenance"] = Value::Null;
    stranger["labels"] = serde_json::json!({});
    instances.push(stranger);
    d.set_fleet(&fleet);

    let report = run_keyed(&["audit", "--json", keyed[0], keyed[1]], 1).json();
    assert_eq!(report["counts"]["tampered"], 1, "{report}");
    assert_eq!(report["counts"]["unmanaged"], 1, "{report}");
    assert_eq!(report["counts"]["ok"], 3, "{report}");
    let table = run_keyed(&["audit", keyed[0], keyed[1]], 1).stdout;
    snapshot("audit_findings", &table);

    let r = run_keyed(&["audit", "--reconcile", "--json", keyed[0], keyed[1]], 0);
    assert_eq!(r.finished()["phase"]["phase"], "succeeded", "{}", r.stdout);
    let report = run_keyed(&["audit", "--json", keyed[0], keyed[1]], 0).json();
    assert_eq!(report["counts"]["ok"], 4, "the offenders were replaced: {report}");
    assert_eq!(report["findings"].as_array().unwrap().len(), 4);
}

#[test]
fn adopt_labels_unmanaged_instances_and_the_next_deployment_replaces_them() {
    let d = Dir::sim("adopt");
    d.ok(&["adopt"]);
    d.ok(&["deploy", "--json", "--set", "desired=2"]);
    let mut fleet = d.fleet();
    let mut stranger = fleet["instances"][0].clone();
    stranger["id"] = Value::String("hand-0000050".into());
    stranger["provenance"] = Value::Null;
    stranger["labels"] = serde_json::json!({});
    fleet["instances"].as_array_mut().unwrap().push(stranger);
    fleet["serving"].as_array_mut().unwrap().push(Value::String("hand-0000050".into()));
    d.set_fleet(&fleet);
    let bad = d.expect(&["adopt", "no-such-id"], 2);
    assert!(bad.stderr.contains("not unmanaged instances of web: no-such-id"), "{}", bad.stderr);
    let adopted = d.ok(&["adopt", "--json"]).json();
    assert_eq!(adopted["adopted"], serde_json::json!(["hand-0000050"]));
    let status = d.status();
    assert!(
        status["releases"].as_array().unwrap().iter().any(|r| r["release"] == "r0" && r["version"] == "0.0.0"),
        "{status}"
    );
    d.ok(&["deploy", "--json", "--set", "desired=2", "--set", "artifact.version=1.1.0"]);
    let status = d.status();
    let releases = status["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "the adopted instance was replaced: {status}");
    assert_eq!(releases[0]["version"], "1.1.0");
}

#[test]
fn reap_lists_orphans_exit_1_and_terminates_them_with_yes() {
    let d = Dir::sim("reap");
    d.ok(&["deploy", "--json"]);
    let old = d.fleet()["instances"][0].clone();
    d.ok(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
    d.ok(&["reap"]);
    let mut fleet = d.fleet();
    let mut orphan = old;
    orphan["id"] = Value::String("sim-0000900".into());
    fleet["instances"].as_array_mut().unwrap().push(orphan);
    d.set_fleet(&fleet);
    let r = d.expect(&["reap"], 1);
    assert!(r.stdout.contains("1 orphans: sim-0000900"), "{}", r.stdout);
    let r = d.ok(&["reap", "--yes", "--json"]).json();
    assert_eq!(r["orphans"][0]["id"], "sim-0000900");
    assert_eq!(r["terminated"], true);
    assert_eq!(d.ok(&["reap"]).stdout.trim(), "no orphans");
}

#[test]
fn destroy_shows_then_needs_yes_exit_6_then_removes_everything() {
    let d = Dir::sim("destroy");
    d.ok(&["deploy", "--json"]);
    let r = d.expect(&["destroy"], 6);
    assert!(r.stdout.contains("destroy would detach and terminate 4 instances of web: sim-0000000"), "{}", r.stdout);
    assert_eq!(d.status()["releases"][0]["live"], 4, "nothing removed");
    let r = d.ok(&["destroy", "--yes", "--json"]).json();
    assert_eq!(r["removed"].as_array().unwrap().len(), 4);
    let status = d.status();
    assert_eq!(status["releases"], serde_json::json!([]));
    assert_eq!(status["serving_release"], Value::Null);
    d.ok(&["destroy"]);
}

#[test]
fn a_broken_ledger_is_found_exit_1() {
    let d = Dir::sim("verify");
    d.ok(&["deploy", "--json"]);
    d.ok(&["deploy", "--json", "--set", "artifact.version=1.1.0"]);
    // The ledger is numbered entry objects on the state store: edit one of them.
    let dir = d.path.join(".immut/state/ledger.jsonl/ledger/entries");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let path = files
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("\"strategy\":\"rolling\""))
        .expect("an entry of the rolling deployment");
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replacen("\"strategy\":\"rolling\"", "\"strategy\":\"canary\"", 1)).unwrap();
    let r = d.expect(&["verify"], 1);
    assert!(r.stdout.contains("ledger BROKEN"), "{}", r.stdout);
    let report = d.expect(&["verify", "--json"], 1).json();
    assert_eq!(report["problems"][0]["problem"], "edited", "{report}");
    let r = d.expect(&["verify", "--head", &"f".repeat(64)], 1);
    assert!(r.stdout.contains("deleted"), "{}", r.stdout);
}

#[test]
fn a_failing_provider_exits_7_and_rollback_with_nothing_to_go_back_to_exits_6() {
    let d = Dir::sim("provider-error");
    let r = d.expect(&["status", "--set", "provider.sim.throttle_rate=0.99"], 7);
    assert!(r.stderr.contains("RateLimited [sim"), "{}", r.stderr);
    let r = d.expect(&["status", "--json", "--set", "provider.sim.throttle_rate=0.99"], 7);
    assert_eq!(r.json()["exit"], 7);
    let r = d.expect(&["rollback"], 6);
    assert!(r.stderr.contains("no earlier successful release of web"), "{}", r.stderr);
}

#[test]
fn spec_errors_name_file_line_and_column_exit_2() {
    let d = Dir::sim("spec-errors");
    let path = d.path.join("immut.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("max_unavailable = 0", "max_unavailable = 0\nbake = \"30s\"\ncolour = 1"))
        .unwrap();
    let r = d.expect(&["plan"], 2);
    assert!(r.stderr.starts_with("error: immut.toml:"), "{}", r.stderr);
    assert!(r.stderr.contains("unknown field `colour`, expected one of"), "{}", r.stderr);
    std::fs::write(&path, text.replace("max_unavailable = 0", "max_unavailable = 0\nbake = \"30s\"")).unwrap();
    let r = d.expect(&["deploy"], 2);
    let line = text.lines().position(|l| l.starts_with("max_unavailable")).unwrap() + 2;
    assert!(
        r.stderr.contains(&format!("immut.toml:{line}:8: strategy.bake: is not a setting of rolling; rolling takes max_surge, max_unavailable, pause")),
        "{}",
        r.stderr
    );
    std::fs::write(&path, &text).unwrap();
    let r = d.expect(&["deploy", "--set", "rollout.min_ready=soon"], 2);
    assert!(
        r.stderr.contains("--set rollout.min_ready=soon: rollout.min_ready: \"soon\" is not a duration"),
        "{}",
        r.stderr
    );
    let r = d.expect(&["deploy", "--json", "--set", "desired=0"], 2);
    assert_eq!(r.json()["exit"], 2);
    let r = d.expect(&["status", "-f", "nowhere.toml"], 2);
    assert!(r.stderr.contains("nowhere.toml:1:1: cannot read the spec"), "{}", r.stderr);
    std::fs::write(&path, "service = \"web\"\ndesired = [\n").unwrap();
    let r = d.expect(&["plan"], 2);
    assert!(
        r.stderr.contains("immut.toml:2:12: unclosed array, expected `]` (this is not valid TOML)"),
        "{}",
        r.stderr
    );
    let r = d.expect(&["deploy", "--no-such-flag"], 2);
    assert!(r.stderr.contains("--no-such-flag"), "{}", r.stderr);
}

#[test]
fn init_writes_a_spec_per_provider_and_never_overwrites() {
    let d = Dir::new("init");
    d.ok(&["init"]);
    let r = d.expect(&["init", "--provider", "sim"], 2);
    assert!(r.stderr.contains("pass --force"), "{}", r.stderr);
    d.ok(&["init", "--provider", "sim", "--force"]);
    assert!(std::fs::read_to_string(d.path.join("immut.toml")).unwrap().contains("kind = \"sim\""));
    for p in ["local", "aws", "gcp"] {
        d.ok(&["init", "--provider", p, "-f", &format!("{p}/immut.toml")]);
    }
    d.ok(&["plan", "-f", "local/immut.toml", "--json"]);
    #[cfg(not(feature = "aws"))]
    {
        let r = d.expect(&["plan", "-f", "aws/immut.toml"], 2);
        assert!(r.stderr.contains("built without the aws provider"), "{}", r.stderr);
    }
}

#[test]
fn help_lists_the_exit_codes_completions_generate_and_panics_exit_70() {
    let d = Dir::new("help");
    let help = d.ok(&["--help"]).stdout;
    for code in ["   0  success", "   3  rolled back", "   4  rollback failed", "   6  refused", "  70  internal"] {
        assert!(help.contains(code), "{help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = d.ok(&["completions", shell]).stdout;
        assert!(script.contains("immut") && script.contains("deploy"), "{shell}");
    }
    let out =
        Command::new(BIN).arg("--help").env("IMMUT_CLI_PANIC_FOR_TESTS", "1").current_dir(&d.path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "--help is handled before anything runs");
    let out =
        Command::new(BIN).args(["status"]).env("IMMUT_CLI_PANIC_FOR_TESTS", "1").current_dir(&d.path).output().unwrap();
    assert_eq!(out.status.code(), Some(70));
    assert!(String::from_utf8_lossy(&out.stderr).contains("internal error (a bug in immut)"));
}

/// The issue's "done when": `immut init --provider local && immut plan && immut deploy`,
/// real processes of the sample service built into immut, then the rest of a session.
#[test]
fn a_session_on_the_local_provider() {
    let mut d = Dir::new("local");
    d.local = true;
    d.ok(&["init", "--provider", "local"]);
    let fast = ["--set", "strategy.bake=300ms", "--set", "rollout.min_ready=300ms"];
    let plan = d.ok(&["plan", "--json"]).json();
    assert_eq!(plan["waves"][0]["launched"].as_array().unwrap().len(), 3);
    let first = d.ok(&["deploy", "--json", fast[0], fast[1], fast[2], fast[3]]);
    let outcome = first.finished();
    assert_eq!(outcome["serving"].as_array().unwrap().len(), 3);
    let status = d.status();
    assert_eq!(status["releases"][0]["version"], "1.0.0");
    assert_eq!(status["releases"][0]["serving"], 3);
    assert_eq!(d.ok(&["audit", "--json"]).json()["counts"]["ok"], 3);
    let second = d.ok(&["deploy", "--json", "--set", "artifact.version=2.0.0", fast[0], fast[1], fast[2], fast[3]]);
    assert_eq!(second.finished()["phase"]["phase"], "succeeded");
    let back = d.ok(&["rollback", "--json", fast[0], fast[1], fast[2], fast[3]]);
    assert_eq!(back.finished()["release"], outcome["release"]);
    assert_eq!(d.status()["releases"][0]["version"], "1.0.0");
    assert_eq!(d.ok(&["history", "--json"]).json().as_array().unwrap().len(), 3);
    d.ok(&["verify"]);
    let removed = d.ok(&["destroy", "--yes", "--json"]).json();
    assert_eq!(removed["removed"].as_array().unwrap().len(), 3);
    assert_eq!(d.status()["releases"], serde_json::json!([]), "every process is stopped");
}

/// The sim spec with blue/green that waits for `immut promote` before it switches.
fn manual_promotion(d: &Dir) {
    let path = d.path.join("immut.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rolling = "kind = \"rolling\"\nmax_surge = \"25%\"\nmax_unavailable = 0";
    assert!(text.contains(rolling), "{text}");
    std::fs::write(&path, text.replace(rolling, "kind = \"blue_green\"\npromotion = \"manual\"")).unwrap();
}

#[test]
fn a_manual_promotion_waits_for_immut_promote_from_another_process() {
    let d = Dir::sim("promote");
    manual_promotion(&d);
    let r = d.expect(&["promote"], 6);
    assert!(r.stderr.contains("no deployment of web is in flight"), "{}", r.stderr);
    assert_eq!(d.ok(&["plan", "--json"]).json()["outcome"]["phase"]["phase"], "succeeded", "the plan assumes approval");

    let mut run = d.spawn(&["deploy", "--json"]);
    run.wait_for("\"event\":\"awaiting_approval\"");
    let status = d.status();
    let waiting = &status["awaiting_approval"][0];
    assert_eq!(waiting["gate"], "promote", "{status}");
    assert_eq!(waiting["deployment"], status["in_flight"]["deployment"], "{status}");
    let table = d.ok(&["status"]).stdout;
    assert!(
        table.contains("awaiting approval gate promote of deployment d")
            && table.contains("run `immut promote` to go on or `immut promote --reject REASON` to roll back"),
        "{table}"
    );
    let approved = d.ok(&["promote", "--json"]).json();
    assert_eq!(approved["gate"], "promote");
    assert_eq!(approved["verdict"]["approved"], true);
    assert_eq!(approved["deployment"], waiting["deployment"]);
    let again = d.expect(&["promote"], 6);
    assert!(again.stderr.contains("nothing changed"), "{}", again.stderr);
    let (code, lines) = run.finish();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("\"event\":\"gate_passed\"")), "{}", lines.join("\n"));
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["outcome"]["phase"]["phase"], "succeeded");
    let v1 = release_of(&d.status());
    assert_eq!(d.status()["awaiting_approval"], serde_json::json!([]));

    // Rejected from another process: the deployment rolls back, exit 3.
    let mut run = d.spawn(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
    run.wait_for("\"event\":\"awaiting_approval\"");
    let rejected = d.ok(&["promote", "--reject", "the error rate doubled"]);
    assert!(rejected.stdout.contains("rejected gate promote of deployment d"), "{}", rejected.stdout);
    let (code, lines) = run.finish();
    assert_eq!(code, Some(3), "{}", lines.join("\n"));
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let reason = last["outcome"]["phase"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("rejected by") && reason.contains("the error rate doubled"), "{reason}");
    assert_eq!(release_of(&d.status()), v1, "the previous release serves");
}

#[test]
fn promotion_is_checked_against_the_strategy() {
    let d = Dir::sim("promotion-spec");
    let r = d.expect(&["plan", "--set", "strategy.promotion=manual"], 2);
    assert!(r.stderr.contains("strategy.promotion: is not a setting of rolling"), "{}", r.stderr);
    manual_promotion(&d);
    let r = d.expect(&["plan", "--set", "strategy.promotion=sometimes"], 2);
    assert!(r.stderr.contains("--set strategy.promotion=sometimes: strategy.promotion: \"sometimes\""), "{}", r.stderr);
}
