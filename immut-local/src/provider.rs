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

    fn instance(&self, record: &Record) -> Instance {
        let alive = !record.terminated && client::is_alive(record.pid, record.start_ticks);
        let observed =
            Observed { image: if alive { client::process_image(record.pid) } else { None }, machine_type: None };
        Instance {
            id: InstanceId::new(&record.id),
            state: if alive { InstanceState::Running } else { InstanceState::Terminated },
            provenance: Provenance::from_labels(&record.labels, LabelCharset::Any).map(Arc::new),
            labels: Arc::new(record.labels.clone()),
            observed: Arc::new(observed),
            address: Some(format!("127.0.0.1:{}", record.port)),
        }
    }

    async fn spawn_one(&self, request: &LaunchRequest, image: &Path, port: u16) -> Result<Record> {
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
        let pid =
            child.id().ok_or_else(|| Error::new(immut_core::ErrorKind::Unavailable, "the process exited at once"))?
                as i32;
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
        };
        client::write_record(&self.config.state_dir, &record)?;
        Ok(record)
    }
}

/// The id the local provider gives a process it did not launch.
const UNMANAGED_PREFIX: &str = "pid-";

impl LocalProvider {
    /// Processes started by hand from an executable that a managed instance of `service` (any
    /// service when `None`) runs, and that have a `PORT`: instances launched outside immut.
    fn unmanaged(&self, records: &[Record], service: Option<&str>) -> Vec<Instance> {
        let in_service = |r: &&Record| {
            service.is_none_or(|s| r.labels.get(immut_core::model::label_keys::SERVICE).is_some_and(|v| v == s))
        };
        let images: std::collections::HashSet<PathBuf> =
            records.iter().filter(in_service).map(|r| r.image.clone()).collect();
        let managed: std::collections::HashSet<i32> =
            records.iter().filter(|r| !r.terminated && client::is_alive(r.pid, r.start_ticks)).map(|r| r.pid).collect();
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
        let records = client::read_records(&self.config.state_dir)?;
        let visible = self.unmanaged(&records, None);
        let mut adopted = Vec::new();
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
            let record = Record {
                id: format!("{}-{pid}", provenance.service),
                pid,
                start_ticks: client::process_start(pid),
                port: client::process_port(pid).unwrap_or(0),
                image: PathBuf::from(instance.observed.image.clone().unwrap_or_default()),
                labels,
                launched_at_ms: client::now_ms(),
                terminated: false,
            };
            client::write_record(&self.config.state_dir, &record)?;
            adopted.push(self.instance(&record));
        }
        Ok(adopted)
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
        }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let image = self.verify_artifact(request)?;
        let policy = PortPolicy::parse(request.release.baseline().spec.params.get("port").map(String::as_str))?;
        client::prepare_state_dir(&self.config.state_dir)?;
        let listeners = policy.reserve(request.count)?;
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().map(|a| a.port()).unwrap_or_default()).collect();
        drop(listeners);
        let mut launched = Vec::with_capacity(ports.len());
        for port in ports {
            match self.spawn_one(request, &image, port).await {
                Ok(record) => launched.push(record),
                Err(e) => {
                    // Nothing half-launched: stop what this call started before reporting.
                    for r in &launched {
                        client::stop(r.pid, r.start_ticks, self.config.term_timeout).await;
                        let _ = client::write_record(&self.config.state_dir, &Record { terminated: true, ..r.clone() });
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(count = launched.len(), release = %request.release.id(), "launched local processes");
        Ok(launched.iter().map(|r| self.instance(r)).collect())
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let records = client::read_records(&self.config.state_dir)?;
        let mut found: Vec<Instance> = records.iter().map(|r| self.instance(r)).filter(|i| query.matches(i)).collect();
        if query.include_unmanaged {
            found.extend(self.unmanaged(&records, query.service.as_deref()).into_iter().filter(|i| query.matches(i)));
        }
        Ok(found)
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let records = client::read_records(&self.config.state_dir)?;
        let wanted: Vec<&Record> = records.iter().filter(|r| ids.iter().any(|id| id.as_str() == r.id)).collect();
        let timeout = self.config.term_timeout;
        // Processes started by hand are stopped too when named, if they still run a managed
        // executable (so a stale pid never hits an unrelated process). Only then is /proc scanned.
        let named_unmanaged = ids.iter().any(|id| Self::unmanaged_pid(id).is_some());
        let unmanaged: Vec<Instance> = if named_unmanaged { self.unmanaged(&records, None) } else { Vec::new() };
        let strays = ids
            .iter()
            .filter(|id| unmanaged.iter().any(|u| &u.id == *id))
            .filter_map(Self::unmanaged_pid)
            .map(|pid| (pid, client::process_start(pid)));
        let stops = wanted
            .iter()
            .map(|r| (r.pid, r.start_ticks))
            .chain(strays)
            .map(|(pid, start)| client::stop(pid, start, timeout));
        futures_util::future::join_all(stops).await;
        for r in wanted {
            if !r.terminated {
                client::write_record(&self.config.state_dir, &Record { terminated: true, ..r.clone() })?;
            }
        }
        Ok(())
    }
}
