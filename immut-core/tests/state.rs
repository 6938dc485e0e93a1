//! The state store shared between processes, as between machines: deployer processes (the
//! `immut-state-demo` binary, each with a working directory of its own and playing a machine
//! of its own) share one state URL and one small cloud kept in a directory, which counts
//! every mutating call it receives.
//!
//! Each scenario runs on the local filesystem (the default) and, with the `s3` feature, on S3
//! (moto, started here on 127.0.0.1 and stopped by its pid; each test its own bucket), where a
//! fault proxy also injects `503 SlowDown`, 5xx answers and lost responses.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use immut_core::journal::{Journal, StoreJournal};
use immut_core::ledger::{Ledger, LedgerKey, Tamper};
use immut_core::state::StateStore;
use object_store::{ObjectStoreExt, PutPayload};

const BIN: &str = env!("CARGO_BIN_EXE_immut-state-demo");
/// The demo binary's default ledger key.
const LEDGER_KEY: &str = "immut-state-demo-ledger-key";
/// Leases in milliseconds: 2 s, a 300 ms skew margin, a 400 ms call budget.
const LEASE: [&str; 6] = ["--lease-ms", "2000", "--skew-ms", "300", "--budget-ms", "400"];

/// Where a scenario keeps its state, and how a process reaches it.
struct Env {
    /// The state URL every process gets.
    state: String,
    /// The same store, opened in this process.
    store: StateStore,
    /// The directory cloud.
    cloud: PathBuf,
    /// The environment of every process (the AWS_* variables for S3).
    vars: Vec<(String, String)>,
    /// Each process's own working directory lives under here.
    scratch: PathBuf,
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-state-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn local_env(tag: &str) -> Env {
    let scratch = scratch(tag);
    let state = scratch.join("state");
    Env {
        state: state.display().to_string(),
        store: StateStore::local(&state).unwrap(),
        cloud: scratch.join("cloud"),
        vars: Vec::new(),
        scratch,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

/// A deployer process, stopped (by its pid) when dropped.
struct Proc {
    child: Child,
    events: Receiver<serde_json::Value>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an event of this kind on the process's stdout.
    fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(e) if e["event"] == event => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {event:?} event within 30 s"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the deployer ended before a {event:?} event: {}", self.stderr.lock().unwrap())
                }
            }
        }
    }

    /// Waits for the process to end; its exit code and standard error.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the deployer did not end within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain.
        std::thread::sleep(Duration::from_millis(50));
        (status.code().unwrap_or(-1), self.stderr.lock().unwrap().clone())
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([format!("-{name}"), self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{name} {}", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Env {
    /// Starts `immut-state-demo COMMAND` as the machine `host`, in a working directory of its
    /// own.
    fn start(&self, command: &str, host: &str, extra: &[&str]) -> Proc {
        let cwd = self.scratch.join(format!("cwd-{host}-{}", std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()));
        std::fs::create_dir_all(&cwd).unwrap();
        let mut child = Command::new(BIN)
            .arg(command)
            .args(["--state", &self.state, "--cloud", self.cloud.to_str().unwrap(), "--host", host])
            .args(LEASE)
            .args(extra)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("IMMUT_LEDGER_KEY")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc { child, events, stderr }
    }

    /// Runs a command to its end.
    fn run(&self, command: &str, host: &str, extra: &[&str]) -> (i32, String) {
        self.start(command, host, extra).finish()
    }

    /// Deploys 1.0.0 onto the empty cloud.
    fn first_release(&self) {
        let (code, err) = self.run("deploy", "machine-a", &["--version", "1.0.0", "--bake-ms", "0"]);
        assert_eq!(code, 0, "{err}");
    }

    fn journal(&self) -> StoreJournal {
        StoreJournal::new(self.store.clone())
    }

    fn ledger(&self) -> Ledger {
        Ledger::on_store(self.store.clone(), LedgerKey::new(LEDGER_KEY).unwrap())
    }

    /// The mutating calls the cloud received from `pid`.
    fn calls_by(&self, pid: u32) -> usize {
        std::fs::read_to_string(self.cloud.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["pid"] == pid))
            .count()
    }

    /// Checks the cloud holds exactly 3 live instances, all of `version`, all serving, and
    /// that no more than 3 were ever launched of it: no duplicate, no orphan.
    fn assert_clean_fleet(&self, version: &str) {
        let mut live = Vec::new();
        let mut launched_of_version = 0;
        for entry in std::fs::read_dir(self.cloud.join("instances")).unwrap() {
            let path = entry.unwrap().path();
            let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let id = record["id"].as_str().unwrap().to_owned();
            let of_version = record["labels"]["immut-version"] == version;
            launched_of_version += usize::from(of_version);
            if !self.cloud.join("terminated").join(&id).exists() {
                assert!(of_version, "a live instance of another version is left over: {record}");
                live.push(id);
            }
        }
        live.sort();
        let mut serving: Vec<String> = std::fs::read_dir(self.cloud.join("serving"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        serving.sort();
        assert_eq!(live.len(), 3, "{live:?}");
        assert_eq!(serving, live, "every live instance serves, and nothing else does");
        assert_eq!(launched_of_version, 3, "{version} was launched exactly once per instance: no duplicate");
    }
}

fn second_is_refused_naming_the_holder(env: &Env) {
    env.first_release();
    let a = env.start(
        "deploy",
        "machine-a",
        &["--version", "2.0.0", "--previous-version", "1.0.0", "--deployment-id", "d-first", "--bake-ms", "3000"],
    );
    a.wait_for("switched");
    let (code, err) = env.run("deploy", "machine-b", &["--version", "2.0.0"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("is being deployed by deployment d-first (lease epoch 2, host machine-a"),
        "the refusal names the holder: {err}"
    );
    assert_eq!(env.journal().holder("web").unwrap().map(|d| d.to_string()), Some("d-first".into()));
    let (code, err) = a.finish();
    assert_eq!(code, 0, "{err}");
    // The first released its lease: the service is free at once, with no wait for expiry
    // (no holder is recorded, so the next deployer has nothing to wait out).
    assert_eq!(env.journal().holder("web").unwrap(), None);
    let (code, err) =
        env.run("deploy", "machine-b", &["--version", "3.0.0", "--previous-version", "2.0.0", "--bake-ms", "0"]);
    assert_eq!(code, 0, "{err}");
    env.assert_clean_fleet("3.0.0");
    assert!(env.ledger().verify().unwrap().is_intact());
}

fn killed_is_resumed_after_lease_expiry(env: &Env) {
    env.first_release();
    let a = env.start(
        "deploy",
        "machine-a",
        &["--version", "2.0.0", "--previous-version", "1.0.0", "--deployment-id", "d-killed", "--bake-ms", "1500"],
    );
    a.wait_for("launched");
    a.signal("KILL");
    let killed_at = Instant::now();
    let (code, err) = env.run("resume", "machine-b", &["--wait-ms", "30000"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("held: ") && err.contains("deployment d-killed (lease epoch 2, host machine-a"),
        "the second waited for the first's lease: {err}"
    );
    // Another machine never declares the holder dead: it waited out the lease (2 s) less the
    // renewal interval at most, plus the skew margin.
    assert!(killed_at.elapsed() > Duration::from_millis(1300), "{:?}", killed_at.elapsed());
    env.assert_clean_fleet("2.0.0");
    let entries = env.ledger().entries().unwrap();
    assert!(entries.iter().any(|e| e.deployment.as_str() == "d-killed" && e.succeeded()), "{entries:?}");
    assert!(env.ledger().verify().unwrap().is_intact());
    drop(a);
}

fn paused_is_fenced(env: &Env) {
    env.first_release();
    let a = env.start(
        "deploy",
        "machine-a",
        &["--version", "2.0.0", "--previous-version", "1.0.0", "--deployment-id", "d-paused", "--bake-ms", "4000"],
    );
    a.wait_for("switched");
    a.signal("STOP");
    let calls_before = env.calls_by(a.pid());
    assert!(calls_before >= 2, "it launched and switched: {calls_before}");
    let (code, err) = env.run("resume", "machine-b", &["--wait-ms", "30000"]);
    assert_eq!(code, 0, "{err}");
    env.assert_clean_fleet("2.0.0");
    let records_before = env.journal().stored("web").unwrap().len();

    a.signal("CONT");
    let pid = a.pid();
    let (code, err) = a.finish();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("deployment d-paused lost its lease on service web")
            && err.contains("it stopped without changing anything more")
            && err.contains("machine-b"),
        "{err}"
    );
    assert_eq!(env.calls_by(pid), calls_before, "the provider received no call from it after it woke");
    assert_eq!(env.journal().stored("web").unwrap().len(), records_before, "and the journal no record");
    env.assert_clean_fleet("2.0.0");
    let entries = env.ledger().entries().unwrap();
    assert_eq!(entries.iter().filter(|e| e.deployment.as_str() == "d-paused").count(), 1, "one ledger entry, by B");
}

fn ledger_appends_from_four_processes(env: &Env, each: usize) {
    let procs: Vec<Proc> =
        (0..4).map(|i| env.start("ledger-append", &format!("machine-{i}"), &["--count", &each.to_string()])).collect();
    for p in procs {
        let (code, err) = p.finish();
        assert_eq!(code, 0, "{err}");
    }
    let ledger = env.ledger();
    let v = ledger.verify().unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 4 * each);
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64), "unique and gapless");
    let distinct: BTreeSet<_> = entries.iter().map(|e| e.deployment.clone()).collect();
    assert_eq!(distinct.len(), 4 * each, "every append landed exactly once");
}

/// Edits, deletes, reorders, re-chains without the key and cuts the tail of a ledger's
/// objects through the object store itself, checking each is caught.
async fn tampering_is_detected(store: &StateStore) {
    let key = LedgerKey::new("tamper-test-key-0123456789abcdef").unwrap();
    let ledger = Ledger::on_store(store.clone(), key.clone());
    let release = immut_core::Release::new(
        "web",
        &immut_core::ArtifactSpec::new("web", immut_core::semver::Version::new(1, 0, 0), "img"),
        &immut_core::BaselineSpec::new("b", immut_core::semver::Version::new(1, 0, 0), Default::default()),
    )
    .unwrap();
    let record = |i: usize| {
        let outcome = immut_core::Outcome {
            deployment: immut_core::DeploymentId::new(format!("d{i}")),
            service: "web".into(),
            release: release.id().clone(),
            previous: None,
            phase: immut_core::Phase::Succeeded,
            elapsed: Duration::ZERO,
            steps: 1,
            waves: 1,
            serving: Vec::new(),
            calls: Default::default(),
        };
        let (ledger, release) = (Ledger::on_store(store.clone(), key.clone()), release.clone());
        move || ledger.record(&outcome, &release, "rolling", 1).map(drop)
    };
    for i in 0..4 {
        tokio::task::spawn_blocking(record(i)).await.unwrap().unwrap();
    }
    let verify = || {
        let ledger = Ledger::on_store(store.clone(), key.clone());
        async move { tokio::task::spawn_blocking(move || ledger.verify().unwrap()).await.unwrap() }
    };
    assert!(verify().await.is_intact());
    let (os, prefix) = store.object_store();
    let path = |rel: &str| {
        let mut parts: Vec<String> = prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(rel.split('/').map(str::to_owned));
        object_store::path::Path::from_iter(parts)
    };
    let entry = |n: u64| path(&format!("ledger/entries/{n:020}.json"));
    let read = |p: object_store::path::Path| {
        let os = os.clone();
        async move {
            serde_json::from_slice::<serde_json::Value>(&os.get(&p).await.unwrap().bytes().await.unwrap()).unwrap()
        }
    };
    let write = |p: object_store::path::Path, v: serde_json::Value| {
        let os = os.clone();
        async move { os.put(&p, PutPayload::from(v.to_string().into_bytes())).await.unwrap() }
    };
    let originals: Vec<serde_json::Value> = {
        let mut out = Vec::new();
        for n in 0..4 {
            out.push(read(entry(n)).await);
        }
        out
    };
    let restore = || async {
        for (n, v) in originals.iter().enumerate() {
            write(entry(n as u64), v.clone()).await;
        }
    };

    // Edit.
    let mut edited = originals[1].clone();
    edited["entry"]["strategy"] = "blue_green".into();
    write(entry(1), edited.clone()).await;
    assert_eq!(verify().await.problems, vec![Tamper::Edited { seq: 1 }]);
    // Re-chain without the key: recompute entry 1's hash and relink entry 2, unkeyed.
    let sha = |v: &serde_json::Value| -> String {
        let mut e: immut_core::ledger::LedgerEntry = serde_json::from_value(v.clone()).unwrap();
        e.hash = String::new();
        use sha2::Digest;
        sha2::Sha256::digest(serde_json::to_vec(&e).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    edited["entry"]["hash"] = sha(&edited["entry"]).into();
    let mut relinked = originals[2].clone();
    relinked["entry"]["prev_hash"] = edited["entry"]["hash"].clone();
    relinked["entry"]["hash"] = sha(&relinked["entry"]).into();
    write(entry(1), edited).await;
    write(entry(2), relinked).await;
    let v = verify().await;
    assert_eq!(v.first_broken, Some(1), "{:?}", v.problems);
    assert!(v.problems.contains(&Tamper::Edited { seq: 1 }), "{:?}", v.problems);
    restore().await;
    assert!(verify().await.is_intact());
    // Reorder.
    write(entry(1), originals[2].clone()).await;
    write(entry(2), originals[1].clone()).await;
    assert_eq!(verify().await.problems, vec![Tamper::Reordered { seq: 1 }, Tamper::Reordered { seq: 2 }]);
    restore().await;
    // Delete.
    os.delete(&entry(1)).await.unwrap();
    assert_eq!(verify().await.problems, vec![Tamper::Deleted { after: Some(0) }]);
    restore().await;
    // Truncate: cut the last two entries; the signed head of entry 3 remains.
    os.delete(&entry(3)).await.unwrap();
    os.delete(&entry(2)).await.unwrap();
    let v = verify().await;
    assert_eq!(v.problems, vec![Tamper::Truncated { after: Some(1), head: 3 }]);
    assert_eq!(v.first_broken, Some(2));
    restore().await;
    assert!(verify().await.is_intact());
    let _ = ledger;
}

#[test]
fn local_a_second_deployer_is_refused_naming_the_holder() {
    second_is_refused_naming_the_holder(&local_env("refused"));
}

#[test]
fn local_a_killed_deployer_is_resumed_from_another_machine_after_its_lease_expires() {
    killed_is_resumed_after_lease_expiry(&local_env("killed"));
}

#[test]
fn local_a_paused_deployer_that_lost_its_lease_makes_no_call() {
    paused_is_fenced(&local_env("paused"));
}

#[test]
fn local_four_processes_append_to_one_ledger() {
    ledger_appends_from_four_processes(&local_env("ledger"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tampering_with_ledger_objects_is_detected() {
    tampering_is_detected(&local_env("tamper").store).await;
}

#[test]
fn the_takeover_demo_shows_the_takeover() {
    let output = Command::new(BIN).arg("takeover").env_remove("IMMUT_LEDGER_KEY").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "refused (exit 3)",
        "is being deployed by deployment d-takeover",
        "lost its lease",
        "after it woke, counted by the cloud: 0",
        "takeover             as expected",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
}

#[cfg(feature = "s3")]
mod s3 {
    //! The same scenarios on S3 (moto), and S3's own faults through a proxy.

    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::OnceLock;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use immut_core::journal::{JournalEntry, JournalRecord};
    use immut_core::test_tools::Moto;

    use object_store::ObjectStore;

    use super::*;

    /// One moto per test process, stopped by its pid (through `test_tools`' watchdog) when
    /// the process ends. Tests share it; each has a bucket of its own, so nothing is reset.
    fn moto() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| immut_core::test_tools::start_moto().unwrap_or_else(|e| panic!("{e}")))
    }

    fn vars(moto: &Moto) -> Vec<(String, String)> {
        moto.aws_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// A bucket of its own on moto, and the store on it through `endpoint` (moto, or a proxy).
    fn bucket_store(tag: &str, endpoint: &str) -> (String, StateStore) {
        let bucket = format!("immut-{tag}-{}", std::process::id());
        create_bucket(&bucket);
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout: Duration::from_secs(30),
            })
            .build()
            .unwrap();
        let url = format!("s3://{bucket}/state");
        (url.clone(), StateStore::from_object_store(Arc::new(s3), "state", url))
    }

    fn s3_env(tag: &str) -> Env {
        let (state, store) = bucket_store(tag, moto().endpoint());
        let scratch = scratch(&format!("s3-{tag}"));
        Env { state, store, cloud: scratch.join("cloud"), vars: vars(moto()), scratch }
    }

    fn create_bucket(bucket: &str) {
        moto().create_bucket(bucket).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn s3_a_second_deployer_is_refused_naming_the_holder() {
        second_is_refused_naming_the_holder(&s3_env("refused"));
    }

    #[test]
    fn s3_a_killed_deployer_is_resumed_from_another_machine_after_its_lease_expires() {
        killed_is_resumed_after_lease_expiry(&s3_env("killed"));
    }

    #[test]
    fn s3_a_paused_deployer_that_lost_its_lease_makes_no_call() {
        paused_is_fenced(&s3_env("paused"));
    }

    #[test]
    fn s3_four_processes_append_200_entries_to_one_ledger() {
        ledger_appends_from_four_processes(&s3_env("ledger"), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_tampering_with_ledger_objects_is_detected() {
        let env = tokio::task::spawn_blocking(|| s3_env("tamper")).await.unwrap();
        tampering_is_detected(&env.store).await;
    }

    #[test]
    fn s3_conditional_writes_are_create_only() {
        // The property everything rests on, on moto's S3: a create on an existing key fails.
        let (_, store) = bucket_store("create-only", moto().endpoint());
        let (os, _) = store.object_store();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let p = object_store::path::Path::from("k");
            let create = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
            os.put_opts(&p, PutPayload::from_static(b"a"), create.clone()).await.unwrap();
            let again = os.put_opts(&p, PutPayload::from_static(b"b"), create).await.unwrap_err();
            assert!(matches!(again, object_store::Error::AlreadyExists { .. }), "{again:?}");
        });
    }

    /// What the proxy does to the next PUTs.
    #[derive(Debug, Default, Clone)]
    struct Plan {
        /// Answer this many PUTs with `503 SlowDown`, without forwarding them.
        slow_down: usize,
        /// Then this many with `500 InternalError`.
        server_errors: usize,
        /// Then forward this many, but answer `503` instead of the real answer: a create that
        /// was applied, whose answer was lost.
        lose_answers: usize,
    }

    #[derive(Clone)]
    struct FaultProxy {
        endpoint: String,
        plan: Arc<Mutex<Plan>>,
        injected: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    }

    impl FaultProxy {
        async fn start(upstream: &str) -> FaultProxy {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let proxy =
                FaultProxy { endpoint: format!("http://{addr}"), plan: Arc::default(), injected: Arc::default() };
            let (state, upstream) = (proxy.clone(), upstream.to_owned());
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let (state, upstream, client) = (state.clone(), upstream.clone(), client.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (state, upstream, client) = (state.clone(), upstream.clone(), client.clone());
                            async move { Ok::<_, Infallible>(state.handle(req, &upstream, &client).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            proxy
        }

        fn injected(&self) -> BTreeMap<&'static str, usize> {
            self.injected.lock().unwrap().clone()
        }

        async fn handle(
            &self,
            req: Request<Incoming>,
            upstream: &str,
            client: &reqwest::Client,
        ) -> Response<Full<Bytes>> {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let fault = (parts.method == hyper::Method::PUT).then(|| {
                let mut plan = self.plan.lock().unwrap();
                let pick = |n: &mut usize, kind: &'static str| {
                    (*n > 0).then(|| {
                        *n -= 1;
                        kind
                    })
                };
                pick(&mut plan.slow_down, "slow_down")
                    .or_else(|| pick(&mut plan.server_errors, "server_error"))
                    .or_else(|| pick(&mut plan.lose_answers, "lost_answer"))
            });
            if let Some(kind) = fault.flatten() {
                *self.injected.lock().unwrap().entry(kind).or_default() += 1;
                if kind == "lost_answer" {
                    let _ = forward(client, upstream, &parts, body).await;
                }
                let (status, code) = match kind {
                    "server_error" => (500, "InternalError"),
                    _ => (503, "SlowDown"),
                };
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message><RequestId>fault</RequestId></Error>"
                );
                let mut response = Response::new(Full::new(Bytes::from(xml)));
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                return response;
            }
            forward(client, upstream, &parts, body).await
        }
    }

    async fn forward(
        client: &reqwest::Client,
        upstream: &str,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let mut request = client.request(parts.method.as_str().parse().unwrap(), url).body(body);
        for (name, value) in &parts.headers {
            if name != "content-length" {
                request = request.header(name.as_str(), value.as_bytes());
            }
        }
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let bytes = r.bytes().await.unwrap_or_default();
                let mut response = Response::new(Full::new(bytes));
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                for (name, value) in &headers {
                    if name != "transfer-encoding"
                        && (name != "content-length" || parts.method == hyper::Method::HEAD)
                        && let (Ok(n), Ok(v)) = (
                            name.as_str().parse::<hyper::header::HeaderName>(),
                            hyper::header::HeaderValue::from_bytes(value.as_bytes()),
                        )
                    {
                        response.headers_mut().insert(n, v);
                    }
                }
                response
            }
            Err(e) => {
                let mut response = Response::new(Full::new(Bytes::from(format!("proxy: {e}"))));
                *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                response
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_slow_down_5xx_and_lost_answers_are_retried_and_nothing_is_lost() {
        let proxy = FaultProxy::start(moto().endpoint()).await;
        let endpoint = proxy.endpoint.clone();
        let (_, store) = tokio::task::spawn_blocking(move || bucket_store("faults", &endpoint)).await.unwrap();
        let journal = StoreJournal::new(store.clone());
        let key = LedgerKey::new("fault-test-key-0123456789abcdef").unwrap();
        let record = |i: usize| JournalRecord {
            deployment: immut_core::DeploymentId::new("d-faults"),
            at_ms: i as u64,
            entry: JournalEntry::GatePassed { gate: format!("g{i}") },
        };
        let plans = [
            Plan { slow_down: 3, ..Plan::default() },
            Plan { server_errors: 2, ..Plan::default() },
            Plan { lose_answers: 1, ..Plan::default() },
            Plan { slow_down: 1, server_errors: 1, lose_answers: 1 },
        ];
        for (i, plan) in plans.iter().enumerate() {
            *proxy.plan.lock().unwrap() = plan.clone();
            let (j, r) = (journal.clone(), record(i));
            tokio::task::spawn_blocking(move || j.append("web", &r)).await.unwrap().unwrap();
        }
        // The ledger too, with a lost answer on the entry and then on its head.
        for lose in [1, 2] {
            *proxy.plan.lock().unwrap() = Plan { lose_answers: lose, slow_down: 1, ..Plan::default() };
            let ledger = Ledger::on_store(store.clone(), key.clone());
            let release = immut_core::Release::new(
                "web",
                &immut_core::ArtifactSpec::new("web", immut_core::semver::Version::new(1, 0, 0), "img"),
                &immut_core::BaselineSpec::new("b", immut_core::semver::Version::new(1, 0, 0), Default::default()),
            )
            .unwrap();
            let outcome = immut_core::Outcome {
                deployment: immut_core::DeploymentId::new(format!("d{lose}")),
                service: "web".into(),
                release: release.id().clone(),
                previous: None,
                phase: immut_core::Phase::Succeeded,
                elapsed: Duration::ZERO,
                steps: 1,
                waves: 1,
                serving: Vec::new(),
                calls: Default::default(),
            };
            tokio::task::spawn_blocking(move || ledger.record(&outcome, &release, "rolling", 1))
                .await
                .unwrap()
                .unwrap();
        }
        let injected = proxy.injected();
        assert_eq!(injected.get("slow_down"), Some(&6), "{injected:?}");
        assert_eq!(injected.get("server_error"), Some(&3), "{injected:?}");
        assert_eq!(injected.get("lost_answer"), Some(&5), "{injected:?}");
        // Nothing lost, nothing doubled.
        let j = journal.clone();
        let read = tokio::task::spawn_blocking(move || j.read("web")).await.unwrap().unwrap();
        assert_eq!(read.records, (0..4).map(record).collect::<Vec<_>>());
        let ledger = Ledger::on_store(store.clone(), key.clone());
        let v = tokio::task::spawn_blocking(move || ledger.verify()).await.unwrap().unwrap();
        assert!(v.is_intact() && v.entries == 2, "{v:?}");
    }
}
