//! Deploys an executable with the local provider and prints the engine's events as JSON lines.
//!
//! ```text
//! immut-local-deploy --state-dir DIR --artifact PATH --version 2.0.0
//!     [--service web] [--desired 3] [--strategy blue-green|rolling]
//!     [--previous-version 1.0.0] [--deployment-id ID] [--fail-health]
//! immut-local-deploy --state-dir DIR --resume [--service web] [--desired 3] [--strategy ...]
//! ```
//!
//! Instances are real processes recorded in DIR; the balancer's serving set and the journal
//! (`DIR/journal`) live there too, so `--resume` continues a deployment whose process died.
//! `--kill-at-record N` is fault injection for crash tests: the process SIGKILLs itself just
//! before writing its Nth journal record (from 0). Exits 0 when the deployment succeeds (or
//! there is nothing to resume), 1 when it rolls back or fails, 2 on bad arguments.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut_core::health::HttpProbe;
use immut_core::journal::{FileJournal, Journal, JournalRead, JournalRecord, LockGuard};
use immut_core::semver::Version;
use immut_core::{BaselineSpec, BlueGreen, Deployer, DeploymentId, LaunchSpec, Release, Rolling};
use immut_local::{LocalProvider, sample};

const USAGE: &str = "usage: immut-local-deploy --state-dir DIR (--artifact PATH --version VERSION | --resume) [--service NAME] [--desired N] [--strategy blue-green|rolling] [--previous-version VERSION] [--deployment-id ID] [--fail-health] [--kill-at-record N]";

/// Fault injection: SIGKILLs this process just before the Nth record.
#[derive(Debug)]
struct KillAtRecord {
    inner: FileJournal,
    at: usize,
    seen: AtomicUsize,
}

impl Journal for KillAtRecord {
    fn append(&self, service: &str, record: &JournalRecord) -> immut_core::Result<()> {
        if self.seen.fetch_add(1, Ordering::SeqCst) == self.at {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        self.inner.append(service, record)
    }
    fn read(&self, service: &str) -> immut_core::Result<JournalRead> {
        self.inner.read(service)
    }
    fn lock(&self, service: &str, deployment: &DeploymentId) -> immut_core::Result<LockGuard> {
        self.inner.lock(service, deployment)
    }
    fn holder(&self, service: &str) -> immut_core::Result<Option<DeploymentId>> {
        self.inner.holder(service)
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    while let Some(flag) = it.next() {
        let key = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        if key == "fail-health" || key == "resume" {
            out.insert(key.to_owned(), "1".to_owned());
            continue;
        }
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.insert(key.to_owned(), value);
    }
    let required: &[&str] =
        if out.contains_key("resume") { &["state-dir"] } else { &["state-dir", "artifact", "version"] };
    for required in required {
        if !out.contains_key(*required) {
            return Err(format!("--{required} is required"));
        }
    }
    Ok(out)
}

async fn run(args: HashMap<String, String>) -> Result<bool, Box<dyn std::error::Error>> {
    let version = |key: &str| -> Result<Option<Version>, String> {
        args.get(key).map(|v| Version::parse(v).map_err(|e| format!("--{key} {v:?}: {e}"))).transpose()
    };
    let service = args.get("service").map_or("web", String::as_str);
    let desired: usize =
        args.get("desired").map_or(Ok(3), |d| d.parse().map_err(|_| format!("--desired {d:?} is not a count")))?;
    let provider = LocalProvider::builder().state_dir(&args["state-dir"]).build()?;
    let balancer = provider.balancer().build().await?;
    let release = |version: Version, healthy: bool| -> immut_core::Result<Release> {
        let artifact = immut_local::artifact("sample", version, &args["artifact"])?;
        let mut spec = LaunchSpec::default();
        if !healthy {
            spec.env.insert(sample::FAIL_HEALTH.into(), "1".into());
        }
        Release::new(service, &artifact, &BaselineSpec::new("sample", Version::new(1, 0, 0), spec))
    };
    let journal = FileJournal::open(std::path::Path::new(&args["state-dir"]).join("journal"))?;
    let journal: Arc<dyn Journal> = match args.get("kill-at-record") {
        Some(n) => Arc::new(KillAtRecord { inner: journal, at: n.parse()?, seen: AtomicUsize::new(0) }),
        None => Arc::new(journal),
    };
    let builder = Deployer::builder()
        .provider(provider)
        .traffic(balancer)
        .health(HttpProbe::with_timeout("/healthz", Duration::from_millis(500)))
        .desired(desired)
        .min_ready(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(20))
        .journal_arc(journal);
    let deployer = match args.get("strategy").map_or("blue-green", String::as_str) {
        "blue-green" => builder.strategy(BlueGreen::new()),
        "rolling" => builder.strategy(Rolling::new()),
        other => return Err(format!("--strategy {other:?}: use blue-green or rolling").into()),
    }
    .build()?;
    let deployment = if args.contains_key("resume") {
        match deployer.resume(service)? {
            Some(d) => d,
            None => {
                eprintln!("nothing to resume for service {service}");
                return Ok(true);
            }
        }
    } else {
        let target = release(version("version")?.expect("required"), !args.contains_key("fail-health"))?;
        let mut deployment = deployer.deploy(target);
        if let Some(previous) = version("previous-version")? {
            deployment = deployment.with_previous(release(previous, true)?);
        }
        if let Some(id) = args.get("deployment-id") {
            deployment = deployment.with_id(DeploymentId::new(id));
        }
        deployment
    };
    let outcome =
        deployment.run_with(|event| println!("{}", serde_json::to_string(event).expect("events serialize"))).await;
    Ok(outcome.succeeded())
}
