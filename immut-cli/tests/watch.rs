//! `immut watch` on the local provider, with real processes: a killed instance, a copy of the
//! service started by hand and another build wearing a real instance's labels are each found
//! and repaired within two intervals, as the command prints it and as `/proc` and the
//! instances' own `/version` show; SIGINT then stops it cleanly (exit 0, lease released).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use immut::engine::Event;
use immut::journal::Journal;
use immut::{InstanceId, Provider, Query, Traffic};
use support::{Case, processes_from, stderr};

const WATCH: &str = r#"
[watch]
interval = "2s"
grace = "1s"
max_repairs = 2
unmanaged = "replace"
unmanaged_scope = "service"
"#;

/// The events `immut watch --json` prints, as they come, with the cycle each came in.
struct Events {
    rx: Receiver<Event>,
    /// Every line printed, events or not.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    seen: Vec<Event>,
    cycle: u64,
}

impl Events {
    /// Waits for an event `pred` accepts; returns it and the cycle it came in.
    fn until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Event) -> bool) -> (Event, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    if let Event::WatchCycle { cycle, .. } = &e {
                        self.cycle = *cycle;
                    }
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return (e, self.cycle);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let lines: Vec<String> = self.seen.iter().map(|e| e.to_string()).collect();
                    panic!("gave up waiting for {what}; the watch printed:\n{}", lines.join("\n"));
                }
            }
        }
    }

    /// Waits for the first cycle that ends with nothing open.
    fn clean(&mut self, what: &str) -> u64 {
        self.until(what, Duration::from_secs(40), |e| matches!(e, Event::WatchCycle { open: 0, .. })).1
    }

    /// Waits for a successful repair; returns its cycle.
    fn repaired(&mut self, what: &str) -> u64 {
        let (e, cycle) = self.until(what, Duration::from_secs(40), |e| matches!(e, Event::RepairFinished { .. }));
        let Event::RepairFinished { succeeded, summary, .. } = e else { unreachable!() };
        assert!(succeeded, "{what}: {summary}");
        cycle
    }
}

fn watch(case: &Case) -> (Child, Events) {
    let mut child = case.command(&["watch", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let all = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            all.lock().unwrap().push(line.clone());
            if let Ok(e) = serde_json::from_str::<Event>(&line)
                && tx.send(e).is_err()
            {
                return;
            }
        }
    });
    (child, Events { rx, lines, seen: Vec::new(), cycle: 0 })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `exe` as the sample service on a free port, carrying the case's state directory
/// (so the case's clean-up kills it) and `id` as its instance id when given.
fn start_sample(case: &Case, exe: &Path, id: Option<&str>) -> (Child, u16) {
    let port = free_port();
    let mut c = Command::new(exe);
    c.arg(immut::local::sample::SAMPLE_FLAG)
        .env(immut::local::env::PORT, port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(id) = id {
        let dir = std::fs::canonicalize(case.local_dir()).unwrap();
        c.env(immut::local::env::STATE_DIR, dir).env(immut::local::env::INSTANCE_ID, id);
    }
    (c.spawn().unwrap(), port)
}

async fn wait_listening(port: u16) {
    support::eventually("the hand-started process to listen", Duration::from_secs(10), || async move {
        support::listening(port).await.then_some(())
    })
    .await;
}

/// What an instance says it runs: the `digest` of its `GET /version`.
async fn running_digest(address: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["digest"].as_str().unwrap().to_owned()
}

/// Ground truth: three instances run, each process of the case is one the provider
/// launched, and every serving instance says it runs the deployed build.
async fn assert_fleet(case: &Case, digest: &str, stray_pids: &[u32]) {
    let running = processes_from(&case.local_dir());
    assert_eq!(running.len(), 3, "{running:?}");
    for pid in stray_pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || zombie(*pid), "pid {pid} still runs");
    }
    let balancer = case.balancer().await;
    let serving = balancer.serving().await.unwrap();
    assert_eq!(serving.len(), 3, "{serving:?}");
    let described = case.provider().describe(&Query::ids(serving.clone()).with_unmanaged()).await.unwrap();
    assert_eq!(described.len(), 3);
    for i in &described {
        assert!(running.contains_key(i.id.as_str()), "{} serves but is not one of the provider's", i.id);
        assert_eq!(running_digest(i.address.as_deref().unwrap()).await, digest, "{} runs another build", i.id);
    }
}

fn zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_none_or(|(_, rest)| matches!(rest.split_whitespace().next(), Some("Z") | None))
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_repairs_a_kill_a_hand_made_copy_and_another_build_then_stops_cleanly_on_sigint() {
    let case = Case::new("watch", "web", 3, "blue-green");
    let spec = case.dir.join("immut.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}{WATCH}")).unwrap();
    let deployed = case.run(&["deploy", "--json"]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    // What the deployed build says it runs, from one of its instances.
    let first = case.provider().describe(&Query::service("web")).await.unwrap();
    let digest = running_digest(first[0].address.as_deref().unwrap()).await;
    let (mut child, mut events) = watch(&case);
    events.clean("a first clean cycle");

    // 1. Kill one instance (SIGKILL, its whole process group).
    let before = events.cycle;
    let (victim, pids) = processes_from(&case.local_dir()).into_iter().next().unwrap();
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    let repaired = events.repaired("the killed instance's repair");
    assert!(repaired - before <= 2, "killed after cycle {before}, repaired in cycle {repaired}");
    assert!(
        events.seen.iter().any(|e| matches!(e, Event::FindingOpened { finding } if finding.kind == "missing_capacity")),
        "the kill was found as missing capacity"
    );
    events.clean("a clean cycle after the kill");
    assert!(!processes_from(&case.local_dir()).contains_key(&victim));
    assert_fleet(&case, &digest, &[]).await;

    // 2. A copy of the service's executable, started by hand: unmanaged, in scope.
    let copy = case.dir.join("sample-copy");
    std::fs::copy(support::BIN, &copy).unwrap();
    let (mut hand, port) = start_sample(&case, &copy, None);
    wait_listening(port).await;
    let before = events.cycle;
    let (found, _) = events.until(
        "the copy's finding",
        Duration::from_secs(20),
        |e| matches!(e, Event::FindingOpened { finding } if finding.kind == "unmanaged"),
    );
    let repaired = events.repaired("the copy's repair");
    assert!(repaired - before <= 2, "started after cycle {before}, repaired in cycle {repaired}: {found}");
    events.clean("a clean cycle after the copy");
    let _ = hand.wait();
    assert_fleet(&case, &digest, &[hand.id()]).await;

    // 3. Another build wearing a real instance's labels: a record written by hand, with the
    // labels (signature and all) copied, for a process of another build, put behind the balancer.
    let build2 = case.dir.join("build-2");
    let mut bytes = std::fs::read(support::BIN).unwrap();
    bytes.extend_from_slice(b"\nimmut test: another build\n");
    std::fs::write(&build2, bytes).unwrap();
    std::fs::set_permissions(&build2, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let forged_id = "web-forged-00000000";
    let (mut other, port) = start_sample(&case, &build2, Some(forged_id));
    wait_listening(port).await;
    assert_ne!(running_digest(&format!("127.0.0.1:{port}")).await, digest, "it runs another build");
    let instances = case.local_dir().join("instances");
    let real = support::records(&case.local_dir()).into_iter().next().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(real).unwrap()).unwrap();
    record["id"] = forged_id.into();
    record["pid"] = other.id().into();
    record["start_ticks"] = start_ticks(other.id()).into();
    record["port"] = port.into();
    record["group"] = false.into();
    std::fs::write(instances.join(format!("{forged_id}.json")), serde_json::to_vec(&record).unwrap()).unwrap();
    let forged = case.provider().describe(&Query::ids([InstanceId::new(forged_id)])).await.unwrap();
    assert_eq!(forged.len(), 1, "the provider shows it as one of its own");
    let before = events.cycle;
    case.balancer().await.attach(&forged).await.unwrap();
    let (found, _) = events.until("the forged instance's finding", Duration::from_secs(20), |e| {
        matches!(e, Event::FindingOpened { finding } if finding.instance.as_ref().is_some_and(|i| i.as_str() == forged_id))
    });
    let repaired = events.repaired("the forged instance's repair");
    assert!(repaired - before <= 2, "attached after cycle {before}, repaired in cycle {repaired}: {found}");
    events.clean("a clean cycle after the forged instance");
    let _ = other.wait();
    assert_fleet(&case, &digest, &[other.id()]).await;

    // The floor held through every repair: serving-healthy never dropped below what served
    // healthy when the repair began.
    let mut floor = None;
    for e in &events.seen {
        match e {
            Event::RepairStarted { .. } => floor = None,
            Event::Step { capacity, .. } => {
                let f = *floor.get_or_insert(capacity.serving_healthy);
                assert!(capacity.serving_healthy >= f.min(2), "serving-healthy fell to {}", capacity.serving_healthy);
            }
            _ => {}
        }
    }

    // SIGINT: a clean exit, and the lease released.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let printed = events.lines.lock().unwrap().join("\n");
    assert!(printed.contains("watch stopped; the lease is released"), "{printed}");
    assert!(!err.contains("error"), "{err}");
    let journal = immut::journal::FileJournal::open(case.state_dir().join("journal")).unwrap();
    assert_eq!(journal.holder("web").unwrap(), None, "the lease is free");
    // The ledger chain is intact and holds the three repairs.
    let verify = case.run(&["verify"]);
    assert!(verify.status.success(), "{:?} {}{}", verify.status, support::stdout(&verify), stderr(&verify));
    let history = case.run(&["history", "--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&history.stdout).unwrap();
    let repairs = entries
        .iter()
        .filter(|e| e["deployment"].as_str().is_some_and(|d| d.starts_with("watch-")) && e.get("watch").is_none())
        .count();
    assert_eq!(repairs, 3, "{entries:#?}");
}

/// A launcher script as the artifact: the release is the script, so a file beside it makes
/// every new instance of the same release crash at start, as a broken dependency would.
fn launcher_case(tag: &str) -> Case {
    let case = Case::new(tag, "web", 3, "blue-green");
    let script = case.dir.join("launcher.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e \"{dir}/crash\" ]; then echo \"launcher: {dir}/crash exists; cannot start\" >&2; exit 3; fi\nexec {bin} {flag}\n",
            dir = case.dir.display(),
            bin = support::BIN,
            flag = immut::local::sample::SAMPLE_FLAG
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = case.dir.join("immut.toml");
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("image = \"builtin:sample\"", "image = \"launcher.sh\"")
        .replace("drain_timeout = \"5s\"", "drain_timeout = \"5s\"\nterm_timeout = \"1s\"");
    std::fs::write(&spec, format!("{text}{WATCH}breaker_threshold = 2\n")).unwrap();
    case
}

fn signal(pids: &[i32], signal: nix::sys::signal::Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replaces_a_stopped_instance_and_a_release_that_crashes_at_start_opens_the_breaker() {
    let case = launcher_case("breaker");
    let deployed = case.run(&["deploy", "--json"]);
    assert!(deployed.status.success(), "{}{}", support::stdout(&deployed), stderr(&deployed));
    let (mut child, mut events) = watch(&case);
    events.clean("a first clean cycle");

    // SIGSTOP one instance: it stops answering, and is replaced once its grace is over.
    let before = events.cycle;
    let (stopped, pids) = processes_from(&case.local_dir()).into_iter().next().unwrap();
    signal(&pids, nix::sys::signal::Signal::SIGSTOP);
    let (found, found_in) = events.until("the stopped instance's finding", Duration::from_secs(20), |e| {
        matches!(e, Event::FindingOpened { finding } if finding.instance.as_ref().is_some_and(|i| i.as_str() == stopped))
    });
    let repaired = events.repaired("the stopped instance's repair");
    assert!(
        repaired - before <= 3,
        "stopped after cycle {before}, found in {found_in}, repaired in {repaired}: {found}"
    );
    assert!(repaired > found_in, "not replaced within its grace period");
    events.clean("a clean cycle after the stop");
    assert!(!processes_from(&case.local_dir()).contains_key(&stopped), "the stopped instance was terminated");
    assert_eq!(case.balancer().await.serving().await.unwrap().len(), 3);

    // From now on the release crashes at start. Someone kills an instance: the repairs fail,
    // twice, and then the watch stops repairing and says why.
    std::fs::write(case.dir.join("crash"), b"").unwrap();
    let (victim, pids) = processes_from(&case.local_dir()).into_iter().next().unwrap();
    signal(&pids, nix::sys::signal::Signal::SIGKILL);
    let (opened, _) =
        events.until("the breaker", Duration::from_secs(60), |e| matches!(e, Event::BreakerOpened { .. }));
    let Event::BreakerOpened { failures, reason } = opened else { unreachable!() };
    assert_eq!(failures, 2, "{reason}");
    assert!(reason.contains("stopped repairing") && reason.contains("replacement budget"), "{reason}");
    let failed = events.seen.iter().filter(|e| matches!(e, Event::RepairFinished { succeeded: false, .. })).count();
    assert_eq!(failed, 2);
    // Two more cycles: no repair is tried.
    let after = events.cycle;
    events.until(
        "two more cycles",
        Duration::from_secs(20),
        |e| matches!(e, Event::WatchCycle { cycle, .. } if *cycle >= after + 2),
    );
    let started = events.seen.iter().filter(|e| matches!(e, Event::RepairStarted { .. })).count();
    assert_eq!(started, 3, "the stop's repair and the two failed ones, no more");
    // The two survivors still serve, untouched; nothing the failed repairs launched is left.
    let running = processes_from(&case.local_dir());
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(!running.contains_key(&victim));
    let serving = case.balancer().await.serving().await.unwrap();
    assert!(serving.iter().all(|id| running.contains_key(id.as_str())), "{serving:?} {running:?}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let journal = immut::journal::FileJournal::open(case.state_dir().join("journal")).unwrap();
    assert_eq!(journal.holder("web").unwrap(), None, "the lease is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_settings_are_checked_before_anything_runs_and_once_runs_one_cycle() {
    let case = Case::new("watch-once", "web", 2, "blue-green");
    let spec = case.dir.join("immut.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}{WATCH}")).unwrap();
    let never = case.run(&["watch", "--once"]);
    assert_eq!(never.status.code(), Some(6), "{}", stderr(&never));
    assert!(
        stderr(&never).contains("nothing to watch") && stderr(&never).contains("immut deploy"),
        "{}",
        stderr(&never)
    );
    let bad = case.run(&["watch", "--once", "--set", "watch.unmanaged=\"nuke\""]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("watch.unmanaged") && stderr(&bad).contains("\"terminate\""), "{}", stderr(&bad));
    std::fs::write(&spec, format!("{text}{}", WATCH.replace("max_repairs = 2", "max_repairs = 0"))).unwrap();
    let zero = case.run(&["watch", "--once"]);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(stderr(&zero).contains("immut.toml:") && stderr(&zero).contains("watch.max_repairs"), "{}", stderr(&zero));
    std::fs::write(&spec, format!("{text}{WATCH}")).unwrap();
    let flag = case.run(&["watch", "--interval", "0s"]);
    assert_eq!(flag.status.code(), Some(2), "{}", stderr(&flag));

    assert!(case.run(&["deploy", "--json"]).status.success());
    let clean = case.run(&["watch", "--once", "--output", "lines"]);
    assert_eq!(clean.status.code(), Some(0), "{}{}", support::stdout(&clean), stderr(&clean));
    assert!(support::stdout(&clean).contains("0 findings open"), "{}", support::stdout(&clean));
    let (_, pids) = processes_from(&case.local_dir()).into_iter().next().unwrap();
    signal(&pids, nix::sys::signal::Signal::SIGKILL);
    let repaired = case.run(&["watch", "--once", "--output", "lines"]);
    let out = support::stdout(&repaired);
    assert_eq!(repaired.status.code(), Some(0), "{out}{}", stderr(&repaired));
    assert!(out.contains("FINDING  missing_capacity") && out.contains("repaired watch-"), "{out}");
    assert_eq!(processes_from(&case.local_dir()).len(), 2);
    assert_eq!(case.balancer().await.serving().await.unwrap().len(), 2);
}
