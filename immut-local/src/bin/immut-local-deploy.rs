//! Deploys an executable with the local provider and prints the engine's events as JSON lines.
//! Run it with `--help` for the flags.
//!
//! Instances are real processes recorded in DIR; the journal (`DIR/journal`) and each
//! service's balancer (`DIR/balancers/<service>/`, a process of its own that keeps serving
//! after this command exits, on the same address every time) live there too, so `--resume`
//! continues a deployment whose process died.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut_core::engine::Event;
use immut_core::health::HttpProbe;
use immut_core::journal::{FileJournal, Journal, JournalRead, JournalRecord, LockGuard};
use immut_core::semver::Version;
use immut_core::{BaselineSpec, BlueGreen, Deployer, DeploymentId, InstanceId, LaunchSpec, Phase, Release, Rolling};
use immut_local::{LocalBalancer, LocalProvider, SpawnCrash, sample};

const HELP: &str = "\
immut-local-deploy: deploys an executable with the local provider and prints the engine's
events as JSON lines on stdout; what needs a person goes to stderr.

USAGE
  immut-local-deploy --state-dir DIR --artifact PATH --version VERSION [OPTIONS]   deploy a release
  immut-local-deploy --state-dir DIR --resume [OPTIONS]       continue an interrupted deployment
  immut-local-deploy --state-dir DIR --status                 what runs: JSON on stdout, a table on stderr
  immut-local-deploy --state-dir DIR --repair                 move unreadable state aside, rebuild the
                                                              records of running instances, then --status
  immut-local-deploy --state-dir DIR --stop-balancer [--service NAME]   stop the service's balancer
  immut-local-deploy --help

OPTIONS
  --service NAME            the service (default web)
  --desired N               how many instances (default 3)
  --strategy S              blue-green (default) or rolling
  --previous-version V      the release a rollback restores (same artifact, at version V)
  --rollback                an explicit rollback: it may go to an older version than the one serving
  --deployment-id ID        the deployment id (default: derived from the release and the time)
  --state URL               where the journal and the lease live: a directory, or s3://bucket/prefix
                            (immut-core's s3 feature, AWS_* environment); default DIR/journal
  --progress-deadline SECS  the longest the engine waits without progress (default 20)
  --drain-timeout SECS      the balancer's drain timeout (default 10; must be below the progress deadline)
  --fail-health             the release's /healthz fails: it never becomes healthy
  --exit-at-start           the release's processes exit as they start: it crash-loops

FAULT INJECTION (crash tests)
  --kill-at-record N        SIGKILL this process just before its Nth journal record (from 0)
  --kill-at-spawn N:WHEN    SIGKILL this process around its Nth process spawn (from 0), WHEN is
                            before (record written ahead, process not started) or after
                            (process started, record not completed)

EXIT STATUS
  0 the deployment succeeded, nothing to resume, or --status found nothing wrong
  1 the deployment rolled back or failed, or --status found unreadable or unrecorded state
  2 bad arguments, or an error before anything changed (corrupt state among them)
  3 refused: another deployment holds the service, or a downgrade without --rollback
";

/// Flags that take no value.
const SWITCHES: &[&str] =
    &["resume", "status", "repair", "stop-balancer", "fail-health", "exit-at-start", "rollback", "help"];
/// Flags that take a value.
const VALUED: &[&str] = &[
    "state-dir",
    "artifact",
    "version",
    "service",
    "desired",
    "strategy",
    "previous-version",
    "deployment-id",
    "state",
    "progress-deadline",
    "drain-timeout",
    "kill-at-record",
    "kill-at-spawn",
];
/// Flags that choose what the command does; at most one.
const MODES: &[&str] = &["resume", "status", "repair", "stop-balancer"];

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

/// How the command ends.
enum Exit {
    Success,
    Failed,
    Refused,
}

fn main() -> std::process::ExitCode {
    // The balancer of a service is this very executable, started again with a hidden flag.
    immut_local::serve_if_requested();
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) if a.contains_key("help") => {
            print!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(a) => a,
        Err(e) => {
            eprintln!("immut-local-deploy: {e}\nrun immut-local-deploy --help for the flags");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(Exit::Success) => std::process::ExitCode::SUCCESS,
        Ok(Exit::Failed) => std::process::ExitCode::FAILURE,
        Ok(Exit::Refused) => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("immut-local-deploy: error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    while let Some(arg) = it.next() {
        if arg == "-h" {
            out.insert("help".to_owned(), String::new());
            continue;
        }
        let Some(flag) = arg.strip_prefix("--") else { return Err(format!("unexpected argument {arg:?}")) };
        let (key, inline) = match flag.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (flag, None),
        };
        if SWITCHES.contains(&key) {
            if inline.is_some() {
                return Err(format!("--{key} takes no value"));
            }
            out.insert(key.to_owned(), String::new());
        } else if VALUED.contains(&key) {
            let value = match inline {
                Some(v) => v,
                None => it.next().filter(|v| !v.starts_with("--")).ok_or_else(|| format!("--{key} needs a value"))?,
            };
            if out.insert(key.to_owned(), value).is_some() {
                return Err(format!("--{key} is given twice"));
            }
        } else {
            return Err(format!("unknown flag --{key}"));
        }
    }
    if out.contains_key("help") {
        return Ok(out);
    }
    let modes: Vec<&&str> = MODES.iter().filter(|m| out.contains_key(**m)).collect();
    if modes.len() > 1 {
        return Err(format!("--{} and --{} cannot be combined", modes[0], modes[1]));
    }
    let required: &[&str] = if modes.is_empty() { &["state-dir", "artifact", "version"] } else { &["state-dir"] };
    for required in required {
        if !out.contains_key(*required) {
            return Err(format!("--{required} is required"));
        }
    }
    Ok(out)
}

fn seconds(args: &HashMap<String, String>, key: &str, default: u64) -> Result<Duration, String> {
    match args.get(key) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("--{key} {v:?} is not a number of seconds above zero")),
    }
}

fn spawn_crash(value: &str) -> Result<SpawnCrash, String> {
    let bad = || format!("--kill-at-spawn {value:?}: use N:before or N:after");
    let (n, when) = value.split_once(':').ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    match when {
        "before" => Ok(SpawnCrash::BeforeSpawn(n)),
        "after" => Ok(SpawnCrash::AfterSpawn(n)),
        _ => Err(bad()),
    }
}

/// The journal's path for a service, as `FileJournal` names it.
/// Where the state store keeps the journal records of each service.
fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("journal").join("journal")
}

fn journal_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("journal").join(format!("{service}.journal.jsonl"))
}

/// A journal line that does not parse and is not the last line is corruption, not a torn
/// write: resuming over it would read a deployment as "nothing". Stops with the file and the
/// line. (The library's `FileJournal::read` skips such lines; this check stands in front of it.)
fn check_journal(path: &Path) -> Result<(), String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read the journal {}: {e}", path.display())),
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let last = lines.last().map(|(n, _)| *n);
    for (n, line) in &lines {
        if let Err(e) = serde_json::from_str::<JournalRecord>(line)
            && Some(*n) != last
        {
            return Err(format!(
                "the journal {} is unreadable at line {n} ({e}); it is not a torn last line, so it cannot be skipped. Nothing was changed. See what runs with --status; --repair moves the journal aside (the deployment it recorded can then not be resumed: deploy the release you want again, and the engine replaces the rest)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Why a service's journal cannot be trusted, if it cannot: a line that is not a torn last
/// line (see [`check_journal`]), or an error the journal itself reports that no retry cures.
fn journal_problem(state_dir: &Path, service: &str) -> Option<String> {
    if let Err(problem) = check_journal(&journal_path(state_dir, service)) {
        return Some(problem);
    }
    match FileJournal::open(state_dir.join("journal")).and_then(|j| j.read(service)) {
        Err(e) if !e.is_retryable() => Some(format!("the journal of {service} cannot be read: {e}")),
        _ => None,
    }
}

/// The services that have a journal in the state directory (one file per service, or one
/// directory of records per service).
fn journaled_services(state_dir: &Path) -> Vec<String> {
    // The journal is numbered record objects per service on the state store
    // (`journal/journal/<service>/`); an older one is a `<service>.journal.jsonl` file.
    let mut services: Vec<String> = [records_dir(state_dir), state_dir.join("journal")]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".journal.jsonl") {
                Some(service) => Some(service.to_owned()),
                None if entry.path().parent() == Some(records_dir(state_dir).as_path()) => {
                    entry.file_type().ok().filter(|t| t.is_dir()).map(|_| name)
                }
                None => None,
            }
        })
        .collect();
    services.sort();
    services.dedup();
    services
}

async fn run(args: HashMap<String, String>) -> Result<Exit, Box<dyn std::error::Error>> {
    let state_dir = PathBuf::from(&args["state-dir"]);
    let service = args.get("service").map_or("web", String::as_str);
    if args.contains_key("stop-balancer") {
        return match LocalBalancer::stop_service(&state_dir, service).await? {
            Some(pid) => {
                eprintln!("stopped the balancer of {service} (pid {pid})");
                Ok(Exit::Success)
            }
            None => {
                eprintln!("no balancer of {service} runs in {}", state_dir.display());
                Ok(Exit::Success)
            }
        };
    }
    let mut builder = LocalProvider::builder().state_dir(&state_dir);
    if let Some(at) = args.get("kill-at-spawn") {
        builder = builder.crash_at_spawn(spawn_crash(at)?);
    }
    let provider = builder.build()?;
    if args.contains_key("status") || args.contains_key("repair") {
        return status(&provider, &state_dir, args.contains_key("repair")).await;
    }
    if let Some(problem) = journal_problem(&state_dir, service) {
        return Err(problem.into());
    }

    let progress_deadline = seconds(&args, "progress-deadline", 20)?;
    let drain_timeout = seconds(&args, "drain-timeout", 10)?;
    if drain_timeout >= progress_deadline {
        return Err(format!(
            "--drain-timeout ({drain_timeout:?}) must be below --progress-deadline ({progress_deadline:?}): a switch or detach waits up to the drain timeout, and a deployment would miss its deadline while draining"
        )
        .into());
    }
    let desired: usize =
        args.get("desired").map_or(Ok(3), |d| d.parse().map_err(|_| format!("--desired {d:?} is not a count")))?;
    let balancer = provider.balancer(service).drain_timeout(drain_timeout).build().await?;
    eprintln!(
        "immut-local-deploy: the balancer of {service} serves http://{} (pid {}); it keeps serving after this command exits; stop it with --stop-balancer",
        balancer.addr(),
        balancer.pid()
    );
    let version = |key: &str| -> Result<Option<Version>, String> {
        args.get(key).map(|v| Version::parse(v).map_err(|e| format!("--{key} {v:?}: {e}"))).transpose()
    };
    let release = |version: Version, broken: bool| -> Result<Release, Box<dyn std::error::Error>> {
        let artifact = args.get("artifact").ok_or("--previous-version needs --artifact")?;
        let artifact = immut_local::artifact("sample", version, artifact)?;
        let mut spec = LaunchSpec::default();
        if broken && args.contains_key("fail-health") {
            spec.env.insert(sample::FAIL_HEALTH.into(), "1".into());
        }
        if broken && args.contains_key("exit-at-start") {
            spec.env.insert(sample::EXIT_AT_START.into(), "1".into());
        }
        Ok(Release::new(service, &artifact, &BaselineSpec::new("sample", Version::new(1, 0, 0), spec))?)
    };
    let journal = match args.get("state") {
        Some(url) => FileJournal::new(immut_core::state::StateStore::open(url)?),
        None => FileJournal::open(state_dir.join("journal"))?,
    };
    let journal: Arc<dyn Journal> = match args.get("kill-at-record") {
        Some(n) => Arc::new(KillAtRecord { inner: journal, at: n.parse()?, seen: AtomicUsize::new(0) }),
        None => Arc::new(journal),
    };
    let builder = Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer)
        .health(HttpProbe::with_timeout("/healthz", Duration::from_millis(500)))
        .desired(desired)
        .min_ready(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(progress_deadline)
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
                return Ok(Exit::Success);
            }
        }
    } else {
        let target = release(version("version")?.expect("required"), true)?;
        let mut deployment = deployer.deploy(target);
        if let Some(previous) = version("previous-version")? {
            deployment = deployment.with_previous(release(previous, false)?);
        }
        if let Some(id) = args.get("deployment-id") {
            deployment = deployment.with_id(DeploymentId::new(id));
        }
        if args.contains_key("rollback") {
            deployment = deployment.as_rollback();
        }
        deployment
    };
    let mut launched: Vec<InstanceId> = Vec::new();
    let outcome = deployment
        .run_with(|event| {
            if let Event::Launched { ids, .. } = event {
                launched.extend(ids.iter().cloned());
            }
            println!("{}", serde_json::to_string(event).expect("events serialize"))
        })
        .await;
    Ok(match &outcome.phase {
        Phase::Succeeded => Exit::Success,
        Phase::Refused { reason } => {
            eprintln!("immut-local-deploy: refused: {reason}");
            if reason.contains("downgrade") {
                eprintln!(
                    "immut-local-deploy: to go back to an older version on purpose, run the same command with --rollback"
                );
            }
            Exit::Refused
        }
        phase => {
            eprintln!("immut-local-deploy: {}", outcome.summary());
            if matches!(phase, Phase::RollbackFailed { .. }) {
                eprintln!("immut-local-deploy: the fleet needs attention: see what runs with --status");
            }
            // Quote the instances of this deployment that died on their own: why it failed.
            let mut quoted = 0;
            for id in launched.iter().rev() {
                if quoted == 3 {
                    break;
                }
                if let Ok(Some(report)) = provider.failure_report(id).await {
                    eprintln!("immut-local-deploy: {report}");
                    quoted += 1;
                }
            }
            Exit::Failed
        }
    })
}

/// `--status` and `--repair`: the inventory as JSON on stdout and as a table on stderr.
async fn status(provider: &LocalProvider, state_dir: &Path, repair: bool) -> Result<Exit, Box<dyn std::error::Error>> {
    let mut journals: Vec<(String, Option<String>)> = journaled_services(state_dir)
        .into_iter()
        .map(|service| {
            let problem = journal_problem(state_dir, &service);
            (service, problem)
        })
        .collect();
    let mut moved = Vec::new();
    let inventory = if repair {
        for (service, problem) in &mut journals {
            if problem.is_none() {
                continue;
            }
            let into = state_dir.join("quarantine");
            std::fs::create_dir_all(&into)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
            // The journal is one directory of records per service (an older one, one file).
            for path in [journal_path(state_dir, service), records_dir(state_dir).join(&*service)] {
                if path.exists() {
                    let name = path.file_name().expect("a journal path").to_string_lossy().into_owned();
                    let to = into.join(format!("journal__{name}.{now}"));
                    std::fs::rename(&path, &to)?;
                    moved.push((path, to));
                }
            }
            *problem = None;
        }
        let repaired = provider.repair().await?;
        moved.extend(repaired.quarantined.iter().cloned());
        for (from, to) in &moved {
            eprintln!("moved {} aside to {}", from.display(), to.display());
        }
        for id in &repaired.rebuilt {
            eprintln!("rebuilt the record of {id} from its running process");
        }
        for service in &repaired.rewritten_balancers {
            eprintln!("the running balancer of {service} wrote its state again");
        }
        println!("{}", serde_json::json!({ "moved": moved, "rebuilt": repaired.rebuilt }));
        repaired.inventory
    } else {
        provider.inventory().await?
    };
    let bad_journals: Vec<&String> = journals.iter().filter_map(|(_, p)| p.as_ref()).collect();
    println!("{}", serde_json::json!({ "inventory": inventory, "unreadable_journals": bad_journals }));
    eprint!("{}", inventory.table());
    for problem in &bad_journals {
        eprintln!("{problem}");
    }
    Ok(if inventory.is_clean() && bad_journals.is_empty() { Exit::Success } else { Exit::Failed })
}
