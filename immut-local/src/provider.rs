use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use immut_core::model::{LabelCharset, Observed};
use immut_core::{
    Adopt, Capabilities, Error, Instance, InstanceId, InstanceState, LaunchRequest, Provenance, Provider, Query, Result,
};

use crate::builder::BalancerBuilder;
use crate::client::{self, PortPolicy, Record, map_io};
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
}

/// Real OS processes on 127.0.0.1, one port each, recorded in a state directory.
///
/// Processes run in their own process group, so they outlive the deploying process and a
/// Ctrl-C in its terminal. `describe` checks each recorded process by pid *and* start time,
/// so a dead process shows as terminated and a reused pid, or a process started by hand, is
/// never mistaken for a managed instance.
///
/// A record lives as long as its process may run: `terminate` deletes it once the process is
/// gone, so the state directory holds the live fleet, not its history. The record of a
/// process that died on its own stays, described as terminated, for 15 minutes. Every
/// file-system and `/proc` access runs on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    config: Arc<LocalConfig>,
}

impl LocalProvider {
    pub(crate) fn new(config: LocalConfig) -> Self {
        LocalProvider { config: Arc::new(config) }
    }

    /// A builder.
    pub fn builder() -> crate::LocalBuilder {
        crate::LocalBuilder::new()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// A balancer builder wired to this provider: it refuses unknown instances and persists its
    /// serving set in the state directory.
    pub fn balancer(&self) -> BalancerBuilder {
        BalancerBuilder::default().state_dir(self.config.state_dir.clone())
    }

    /// The log file of an instance.
    pub fn log_path(&self, id: &InstanceId) -> PathBuf {
        client::logs_dir(&self.config.state_dir).join(format!("{id}.log"))
    }

    fn verify_artifact(&self, request: &LaunchRequest) -> Result<PathBuf> {
        let artifact = request.release.artifact();
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
                    request.release.id()
                ),
            ));
        }
        Ok(image)
    }

    /// What a record says now, and what becomes of the record. Reads `/proc`.
    fn observe(&self, record: &Record, now_ms: u64) -> (Instance, Keep) {
        let alive = client::is_alive(record.pid, record.start_ticks);
        let (state, keep) = match (alive, record.terminated, record.gone_at_ms) {
            (true, false, _) => (InstanceState::Running, Keep::Yes),
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
            Observed { image: if alive { client::process_image(record.pid) } else { None }, machine_type: None };
        let instance = Instance {
            id: InstanceId::new(&record.id),
            state,
            provenance: Provenance::from_labels(&record.labels, LabelCharset::Any).map(Arc::new),
            labels: Arc::new(record.labels.clone()),
            observed: Arc::new(observed),
            address: Some(format!("127.0.0.1:{}", record.port)),
        };
        (instance, keep)
    }

    /// Applies what [`LocalProvider::observe`] decided. Housekeeping never fails a describe: a
    /// record that cannot be deleted now is deleted by a later one.
    fn housekeep(&self, record: &Record, keep: Keep, now_ms: u64) {
        let dir = &self.config.state_dir;
        let done = match keep {
            Keep::Yes => return,
            Keep::Delete => client::delete_record(dir, &record.id),
            Keep::MarkGone => client::write_record(dir, &Record { gone_at_ms: Some(now_ms), ..record.clone() }),
        };
        if let Err(e) = done {
            tracing::warn!(id = %record.id, error = %e, "could not tidy an instance record");
        }
    }

    /// `describe`, on the calling thread: it reads the state directory and `/proc`.
    fn describe_blocking(&self, query: &Query) -> Result<Vec<Instance>> {
        let records = client::read_records(&self.config.state_dir)?;
        let now = client::now_ms();
        let mut found = Vec::new();
        for record in &records {
            let (instance, keep) = self.observe(record, now);
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

    /// Verifies the artifact, reserves the ports and starts the processes, on the calling
    /// thread. On a failure part-way it returns what it started with the error, so that the
    /// caller stops them before it reports.
    fn launch_blocking(&self, request: &LaunchRequest) -> (Vec<Record>, Option<Error>) {
        let prepared = (|| {
            let image = self.verify_artifact(request)?;
            let policy = PortPolicy::parse(request.release.baseline().spec.params.get("port").map(String::as_str))?;
            client::prepare_state_dir(&self.config.state_dir)?;
            client::remember_image(&self.config.state_dir, request.release.service(), &image)?;
            let listeners = policy.reserve(request.count)?;
            let ports: Vec<u16> =
                listeners.iter().map(|l| l.local_addr().map(|a| a.port()).unwrap_or_default()).collect();
            Ok::<_, Error>((image, ports))
        })();
        let (image, ports) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut launched = Vec::with_capacity(ports.len());
        for port in ports {
            match self.spawn_one(request, &image, port) {
                Ok(record) => launched.push(record),
                Err(e) => return (launched, Some(e)),
            }
        }
        (launched, None)
    }

    /// Starts one process and writes its record. Runs on the blocking pool, inside the runtime,
    /// so that tokio still reaps the process if it exits while this one lives.
    fn spawn_one(&self, request: &LaunchRequest, image: &Path, port: u16) -> Result<Record> {
        let spec = &request.release.baseline().spec;
        let seq = client::now_ms();
        let log_path =
            client::logs_dir(&self.config.state_dir).join(format!("{}-{port}-{seq}.log", request.release.service()));
        let log = std::fs::File::create(&log_path).map_err(|e| map_io(e, "create log file", &log_path))?;
        let log_err = log.try_clone().map_err(|e| map_io(e, "create log file", &log_path))?;
        let args = spec.args.iter().map(|a| a.replace("{port}", &port.to_string()));
        let mut command = tokio::process::Command::new(image);
        command
            .args(args)
            .envs(&spec.env)
            .env(env::PORT, port.to_string())
            .env(env::SERVICE, request.release.service())
            .env(env::RELEASE, request.release.id().as_str())
            .env(env::ARTIFACT_VERSION, request.release.artifact().version.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn().map_err(|e| map_io(e, "start", image))?;
        let pid = child.id().ok_or_else(|| {
            Error::new(immut_core::ErrorKind::Unavailable, "the process exited at once")
                .with_provider("local")
                .with_operation("launch")
        })? as i32;
        // Dropping the handle leaves the process running; tokio reaps it if it exits while
        // this process lives.
        drop(child);
        let id = format!("{}-{pid}", request.release.service());
        let final_log = self.log_path(&InstanceId::new(&id));
        let _ = std::fs::rename(&log_path, &final_log);
        let record = Record {
            id,
            pid,
            start_ticks: client::process_start(pid),
            port,
            image: image.to_owned(),
            labels: request.labels(LabelCharset::Any),
            launched_at_ms: client::now_ms(),
            terminated: false,
            gone_at_ms: None,
        };
        if let Err(e) = client::write_record(&self.config.state_dir, &record) {
            // Without its record nobody could find or stop the process: stop it now.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            return Err(e);
        }
        Ok(record)
    }
}

/// What becomes of a record after a describe looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    Delete,
    MarkGone,
}

/// The id the local provider gives a process it did not launch.
const UNMANAGED_PREFIX: &str = "pid-";

impl LocalProvider {
    /// Processes started by hand from an executable that a managed instance of `service` (any
    /// service when `None`) runs or ran, and that have a `PORT`: instances launched outside
    /// immut. It scans `/proc`: call it from blocking code only.
    fn unmanaged(&self, records: &[Record], service: Option<&str>) -> Vec<Instance> {
        let in_service = |r: &&Record| {
            service.is_none_or(|s| r.labels.get(immut_core::model::label_keys::SERVICE).is_some_and(|v| v == s))
        };
        // Records written before the images index existed still name their executable.
        let mut images = client::remembered_images(&self.config.state_dir, service);
        images.extend(records.iter().filter(in_service).map(|r| r.image.clone()));
        // A managed process being terminated is still managed, even if it was adopted and so
        // lacks the environment that marks immut's own launches.
        let managed: std::collections::HashSet<i32> =
            records.iter().filter(|r| client::is_alive(r.pid, r.start_ticks)).map(|r| r.pid).collect();
        client::processes_running(&images)
            .into_iter()
            .filter(|(pid, _, _)| !managed.contains(pid))
            .map(|(pid, exe, port)| Instance {
                id: InstanceId::new(format!("{UNMANAGED_PREFIX}{pid}")),
                state: InstanceState::Running,
                provenance: None,
                labels: Arc::default(),
                observed: Arc::new(Observed { image: Some(exe.display().to_string()), machine_type: None }),
                address: port.map(|p| format!("127.0.0.1:{p}")),
            })
            .collect()
    }

    fn unmanaged_pid(id: &InstanceId) -> Option<i32> {
        id.as_str().strip_prefix(UNMANAGED_PREFIX)?.parse().ok()
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
            let (Some(instance), Some(pid)) = (found, Self::unmanaged_pid(id)) else {
                return Err(Error::new(
                    immut_core::ErrorKind::NotFound,
                    "not a process started by hand from a managed executable",
                )
                .with_provider("local")
                .with_operation("adopt")
                .with_ids([id.clone()]));
            };
            let labels = provenance.signed_labels(LabelCharset::Any, signature);
            let image = PathBuf::from(instance.observed.image.clone().unwrap_or_default());
            client::remember_image(&self.config.state_dir, &provenance.service, &image)?;
            let record = Record {
                id: format!("{}-{pid}", provenance.service),
                pid,
                start_ticks: client::process_start(pid),
                port: client::process_port(pid).unwrap_or(0),
                image,
                labels,
                launched_at_ms: now,
                terminated: false,
                gone_at_ms: None,
            };
            client::write_record(&self.config.state_dir, &record)?;
            adopted.push(self.observe(&record, now).0);
        }
        Ok(adopted)
    }

    /// Marks the named instances as terminating and finds what to stop: the recorded
    /// processes, and the processes started by hand that are named and still run a managed
    /// executable (so that a stale pid never hits an unrelated process).
    fn terminating_blocking(&self, ids: &[InstanceId]) -> Result<(Vec<String>, Vec<client::ProcessId>)> {
        let records = client::read_records(&self.config.state_dir)?;
        let wanted: Vec<&Record> = records.iter().filter(|r| ids.iter().any(|id| id.as_str() == r.id)).collect();
        for r in &wanted {
            if !r.terminated {
                client::write_record(&self.config.state_dir, &Record { terminated: true, ..(*r).clone() })?;
            }
        }
        // Only a named hand-started process is worth a scan of /proc.
        let named_unmanaged = ids.iter().any(|id| Self::unmanaged_pid(id).is_some());
        let unmanaged: Vec<Instance> = if named_unmanaged { self.unmanaged(&records, None) } else { Vec::new() };
        let strays = ids
            .iter()
            .filter(|id| unmanaged.iter().any(|u| &u.id == *id))
            .filter_map(Self::unmanaged_pid)
            .map(|pid| (pid, client::process_start(pid)));
        let targets = wanted.iter().map(|r| (r.pid, r.start_ticks)).chain(strays).collect();
        Ok((wanted.iter().map(|r| r.id.clone()).collect(), targets))
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
            consistency_window: std::time::Duration::ZERO,
            // An exiting process holds no quota on this machine.
            lingering_holds_quota: false,
        }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let (this, req) = (self.clone(), request.clone());
        let (launched, failed) = client::blocking("launch", move || Ok(this.launch_blocking(&req))).await?;
        if let Some(e) = failed {
            // Nothing half-launched: stop what this call started before reporting.
            let ids: Vec<String> = launched.iter().map(|r| r.id.clone()).collect();
            client::stop_all(launched.iter().map(|r| (r.pid, r.start_ticks)).collect(), self.config.term_timeout).await;
            let this = self.clone();
            if let Err(cleanup) = client::blocking("launch", move || this.delete_records(&ids)).await {
                tracing::warn!(error = %cleanup, "could not delete the records of a failed launch");
            }
            return Err(e);
        }
        tracing::info!(count = launched.len(), release = %request.release.id(), "launched local processes");
        let this = self.clone();
        client::blocking("launch", move || {
            let now = client::now_ms();
            Ok(launched.iter().map(|r| this.observe(r, now).0).collect())
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
