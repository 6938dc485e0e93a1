use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use immut_core::model::{LabelCharset, Observed};
use immut_core::{
    Adopt, Capabilities, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, Provenance, Provider,
    Query, Readiness, Release, Result,
};

use crate::builder::{BalancerBuilder, SpawnCrash};
use crate::client::{self, PortPolicy, ProcTable, Record, Reservation, Target, map_io};
use crate::config::LocalConfig;

/// Environment variables every instance receives, beside the baseline's own.
pub mod env {
    /// The port the instance must listen on (127.0.0.1).
    pub const PORT: &str = "PORT";
    /// The service name.
    pub const SERVICE: &str = "IMMUT_SERVICE";
    /// The release id.
    pub const RELEASE: &str = "IMMUT_RELEASE";
    /// The artifact version.
    pub const ARTIFACT_VERSION: &str = "IMMUT_ARTIFACT_VERSION";
    /// The instance id. Inherited by the instance's children, it is how the provider finds
    /// every process of an instance, and a process whose record was never completed.
    pub const INSTANCE_ID: &str = "IMMUT_INSTANCE_ID";
    /// The launch token of the wave that started the instance.
    pub const LAUNCH_TOKEN: &str = "IMMUT_LAUNCH_TOKEN";
    /// The absolute state directory that recorded the instance.
    pub const STATE_DIR: &str = "IMMUT_STATE_DIR";
    /// The instance record as it was written ahead of the start (JSON): what a repair
    /// rebuilds a lost or unreadable record from.
    pub const RECORD: &str = "IMMUT_LOCAL_RECORD";
    /// Set (to the service name) in a balancer process, which is never an instance.
    pub const BALANCER: &str = "IMMUT_BALANCER";
}

/// Real OS processes on 127.0.0.1, one port each, recorded in a state directory.
///
/// Each instance is a process group of its own, so it outlives the deploying process and a
/// Ctrl-C in its terminal, and signals reach the children of a wrapper script too. Its record
/// is written ahead, before the process starts, and the process carries its instance id in its
/// environment: a launch killed at any point leaves nothing that `describe` cannot see.
/// `describe` checks each recorded process by pid *and* start time (recorded while the child
/// was still unreaped, so no reused pid can slip in), so a dead process shows as terminated and
/// a reused pid, or a process started by hand, is never mistaken for a managed instance. Ids
/// are random, never derived from the pid.
///
/// A record lives as long as its process may run: `terminate` deletes it once the process
/// group is gone, so the state directory holds the live fleet, not its history. The record of
/// a process that died on its own stays, described as terminated, for 15 minutes
/// ([`LocalProvider::failure_report`] quotes its log). A record that cannot be read stops
/// `describe`, `launch` and `terminate` with an error naming the file and the line; see
/// [`LocalProvider::inventory`] and [`LocalProvider::repair`]. Every file-system and `/proc`
/// access runs on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    config: Arc<LocalConfig>,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    crash: Option<SpawnCrash>,
    spawned: AtomicUsize,
}

impl LocalProvider {
    pub(crate) fn new(config: LocalConfig, crash: Option<SpawnCrash>) -> Self {
        LocalProvider { config: Arc::new(config), faults: Arc::new(Faults { crash, spawned: AtomicUsize::new(0) }) }
    }

    /// A builder.
    pub fn builder() -> crate::LocalBuilder {
        crate::LocalBuilder::new()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// A builder for `service`'s balancer, wired to this provider: it lives in this state
    /// directory, refuses unknown instances, and is started (as a process of its own) on
    /// first use.
    pub fn balancer(&self, service: &str) -> BalancerBuilder {
        BalancerBuilder::default().state_dir(self.config.state_dir.clone()).service(service)
    }

    /// The log file of an instance (its stdout and stderr, then the exit status the launching
    /// process saw).
    pub fn log_path(&self, id: &InstanceId) -> PathBuf {
        client::logs_dir(&self.config.state_dir).join(format!("{id}.log"))
    }

    /// Why an instance is gone, if it died on its own: how long it ran and the last lines of
    /// its log (which end with its exit status when the launching process saw it exit).
    /// `None` for a live instance, one this provider terminated, or an unknown id.
    pub async fn failure_report(&self, id: &InstanceId) -> Result<Option<String>> {
        let (this, id) = (self.clone(), id.clone());
        client::blocking("failure report", move || {
            let Some(record) = client::read_record(&this.config.state_dir, id.as_str())? else { return Ok(None) };
            let (instance, _) = this.observe(&record, client::now_ms(), &mut None);
            if record.terminated || instance.state != InstanceState::Terminated {
                return Ok(None);
            }
            let log = this.log_path(&id);
            let ran = record.gone_at_ms.map(|gone| gone.saturating_sub(record.launched_at_ms));
            let mut report = match ran {
                Some(ms) => format!("{id} exited on its own within {:.1} s of its launch", ms as f64 / 1000.0),
                None => format!("{id} exited on its own"),
            };
            let tail = client::log_tail(&log, 8);
            if tail.is_empty() {
                report.push_str(&format!("; its log {} is empty", log.display()));
            } else {
                report.push_str(&format!("; the last lines of {}:", log.display()));
                for line in tail {
                    report.push_str("\n  | ");
                    report.push_str(&line);
                }
            }
            Ok(Some(report))
        })
        .await
    }

    /// The last resort of a program that must leave nothing behind and cannot terminate in
    /// order (a `Drop` guard on a failure path): SIGKILLs, at once, every process launched from
    /// this state directory (found by the directory they carry in their environment, whatever
    /// the records say) and every balancer process of the directory. Blocking; returns how
    /// many processes it signalled. The records stay, and describe then reports them gone.
    pub fn kill_all_now(&self) -> usize {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let dir = std::fs::canonicalize(&self.config.state_dir).unwrap_or_else(|_| self.config.state_dir.clone());
        let wanted = dir.display().to_string();
        let mut killed = 0;
        for (pid, value) in ProcTable::read().with_env(env::STATE_DIR) {
            if value == wanted && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        let balancers = std::fs::read_dir(dir.join("balancers")).into_iter().flatten().flatten();
        for state in balancers.filter_map(|entry| crate::balancer::scan_state(&entry.path()).ok().flatten()) {
            if let Some(pid) = state.pid
                && immut_core::process::is_alive(pid, state.start_ticks)
                && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
            {
                killed += 1;
            }
        }
        killed
    }

    fn verify_artifact(&self, release: &Release) -> Result<(PathBuf, String)> {
        let artifact = release.artifact();
        let image = PathBuf::from(&artifact.image);
        client::check_executable(&image)?;
        let Some(expected) = &artifact.digest else {
            return Err(Error::invalid(
                "artifact.digest",
                "is missing; the local provider verifies every launch, so build the artifact with immut_local::artifact(..)",
            ));
        };
        let actual = client::sha256_file(&image)?;
        if &actual != expected {
            return Err(Error::invalid(
                "artifact.digest",
                format!(
                    "{} has {actual}, but release {} expects {expected}; the file changed since the release was made: rebuild the release from the file, or restore the file",
                    image.display(),
                    release.id()
                ),
            ));
        }
        Ok((image, actual))
    }

    /// What a record says now, and what becomes of the record. Reads `/proc`; `table` is
    /// read once, and only when a record needs it.
    pub(crate) fn observe(&self, record: &Record, now_ms: u64, table: &mut Option<ProcTable>) -> (Instance, Keep) {
        let Some(target) = record.target() else { return self.observe_unstarted(record, now_ms, table) };
        let leader = client::leader_alive(&target);
        // The leader died, but its group (a wrapper's children) may still run.
        // A record already found gone stays gone: no scan of /proc for it.
        let group_lives = !leader
            && target.group
            && record.gone_at_ms.is_none()
            && !table.get_or_insert_with(ProcTable::read).members(target.pid, &record.id).is_empty();
        let (state, keep) = match (leader || group_lives, record.terminated, record.gone_at_ms) {
            (true, false, _) if leader => (InstanceState::Running, Keep::Yes),
            // Its main process is gone and it serves nobody; the engine finishes it off.
            (true, false, _) => (InstanceState::Stopped, Keep::Yes),
            // A terminate is stopping it, in this process or another.
            (true, true, _) => (InstanceState::Terminating, Keep::Yes),
            // Asked to terminate and gone: the terminate died before it deleted the record.
            (false, true, _) => (InstanceState::Terminated, Keep::Delete),
            (false, false, None) => (InstanceState::Terminated, Keep::MarkGone),
            (false, false, Some(gone)) if now_ms.saturating_sub(gone) >= client::GONE_RETENTION.as_millis() as u64 => {
                (InstanceState::Terminated, Keep::Delete)
            }
            (false, false, Some(_)) => (InstanceState::Terminated, Keep::Yes),
        };
        let observed =
            Observed { image: if leader { observed_image(record, target.pid) } else { None }, ..Observed::default() };
        (self.instance(record, state, observed), keep)
    }

    /// A record written ahead whose process was not recorded yet. While its launcher lives the
    /// launch is in progress; once the launcher is dead, the process that carries the id (if
    /// any) completes the record, and a record whose process never started goes.
    fn observe_unstarted(&self, record: &Record, now_ms: u64, table: &mut Option<ProcTable>) -> (Instance, Keep) {
        let launching = record.launcher.is_some_and(|(pid, start)| immut_core::process::is_alive(pid, start));
        if launching {
            let state = if record.terminated { InstanceState::Terminating } else { InstanceState::Pending };
            return (self.instance(record, state, Observed::default()), Keep::Yes);
        }
        match table.get_or_insert_with(ProcTable::read).carrying(&record.id) {
            Some((pid, start)) => {
                let completed = Record { pid: Some(pid), start_ticks: Some(start), launcher: None, ..record.clone() };
                let (instance, keep) = self.observe(&completed, now_ms, table);
                tracing::info!(id = %record.id, pid, "completed the record of a process whose launcher died");
                (instance, if keep == Keep::Yes { Keep::Rewrite(Box::new(completed)) } else { keep })
            }
            None => (self.instance(record, InstanceState::Terminated, Observed::default()), Keep::Delete),
        }
    }

    fn instance(&self, record: &Record, state: InstanceState, observed: Observed) -> Instance {
        Instance {
            id: InstanceId::new(&record.id),
            state,
            provenance: Provenance::from_labels(&record.labels, LabelCharset::Any).map(Arc::new),
            labels: Arc::new(record.labels.clone()),
            observed: Arc::new(observed),
            address: Some(format!("127.0.0.1:{}", record.port)),
        }
    }

    /// Applies what [`LocalProvider::observe`] decided. Housekeeping never fails a describe: a
    /// record that cannot be tidied now is tidied by a later one.
    fn housekeep(&self, record: &Record, keep: Keep, now_ms: u64) {
        let dir = &self.config.state_dir;
        let done = match keep {
            Keep::Yes => return,
            Keep::Delete => client::delete_record(dir, &record.id),
            Keep::MarkGone => client::write_record(dir, &Record { gone_at_ms: Some(now_ms), ..record.clone() }),
            Keep::Rewrite(completed) => client::write_record(dir, &completed),
        };
        if let Err(e) = done {
            tracing::warn!(id = %record.id, error = %e, "could not tidy an instance record");
        }
    }

    /// `describe`, on the calling thread: it reads the state directory and `/proc`. A record
    /// that cannot be read fails it before anything is tidied.
    fn describe_blocking(&self, query: &Query) -> Result<Vec<Instance>> {
        let records = client::read_records(&self.config.state_dir)?;
        let now = client::now_ms();
        let mut table = None;
        let mut found = Vec::new();
        for record in &records {
            let (instance, keep) = self.observe(record, now, &mut table);
            self.housekeep(record, keep, now);
            if query.matches(&instance) {
                found.push(instance);
            }
        }
        if query.include_unmanaged {
            found.extend(self.unmanaged(&records, query.service.as_deref()).into_iter().filter(|i| query.matches(i)));
        }
        Ok(found)
    }

    /// Verifies the artifact, reserves the ports, writes every record ahead and starts the
    /// processes, on the calling thread. On a failure part-way it reports what it started
    /// and what it only recorded, so that the caller stops and forgets them before it reports.
    fn launch_blocking(&self, request: &LaunchRequest) -> Launched {
        let dir = self.config.state_dir.clone();
        let prepared = (|| {
            let (image, digest) = self.verify_artifact(&request.release)?;
            let params = &request.release.baseline().spec.params;
            let policy = PortPolicy::parse(params.get("port").map(String::as_str))?;
            let hold = client::parse_port_hold(params.get("port_hold").map(String::as_str))?;
            client::prepare_state_dir(&dir)?;
            client::remember_image(&dir, request.release.service(), &image, Some(&digest))?;
            // One launcher at a time picks ports and writes records ahead in this directory,
            // so that no two launches hand out the same port.
            let _lock = client::lock_file(&client::instances_dir(&dir).join(".launch.lock"))?;
            let records = client::read_records(&dir)?;
            let taken: HashSet<u16> = records.iter().filter(|r| !r.terminated).map(|r| r.port).collect();
            let reservations = policy.reserve(request.count, &taken)?;
            let labels = request.labels(LabelCharset::Any);
            let script = client::is_script(&image);
            let launcher = immut_core::process::current();
            let mut pending: Vec<(Record, Reservation)> = Vec::with_capacity(reservations.len());
            for reservation in reservations {
                let record = Record {
                    id: client::new_instance_id(request.release.service(), request.token.as_str()),
                    pid: None,
                    start_ticks: None,
                    port: reservation.port,
                    image: image.clone(),
                    digest: Some(digest.clone()),
                    script,
                    labels: labels.clone(),
                    launched_at_ms: client::now_ms(),
                    terminated: false,
                    gone_at_ms: None,
                    launcher: Some(launcher),
                    group: true,
                };
                if let Err(e) = client::write_record(&dir, &record) {
                    for (written, _) in &pending {
                        let _ = client::delete_record(&dir, &written.id);
                    }
                    return Err(e);
                }
                pending.push((record, reservation));
            }
            Ok::<_, Error>((pending, hold))
        })();
        let (pending, hold) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return Launched { started: Vec::new(), unstarted: Vec::new(), error: Some(e) },
        };
        let mut started = Vec::with_capacity(pending.len());
        let mut rest = pending.into_iter();
        while let Some((record, reservation)) = rest.next() {
            let id = record.id.clone();
            match self.spawn_one(request, record, reservation, hold) {
                Ok(record) => started.push(record),
                Err(e) => {
                    let mut unstarted: Vec<String> = rest.map(|(r, _)| r.id).collect();
                    unstarted.push(id);
                    return Launched { started, unstarted, error: Some(e) };
                }
            }
        }
        Launched { started, unstarted: Vec::new(), error: None }
    }

    /// Starts the process of a record written ahead, then completes the record with its pid and
    /// start time. Runs on the blocking pool, inside the runtime, so that tokio can wait for
    /// the process: the exit status goes to the end of its log.
    fn spawn_one(&self, request: &LaunchRequest, record: Record, mut port: Reservation, hold: bool) -> Result<Record> {
        let n = self.faults.spawned.fetch_add(1, Ordering::SeqCst);
        if self.faults.crash == Some(SpawnCrash::BeforeSpawn(n)) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        let dir = &self.config.state_dir;
        let spec = &request.release.baseline().spec;
        let log_path = self.log_path(&InstanceId::new(&record.id));
        let log = std::fs::File::create(&log_path).map_err(|e| map_io(e, "create log file", &log_path))?;
        let log_err = log.try_clone().map_err(|e| map_io(e, "create log file", &log_path))?;
        let absolute_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        let args = spec.args.iter().map(|a| a.replace("{port}", &record.port.to_string()));
        let mut command = tokio::process::Command::new(&record.image);
        command
            .args(args)
            .envs(&spec.env)
            .env_remove(env::BALANCER)
            .env(env::PORT, record.port.to_string())
            .env(env::SERVICE, request.release.service())
            .env(env::RELEASE, request.release.id().as_str())
            .env(env::ARTIFACT_VERSION, request.release.artifact().version.to_string())
            .env(env::INSTANCE_ID, &record.id)
            .env(env::LAUNCH_TOKEN, request.token.as_str())
            .env(env::STATE_DIR, &absolute_dir)
            .env(env::RECORD, serde_json::to_string(&record).expect("records serialize"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        if !hold {
            port.release();
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = client::delete_record(dir, &record.id);
                return Err(map_io(e, "start", &record.image).with_ids([InstanceId::new(&record.id)]));
            }
        };
        let Some(pid) = child.id().map(|p| p as i32) else {
            let _ = client::delete_record(dir, &record.id);
            return Err(Error::new(ErrorKind::Unavailable, "the process was reaped before its pid was read")
                .with_provider("local")
                .with_operation("launch"));
        };
        // The child is not reaped while this handle lives, so its pid cannot be reused: the
        // start time read now is that of this very process, even if it already exited.
        let start_ticks = client::child_start(pid);
        if self.faults.crash == Some(SpawnCrash::AfterSpawn(n)) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        let completed = Record { pid: Some(pid), start_ticks, launcher: None, ..record };
        if let Err(e) = client::write_record(dir, &completed) {
            // Without its record nobody could find or stop the process: stop it now.
            if let Some(target) = completed.target() {
                client::kill_now(&target);
            }
            let _ = client::delete_record(dir, &completed.id);
            return Err(e);
        }
        let started = std::time::Instant::now();
        tokio::runtime::Handle::current().spawn(watch(child, port, log_path, pid, started));
        Ok(completed)
    }
}

/// Follows a process this provider started: holds its port until it listens (for at most
/// 30 s), and appends its exit status to its log when it exits, while this process lives.
async fn watch(
    mut child: tokio::process::Child,
    mut port: Reservation,
    log: PathBuf,
    pid: i32,
    started: std::time::Instant,
) {
    loop {
        tokio::select! {
            status = child.wait() => {
                port.release();
                let line = match status {
                    Ok(status) => format!("immut-local: process {pid} exited ({status}) after {:.1} s\n", started.elapsed().as_secs_f64()),
                    Err(e) => format!("immut-local: could not wait for process {pid}: {e}\n"),
                };
                let _ = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    std::fs::OpenOptions::new().append(true).open(&log).and_then(|mut f| f.write_all(line.as_bytes()))
                })
                .await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(25)), if port.holds() => {
                let number = port.port;
                let listening = tokio::task::spawn_blocking(move || client::port_listening(number)).await.unwrap_or(true);
                if listening || started.elapsed() > Duration::from_secs(30) {
                    port.release();
                }
            }
        }
    }
}

/// What a launch did: the processes it started (records complete), the records it wrote
/// ahead without starting their process, and why it stopped.
struct Launched {
    started: Vec<Record>,
    unstarted: Vec<String>,
    error: Option<Error>,
}

/// What the file of a record needs after a describe looked at it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Keep {
    Yes,
    Delete,
    MarkGone,
    /// A record written ahead, completed from its process.
    Rewrite(Box<Record>),
}

/// What the process of an instance runs, as the audit compares it: the artifact's path when
/// its content has the recorded digest, else the file it runs and that file's digest. For a
/// script, the script's own digest, not the interpreter's.
fn observed_image(record: &Record, pid: i32) -> Option<String> {
    let Some(want) = &record.digest else { return client::process_image(pid).map(|p| p.display().to_string()) };
    let (file, shown) = if record.script {
        (record.image.clone(), record.image.clone())
    } else {
        (PathBuf::from(format!("/proc/{pid}/exe")), client::process_image(pid)?)
    };
    match client::digest_cached(&file) {
        Ok(digest) if &digest == want => Some(record.image.display().to_string()),
        Ok(digest) => Some(format!("{} ({digest})", shown.display())),
        Err(_) => Some(shown.display().to_string()),
    }
}

/// The id the local provider gives a process it did not launch: its pid and its start time.
const UNMANAGED_PREFIX: &str = "pid-";

impl LocalProvider {
    /// Processes started by hand that run a copy (from any path, matched by content) of an
    /// executable that a managed instance of `service` (any service when `None`) runs or ran,
    /// and that serve: instances launched outside immut. It scans `/proc`: call it from
    /// blocking code only.
    fn unmanaged(&self, records: &[Record], service: Option<&str>) -> Vec<Instance> {
        let in_service = |r: &&Record| {
            service.is_none_or(|s| r.labels.get(immut_core::model::label_keys::SERVICE).is_some_and(|v| v == s))
        };
        let mut images = client::remembered_images(&self.config.state_dir, service);
        // Records written before the images index existed still name their executable.
        images.extend(records.iter().filter(in_service).map(|r| client::ImageEntry {
            service: String::new(),
            image: r.image.clone(),
            digest: r.digest.clone(),
            size: std::fs::metadata(&r.image).ok().map(|m| m.len()),
        }));
        // A managed process being terminated is still managed, even if it was adopted and so
        // lacks the environment that marks immut's own launches.
        let managed: HashSet<i32> =
            records.iter().filter_map(Record::target).filter(client::leader_alive).map(|t| t.pid).collect();
        client::processes_running(&images)
            .into_iter()
            .filter(|s| !managed.contains(&s.pid))
            .map(|s| Instance {
                id: InstanceId::new(format!("{UNMANAGED_PREFIX}{}-{}", s.pid, s.start)),
                state: InstanceState::Running,
                provenance: None,
                labels: Arc::default(),
                observed: Arc::new(Observed { image: Some(s.image.display().to_string()), ..Observed::default() }),
                address: s.port.map(|p| format!("127.0.0.1:{p}")),
            })
            .collect()
    }

    fn unmanaged_pid(id: &InstanceId) -> Option<(i32, u64)> {
        let (pid, start) = id.as_str().strip_prefix(UNMANAGED_PREFIX)?.split_once('-')?;
        Some((pid.parse().ok()?, start.parse().ok()?))
    }
}

#[async_trait]
impl Adopt for LocalProvider {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let (this, ids, provenance) = (self.clone(), ids.to_vec(), provenance.clone());
        let signature = signature.map(str::to_owned);
        client::blocking("adopt", move || this.adopt_blocking(&ids, &provenance, signature.as_deref())).await
    }
}

impl LocalProvider {
    fn adopt_blocking(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        let records = client::read_records(&self.config.state_dir)?;
        let visible = self.unmanaged(&records, None);
        let mut adopted = Vec::new();
        let now = client::now_ms();
        for id in ids {
            let found = visible.iter().find(|i| &i.id == id);
            let (Some(instance), Some((pid, start))) = (found, Self::unmanaged_pid(id)) else {
                return Err(Error::new(ErrorKind::NotFound, "not a process started by hand from a managed executable")
                    .with_provider("local")
                    .with_operation("adopt")
                    .with_ids([id.clone()]));
            };
            let labels = provenance.signed_labels(LabelCharset::Any, signature);
            let image = PathBuf::from(instance.observed.image.clone().unwrap_or_default());
            let digest = client::sha256_file(&image).ok();
            client::remember_image(&self.config.state_dir, &provenance.service, &image, digest.as_deref())?;
            let port = instance
                .address
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .or_else(|| client::process_port(pid))
                .unwrap_or(0);
            let record = Record {
                id: client::new_instance_id(&provenance.service, "adopted"),
                pid: Some(pid),
                start_ticks: Some(start),
                port,
                script: client::is_script(&image),
                image,
                digest,
                labels,
                launched_at_ms: now,
                terminated: false,
                gone_at_ms: None,
                launcher: None,
                // Started by hand: its process group is its shell's, never signalled.
                group: false,
            };
            client::write_record(&self.config.state_dir, &record)?;
            adopted.push(self.observe(&record, now, &mut None).0);
        }
        Ok(adopted)
    }

    /// Marks the named instances as terminating and finds what to stop: the recorded
    /// processes (and their groups), and the processes started by hand that are named and
    /// still run a managed executable with the same start time (so that a stale or reused
    /// pid never hits an unrelated process).
    fn terminating_blocking(&self, ids: &[InstanceId]) -> Result<(Vec<String>, Vec<Target>)> {
        let dir = &self.config.state_dir;
        let records = client::read_records(dir)?;
        let wanted: Vec<&Record> = records.iter().filter(|r| ids.iter().any(|id| id.as_str() == r.id)).collect();
        for r in &wanted {
            if !r.terminated {
                client::write_record(dir, &Record { terminated: true, ..(*r).clone() })?;
            }
        }
        let mut table = None;
        let mut targets = Vec::new();
        for r in &wanted {
            match r.target() {
                Some(t) => targets.push(t),
                None => {
                    if let Some(t) = self.target_of_unstarted(r, &mut table)? {
                        targets.push(t);
                    }
                }
            }
        }
        // Only a named hand-started process is worth a scan of /proc.
        if ids.iter().any(|id| Self::unmanaged_pid(id).is_some()) {
            let unmanaged = self.unmanaged(&records, None);
            targets.extend(
                ids.iter()
                    .filter(|id| unmanaged.iter().any(|u| &u.id == *id))
                    .filter_map(Self::unmanaged_pid)
                    .map(|(pid, start)| Target { pid, start: Some(start), group: false, instance: None }),
            );
        }
        Ok((wanted.iter().map(|r| r.id.clone()).collect(), targets))
    }

    /// The process of a record written ahead and not completed: once its launcher completes
    /// it (waited for, briefly), or, when the launcher is dead, the process that carries its id.
    fn target_of_unstarted(&self, record: &Record, table: &mut Option<ProcTable>) -> Result<Option<Target>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut record = record.clone();
        loop {
            if let Some(t) = record.target() {
                return Ok(Some(t));
            }
            let launching = record.launcher.is_some_and(|(pid, start)| immut_core::process::is_alive(pid, start));
            if !launching || std::time::Instant::now() >= deadline {
                let carrying = table.get_or_insert_with(ProcTable::read).carrying(&record.id);
                return Ok(carrying.map(|(pid, start)| Target {
                    pid,
                    start: Some(start),
                    group: true,
                    instance: Some(record.id.clone()),
                }));
            }
            std::thread::sleep(Duration::from_millis(10));
            match client::read_record(&self.config.state_dir, &record.id)? {
                Some(r) => record = r,
                None => return Ok(None),
            }
        }
    }

    fn delete_records(&self, ids: &[String]) -> Result<()> {
        let mut first_error = None;
        for id in ids {
            if let Err(e) = client::delete_record(&self.config.state_dir, id) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn failure_detail(&self, id: &InstanceId) -> Option<String> {
        self.failure_report(id).await.ok().flatten()
    }

    /// The check every launch makes, made now: the executable is still there and still has
    /// the release's digest. Anything that would refuse a launch blocks.
    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let (this, release) = (self.clone(), release.clone());
        client::blocking("readiness", move || {
            Ok(match this.verify_artifact(&release) {
                Ok(_) => Readiness::ready(),
                Err(e) if e.kind() == ErrorKind::InvalidInput => Readiness::blocked(e.message().to_owned()),
                Err(e) => return Err(e),
            })
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_launch_batch: 100,
            max_terminate_batch: 100,
            honours_token: false,
            label_charset: LabelCharset::Any,
            max_label_value_len: 1024,
            max_label_key_len: 256,
            max_labels: 64,
            // Describe reads the records this provider writes before it starts a process.
            consistency_window: Duration::ZERO,
            // An exiting process holds no quota on this machine.
            lingering_holds_quota: false,
            min_poll_interval: std::time::Duration::ZERO,
        }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let (this, req) = (self.clone(), request.clone());
        let launched = client::blocking("launch", move || Ok(this.launch_blocking(&req))).await?;
        if let Some(e) = launched.error {
            // Nothing half-launched: stop what this call started, and forget what it only
            // recorded, before reporting.
            let mut ids: Vec<String> = launched.started.iter().map(|r| r.id.clone()).collect();
            ids.extend(launched.unstarted);
            client::stop_all(launched.started.iter().filter_map(Record::target).collect(), self.config.term_timeout)
                .await;
            let this = self.clone();
            if let Err(cleanup) = client::blocking("launch", move || this.delete_records(&ids)).await {
                tracing::warn!(error = %cleanup, "could not delete the records of a failed launch");
            }
            return Err(e);
        }
        tracing::info!(count = launched.started.len(), release = %request.release.id(), "launched local processes");
        let this = self.clone();
        client::blocking("launch", move || {
            let now = client::now_ms();
            let mut table = None;
            Ok(launched.started.iter().map(|r| this.observe(r, now, &mut table).0).collect())
        })
        .await
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let (this, query) = (self.clone(), query.clone());
        client::blocking("describe", move || this.describe_blocking(&query)).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let (this, named) = (self.clone(), ids.to_vec());
        let (records, targets) = client::blocking("terminate", move || this.terminating_blocking(&named)).await?;
        client::stop_all(targets, self.config.term_timeout).await;
        // Every process is gone: their records have nothing left to describe.
        let this = self.clone();
        client::blocking("terminate", move || this.delete_records(&records)).await
    }
}
