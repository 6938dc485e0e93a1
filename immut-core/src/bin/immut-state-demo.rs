//! Deployers on a shared state URL, over a small cloud kept in a directory: the multi-process
//! tests of the state store run it, and `takeover` shows a takeover from start to end.
//!
//! ```text
//! immut-state-demo takeover [--state URL]
//!     two deployers, as on two machines, share one state URL: the second is refused while the
//!     first deploys; the first is paused (SIGSTOP) mid-deployment; the second takes over once
//!     the lease has run out and finishes; the first wakes (SIGCONT) and stops without a call.
//! immut-state-demo deploy --state URL --cloud DIR --version V [--previous-version V]
//!     [--deployment-id ID] [--desired N] [--bake-ms N] [--host NAME]
//!     [--lease-ms N] [--skew-ms N] [--budget-ms N]
//! immut-state-demo resume --state URL --cloud DIR [--wait-ms N] [same options]
//! immut-state-demo ledger-append --state URL --count N
//! ```
//!
//! The state URL is a directory or `s3://bucket/prefix` (with the `s3` feature, configured
//! from `AWS_*`). The cloud is a directory: one file per instance, a marker per serving and per
//! terminated instance, and `calls.log`, where every mutating call is counted (one JSON line
//! with the caller's pid) as the provider receives it. Events go to stdout as JSON lines.
//! Exit codes: 0 succeeded (or nothing to resume), 1 rolled back or failed, 2 bad input or an
//! error, 3 refused (the lease is held by another deployer, or was lost).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use immut_core::journal::StoreJournal;
use immut_core::ledger::{Ledger, LedgerKey};
use immut_core::model::{LabelCharset, Observed};
use immut_core::semver::Version;
use immut_core::state::{LeaseSettings, StateStore};
use immut_core::{
    ArtifactSpec, BaselineSpec, BlueGreen, Capabilities, Deployer, DeploymentId, Error, ErrorKind, Instance,
    InstanceId, InstanceState, LaunchRequest, LaunchSpec, Phase, Provenance, Provider, ProviderStatus, Query, Release,
    Traffic,
};
use serde::{Deserialize, Serialize};

const USAGE: &str = "usage: immut-state-demo (takeover [--state URL] | deploy --state URL --cloud DIR --version V [--previous-version V] [--deployment-id ID] | resume --state URL --cloud DIR [--wait-ms N] | ledger-append --state URL --count N) [--desired N] [--bake-ms N] [--host NAME] [--lease-ms N] [--skew-ms N] [--budget-ms N]";

/// The ledger key when IMMUT_LEDGER_KEY is not set: fine for a demo, never for real use.
const DEMO_LEDGER_KEY: &str = "immut-state-demo-ledger-key";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let flags = match parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        match command.as_str() {
            "deploy" | "resume" => deploy(&command, &flags).await,
            "ledger-append" => ledger_append(&flags),
            "takeover" => takeover(&flags).await,
            other => {
                Err(Error::invalid("command", format!("{other:?}; use takeover, deploy, resume or ledger-append")))
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.kind() == ErrorKind::Conflict { 3 } else { 2 })
        }
    }
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    while let Some(flag) = it.next() {
        let key = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

fn flag<'a>(flags: &'a HashMap<String, String>, key: &str) -> immut_core::Result<&'a str> {
    flags.get(key).map(String::as_str).ok_or_else(|| Error::invalid(key, format!("is required: pass --{key}")))
}

fn number(flags: &HashMap<String, String>, key: &str, default: u64) -> immut_core::Result<u64> {
    flags.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| Error::invalid(key, format!("{v:?} is not a number"))))
}

fn store(flags: &HashMap<String, String>) -> immut_core::Result<StateStore> {
    let store = StateStore::open(flag(flags, "state")?)?;
    Ok(match flags.get("host") {
        Some(host) => store.with_host(host),
        None => store,
    })
}

fn ledger_key() -> immut_core::Result<LedgerKey> {
    match std::env::var_os("IMMUT_LEDGER_KEY") {
        Some(_) => LedgerKey::from_env("IMMUT_LEDGER_KEY"),
        None => LedgerKey::new(DEMO_LEDGER_KEY),
    }
}

fn release(version: &str) -> immut_core::Result<Release> {
    let version = Version::parse(version).map_err(|e| Error::invalid("version", format!("{version:?}: {e}")))?;
    let artifact = ArtifactSpec::new("web", version.clone(), format!("img-{version}"));
    Release::new("web", &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()))
}

async fn deploy(command: &str, flags: &HashMap<String, String>) -> immut_core::Result<u8> {
    let store = store(flags)?;
    let settings = LeaseSettings::millis(
        number(flags, "lease-ms", 30_000)?,
        number(flags, "skew-ms", 5_000)?,
        number(flags, "budget-ms", 10_000)?,
    );
    let journal = StoreJournal::new(store.clone()).with_lease(settings)?;
    let cloud = DirCloud::open(Path::new(flag(flags, "cloud")?))?;
    let deployer = Deployer::builder()
        .provider(cloud.clone())
        .traffic(cloud)
        .health(ProviderStatus)
        .strategy(BlueGreen::new().bake(Duration::from_millis(number(flags, "bake-ms", 1000)?)))
        .desired(number(flags, "desired", 3)? as usize)
        .min_ready(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .progress_deadline(Duration::from_secs(60))
        .journal(journal)
        .ledger(Arc::new(Ledger::on_store(store, ledger_key()?)))
        .build()?;
    let deployment = if command == "resume" {
        let wait = Duration::from_millis(number(flags, "wait-ms", 0)?);
        if !wait.is_zero() {
            // Say once why it waits, naming the holder.
            if let Err(e) = deployer.resume("web").map(drop)
                && e.kind() == ErrorKind::Conflict
            {
                eprintln!("held: {e}; waiting up to {wait:?}");
            }
        }
        match deployer.resume_waiting("web", Duration::from_millis(50), wait).await? {
            Some(d) => d,
            None => {
                eprintln!("nothing to resume for service web");
                return Ok(0);
            }
        }
    } else {
        let mut d = deployer.deploy(release(flag(flags, "version")?)?);
        if let Some(previous) = flags.get("previous-version") {
            d = d.with_previous(release(previous)?);
        }
        if let Some(id) = flags.get("deployment-id") {
            d = d.with_id(DeploymentId::new(id));
        }
        d
    };
    let outcome = deployment
        .run_with(|event| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string(event).expect("events serialize"));
            let _ = out.flush();
        })
        .await;
    eprintln!("{}", outcome.summary());
    Ok(match outcome.phase {
        Phase::Succeeded => 0,
        Phase::Refused { .. } => 3,
        _ => 1,
    })
}

fn ledger_append(flags: &HashMap<String, String>) -> immut_core::Result<u8> {
    let ledger = Ledger::on_store(store(flags)?, ledger_key()?);
    let count = number(flags, "count", 10)?;
    let release = release("1.0.0")?;
    for i in 0..count {
        let outcome = immut_core::Outcome {
            deployment: DeploymentId::new(format!("p{}-{i}", std::process::id())),
            service: "web".into(),
            release: release.id().clone(),
            previous: None,
            phase: Phase::Succeeded,
            elapsed: Duration::ZERO,
            steps: 1,
            waves: 1,
            serving: Vec::new(),
            calls: Default::default(),
        };
        ledger.record(
            &outcome,
            &release,
            "blue_green",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
        )?;
    }
    println!("appended {count}");
    Ok(0)
}

/// An instance as the directory cloud keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: InstanceId,
    image: String,
    labels: BTreeMap<String, String>,
}

/// A cloud in a directory, shared by every process that opens it.
#[derive(Debug, Clone)]
struct DirCloud {
    root: PathBuf,
    counter: Arc<AtomicU64>,
}

impl DirCloud {
    fn open(root: &Path) -> immut_core::Result<DirCloud> {
        for sub in ["instances", "serving", "terminated"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(|e| Error::invalid("cloud", format!("cannot create {}: {e}", root.display())))?;
        }
        Ok(DirCloud { root: root.to_owned(), counter: Arc::default() })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Unavailable, format!("cloud {}: {e}", self.root.display()))
    }

    /// Counts a mutating call as it arrives, with the caller's pid.
    fn count(&self, call: &str, ids: &[InstanceId]) -> immut_core::Result<()> {
        let line = serde_json::json!({ "pid": std::process::id(), "call": call, "ids": ids }).to_string() + "\n";
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("calls.log"))
            .map_err(|e| self.io(e))?;
        log.write_all(line.as_bytes()).map_err(|e| self.io(e))
    }

    fn marked(&self, dir: &str, id: &InstanceId) -> bool {
        self.root.join(dir).join(id.as_str()).exists()
    }

    fn all(&self) -> immut_core::Result<Vec<Instance>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("instances")).map_err(|e| self.io(e))? {
            let path = entry.map_err(|e| self.io(e))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| self.io(e))?;
            let record: Record = serde_json::from_slice(&bytes)
                .map_err(|e| Error::new(ErrorKind::Other, format!("cloud {}: {e}", path.display())))?;
            let state =
                if self.marked("terminated", &record.id) { InstanceState::Terminated } else { InstanceState::Running };
            out.push(Instance {
                provenance: Provenance::from_labels(&record.labels, LabelCharset::Any).map(Arc::new),
                id: record.id,
                state,
                labels: Arc::new(record.labels),
                observed: Arc::new(Observed { image: Some(record.image), ..Observed::default() }),
                address: None,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait]
impl Provider for DirCloud {
    fn name(&self) -> &str {
        "dir"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn launch(&self, request: &LaunchRequest) -> immut_core::Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let mut ids = Vec::with_capacity(request.count);
        for _ in 0..request.count {
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            ids.push(InstanceId::new(format!("i-{}-{n}-{:x}", std::process::id(), nanos % 0xffff_ffff)));
        }
        self.count("launch", &ids)?;
        let labels = request.labels(LabelCharset::Any);
        for id in &ids {
            let record =
                Record { id: id.clone(), image: request.release.artifact().image.clone(), labels: labels.clone() };
            std::fs::write(
                self.root.join("instances").join(format!("{id}.json")),
                serde_json::to_vec(&record).expect("records serialize"),
            )
            .map_err(|e| self.io(e))?;
        }
        let all = self.all()?;
        Ok(all.into_iter().filter(|i| ids.contains(&i.id)).collect())
    }

    async fn describe(&self, query: &Query) -> immut_core::Result<Vec<Instance>> {
        Ok(self.all()?.into_iter().filter(|i| query.matches(i)).collect())
    }

    async fn terminate(&self, ids: &[InstanceId]) -> immut_core::Result<()> {
        self.count("terminate", ids)?;
        for id in ids {
            let _ = std::fs::remove_file(self.root.join("serving").join(id.as_str()));
            std::fs::write(self.root.join("terminated").join(id.as_str()), b"").map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Traffic for DirCloud {
    async fn serving(&self) -> immut_core::Result<Vec<InstanceId>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("serving")).map_err(|e| self.io(e))? {
            let name = entry.map_err(|e| self.io(e))?.file_name().to_string_lossy().into_owned();
            let id = InstanceId::new(name);
            if !self.marked("terminated", &id) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn attach(&self, instances: &[Instance]) -> immut_core::Result<()> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        self.count("attach", &ids)?;
        for id in &ids {
            if !self.root.join("instances").join(format!("{id}.json")).exists() {
                return Err(Error::new(ErrorKind::NotFound, format!("no instance {id}")));
            }
            std::fs::write(self.root.join("serving").join(id.as_str()), b"").map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    async fn detach(&self, ids: &[InstanceId]) -> immut_core::Result<()> {
        self.count("detach", ids)?;
        for id in ids {
            let _ = std::fs::remove_file(self.root.join("serving").join(id.as_str()));
        }
        Ok(())
    }
}

/// The demo: two deployers on "two machines" share one state URL.
async fn takeover(flags: &HashMap<String, String>) -> immut_core::Result<u8> {
    let scratch = std::env::temp_dir().join(format!("immut-takeover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let state = flags.get("state").cloned().unwrap_or_else(|| scratch.join("state").display().to_string());
    let cloud = scratch.join("cloud");
    let exe = std::env::current_exe().map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
    let cloud_dir = cloud.display().to_string();
    // Each deployer runs as if on a machine of its own (--host), so only the lease's expiry,
    // never a pid check, frees the service.
    let args = |command: &str, host: &str, more: &[&str]| -> Vec<String> {
        let common = [
            command,
            "--state",
            &state,
            "--cloud",
            &cloud_dir,
            "--host",
            host,
            "--lease-ms",
            "1500",
            "--skew-ms",
            "300",
            "--budget-ms",
            "300",
            "--bake-ms",
            "2500",
        ];
        common.iter().chain(more).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        std::process::Command::new(&exe)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))
    };
    println!("== state at {state}, cloud at {}", cloud.display());
    println!("== machine-a deploys web 1.0.0");
    let first = run(args("deploy", "machine-a", &["--version", "1.0.0", "--bake-ms", "0"]))?
        .wait_with_output()
        .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
    report("machine-a", &first.stderr);

    println!("== machine-a deploys web 2.0.0 (blue/green, 2.5 s bake)");
    let mut a = run(args(
        "deploy",
        "machine-a",
        &["--version", "2.0.0", "--previous-version", "1.0.0", "--deployment-id", "d-takeover"],
    ))?;
    let a_pid = a.id();
    let mut a_out = std::io::BufReader::new(a.stdout.take().expect("piped"));
    wait_for_event(&mut a_out, "switched")?;
    println!("   machine-a switched traffic to 2.0.0 and bakes");

    println!("== machine-b tries to deploy web 2.0.0 meanwhile");
    let refused = run(args("deploy", "machine-b", &["--version", "2.0.0"]))?
        .wait_with_output()
        .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
    println!("   refused (exit {}): {}", refused.status.code().unwrap_or(-1), last_line(&refused.stderr));

    signal("STOP", a_pid)?;
    let calls_at_stop = calls_by(&cloud, a_pid);
    println!(
        "== machine-a is paused (SIGSTOP) mid-bake, after {calls_at_stop} calls; machine-b resumes, waiting out the lease"
    );
    let started = std::time::Instant::now();
    let b = run(args("resume", "machine-b", &["--wait-ms", "20000"]))?
        .wait_with_output()
        .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
    println!("   machine-b took over after {:.1} s and {}", started.elapsed().as_secs_f64(), last_line(&b.stderr));

    signal("CONT", a_pid)?;
    println!("== machine-a wakes (SIGCONT)");
    let a_done = a.wait_with_output().map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
    let after = calls_by(&cloud, a_pid) - calls_at_stop;
    println!("   machine-a exited {} with: {}", a_done.status.code().unwrap_or(-1), last_line(&a_done.stderr));
    println!("   mutating calls machine-a made after it woke, counted by the cloud: {after}");

    let view = DirCloud::open(&cloud)?;
    let live = view.describe(&Query::service("web")).await?;
    let v2 = live
        .iter()
        .filter(|i| i.provenance.as_ref().is_some_and(|p| p.artifact_version == Version::new(2, 0, 0)))
        .count();
    let serving = view.serving().await?.len();
    let verified = Ledger::on_store(StateStore::open(&state)?, ledger_key()?).verify()?;
    println!("\n== result");
    println!("live instances       {} ({v2} of 2.0.0), {serving} serving", live.len());
    println!(
        "ledger               {} entries, chain {}",
        verified.entries,
        if verified.is_intact() { "intact" } else { "BROKEN" }
    );
    let ok = refused.status.code() == Some(3)
        && b.status.success()
        && a_done.status.code() == Some(3)
        && after == 0
        && live.len() == 3
        && v2 == 3
        && serving == 3
        && verified.is_intact();
    println!("takeover             {}", if ok { "as expected" } else { "NOT as expected" });
    if flags.get("state").is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(if ok { 0 } else { 1 })
}

fn report(who: &str, stderr: &[u8]) {
    println!("   {who}: {}", last_line(stderr));
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().last().unwrap_or("").to_owned()
}

fn wait_for_event(out: &mut impl std::io::BufRead, event: &str) -> immut_core::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Other, format!("the deployer ended before the {event:?} event")));
        }
        if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v["event"] == event) {
            return Ok(());
        }
    }
}

fn signal(name: &str, pid: u32) -> immut_core::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .map_err(|e| Error::new(ErrorKind::Other, format!("kill -{name} {pid}: {e}")))?;
    if !status.success() {
        return Err(Error::new(ErrorKind::Other, format!("kill -{name} {pid} failed")));
    }
    Ok(())
}

/// How many mutating calls the cloud received from `pid`.
fn calls_by(cloud: &Path, pid: u32) -> usize {
    std::fs::read_to_string(cloud.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["pid"] == pid))
        .count()
}
