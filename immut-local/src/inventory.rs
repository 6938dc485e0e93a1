//! What runs, read without trusting any one state file, and the repair of the files that
//! cannot be read: the path out of "corrupt state", which stops every other operation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use immut_core::model::label_keys;
use immut_core::{InstanceId, InstanceState, Result};
use serde::Serialize;

use crate::balancer::{self, LocalBalancer};
use crate::client::{self, Corrupt, ProcTable, Record};
use crate::provider::{LocalProvider, env};

/// A state file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptFile {
    /// The file.
    pub path: PathBuf,
    /// Where the parser stopped (from 1).
    pub line: usize,
    /// The column there.
    pub column: usize,
    /// What the parser said.
    pub reason: String,
}

impl From<Corrupt> for CorruptFile {
    fn from(c: Corrupt) -> Self {
        CorruptFile { path: c.path, line: c.line, column: c.column, reason: c.reason }
    }
}

/// An instance as its (readable) record and `/proc` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryInstance {
    /// Instance id.
    pub id: String,
    /// Service, from its labels.
    pub service: Option<String>,
    /// Artifact version, from its labels.
    pub version: Option<String>,
    /// Its process, once started.
    pub pid: Option<i32>,
    /// Its port.
    pub port: u16,
    /// What describe would say.
    pub state: InstanceState,
    /// Its record.
    pub record: PathBuf,
}

/// A live process launched from this state directory (it carries the directory and its
/// instance id in its environment) that no readable record describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryProcess {
    /// The process (the leader of its group when it has one).
    pub pid: i32,
    /// The instance id it carries.
    pub instance: String,
    /// Service, from the record it carries.
    pub service: Option<String>,
    /// Artifact version, from the record it carries.
    pub version: Option<String>,
    /// Its port.
    pub port: Option<u16>,
    /// Whether its record can be rebuilt from its environment ([`LocalProvider::repair`]).
    pub rebuildable: bool,
}

/// A service's balancer, as its state file and `/proc` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryBalancer {
    /// The service.
    pub service: String,
    /// Where it listens (when its state can be read).
    pub address: Option<SocketAddr>,
    /// Its process, while it runs.
    pub pid: Option<i32>,
    /// Whether it runs.
    pub running: bool,
    /// The serving set it persisted.
    pub serving: Vec<InstanceId>,
    /// Its state file.
    pub state: PathBuf,
    /// Set when that file cannot be read.
    pub corrupt: Option<CorruptFile>,
}

/// What runs and what the state directory says, read without trusting any one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Instances with a readable record.
    pub instances: Vec<InventoryInstance>,
    /// Live processes launched from here that no readable record describes.
    pub unrecorded: Vec<InventoryProcess>,
    /// Instance records and balancer states that cannot be read.
    pub corrupt: Vec<CorruptFile>,
    /// The balancers.
    pub balancers: Vec<InventoryBalancer>,
}

impl Inventory {
    /// Nothing unreadable and nothing unrecorded.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.unrecorded.is_empty()
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = format!("state directory {}\n", self.state_dir.display());
        out.push_str(&format!(
            "{:<22} {:<12} {:<9} {:>8} {:>6}  STATE\n",
            "INSTANCE", "SERVICE", "VERSION", "PID", "PORT"
        ));
        for i in &self.instances {
            out.push_str(&format!(
                "{:<22} {:<12} {:<9} {:>8} {:>6}  {:?}\n",
                i.id,
                i.service.as_deref().unwrap_or("-"),
                i.version.as_deref().unwrap_or("-"),
                i.pid.map_or("-".to_owned(), |p| p.to_string()),
                i.port,
                i.state
            ));
        }
        if !self.unrecorded.is_empty() {
            out.push_str("running without a readable record (launched from this directory):\n");
            for p in &self.unrecorded {
                out.push_str(&format!(
                    "  {} pid {} {} {} port {} ({})\n",
                    p.instance,
                    p.pid,
                    p.service.as_deref().unwrap_or("-"),
                    p.version.as_deref().unwrap_or("-"),
                    p.port.map_or("-".to_owned(), |p| p.to_string()),
                    if p.rebuildable {
                        "`immut repair --yes` rebuilds its record"
                    } else {
                        "its record cannot be rebuilt"
                    }
                ));
            }
        }
        if !self.corrupt.is_empty() {
            out.push_str("unreadable files:\n");
            for c in &self.corrupt {
                out.push_str(&format!("  {}: line {}, column {}: {}\n", c.path.display(), c.line, c.column, c.reason));
            }
        }
        for b in &self.balancers {
            out.push_str(&format!(
                "balancer of {}: {} {} serving {:?}\n",
                b.service,
                b.address.map_or("address unknown".to_owned(), |a| format!("http://{a}")),
                match (b.running, b.pid) {
                    (true, Some(pid)) => format!("(pid {pid}, running)"),
                    _ => "(not running)".to_owned(),
                },
                b.serving.iter().map(InstanceId::as_str).collect::<Vec<_>>()
            ));
        }
        out
    }
}

/// What [`LocalProvider::repair`] did, and the inventory after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repair {
    /// Unreadable files moved aside: (from, to).
    pub quarantined: Vec<(PathBuf, PathBuf)>,
    /// Instance records rebuilt from their running process.
    pub rebuilt: Vec<String>,
    /// Balancers whose state was written again from the running balancer's memory.
    pub rewritten_balancers: Vec<String>,
    /// What runs after the repair.
    pub inventory: Inventory,
}

impl LocalProvider {
    /// What runs and what the state directory says, without trusting any one file: readable
    /// instance records (with what describe would say of them), live processes launched from
    /// this directory that no readable record describes, unreadable files (with the line), and
    /// the balancers. It changes nothing.
    pub async fn inventory(&self) -> Result<Inventory> {
        let this = self.clone();
        client::blocking("inventory", move || this.inventory_blocking()).await
    }

    /// Repairs what [`LocalProvider::inventory`] finds: moves unreadable instance records and
    /// balancer states to `<state_dir>/quarantine/`, rebuilds the record of every live process
    /// launched from this directory from the record it carries in its environment (so it is
    /// managed again, and the next deployment replaces or keeps it), and has a running
    /// balancer write its state again from memory. A record of a process started by hand and
    /// adopted cannot be rebuilt: after the repair that process shows as unmanaged.
    pub async fn repair(&self) -> Result<Repair> {
        let this = self.clone();
        let (quarantined, rebuilt, corrupt_balancers) =
            client::blocking("repair", move || this.repair_blocking()).await?;
        let mut rewritten_balancers = Vec::new();
        for service in corrupt_balancers {
            if LocalBalancer::persist_running(self.state_dir(), &service).await? {
                rewritten_balancers.push(service);
            }
        }
        let inventory = self.inventory().await?;
        Ok(Repair { quarantined, rebuilt, rewritten_balancers, inventory })
    }

    fn inventory_blocking(&self) -> Result<Inventory> {
        let dir = self.state_dir().to_owned();
        let absolute = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let mut corrupt = Vec::new();
        let mut records = Vec::new();
        for (path, read) in client::scan_records(&dir)? {
            match read {
                Ok(record) => records.push((path, record)),
                Err(c) => corrupt.push(CorruptFile::from(c)),
            }
        }
        let now = client::now_ms();
        let mut table = None;
        let instances = records
            .iter()
            .map(|(path, r)| {
                let (instance, _) = self.observe(r, now, &mut table);
                InventoryInstance {
                    id: r.id.clone(),
                    service: r.labels.get(label_keys::SERVICE).cloned(),
                    version: r.labels.get(label_keys::VERSION).cloned(),
                    pid: instance.state.is_live().then_some(r.pid).flatten(),
                    port: r.port,
                    state: instance.state,
                    record: path.clone(),
                }
            })
            .collect();
        let unrecorded = unrecorded(&absolute, &records.iter().map(|(_, r)| r.id.clone()).collect::<Vec<_>>());
        let mut balancers = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("balancers")) {
            for entry in entries.flatten() {
                let service = entry.file_name().to_string_lossy().into_owned();
                let state = entry.path().join("state.json");
                match balancer::scan_state(&entry.path()) {
                    Ok(Some(s)) => {
                        let running = s.pid.is_some_and(|pid| immut_core::process::is_alive(pid, s.start_ticks));
                        balancers.push(InventoryBalancer {
                            service,
                            address: Some(s.address),
                            pid: s.pid.filter(|_| running),
                            running,
                            serving: s.serving.into_iter().map(|(id, _)| id).collect(),
                            state,
                            corrupt: None,
                        });
                    }
                    Ok(None) => {}
                    Err(c) => {
                        let c = CorruptFile::from(c);
                        corrupt.push(c.clone());
                        balancers.push(InventoryBalancer {
                            service,
                            address: None,
                            pid: None,
                            running: false,
                            serving: Vec::new(),
                            state,
                            corrupt: Some(c),
                        });
                    }
                }
            }
        }
        balancers.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(Inventory { state_dir: absolute, instances, unrecorded, corrupt, balancers })
    }

    #[allow(clippy::type_complexity)]
    fn repair_blocking(&self) -> Result<(Vec<(PathBuf, PathBuf)>, Vec<String>, Vec<String>)> {
        let dir = self.state_dir().to_owned();
        let before = self.inventory_blocking()?;
        let mut quarantined = Vec::new();
        let mut corrupt_balancers = Vec::new();
        for c in &before.corrupt {
            let to = quarantine(&dir, &c.path)?;
            quarantined.push((c.path.clone(), to));
        }
        for b in &before.balancers {
            if b.corrupt.is_some() {
                corrupt_balancers.push(b.service.clone());
            }
        }
        // Rebuild what runs without a record, from the record it carries.
        let readable: Vec<String> =
            client::scan_records(&dir)?.into_iter().filter_map(|(_, r)| r.ok().map(|r| r.id)).collect();
        let mut table = ProcTable::read();
        let mut rebuilt = Vec::new();
        for p in unrecorded(&before.state_dir, &readable) {
            let carried = client::process_env(p.pid).into_iter().find(|(k, _)| k == env::RECORD).map(|(_, v)| v);
            let Some(record) = carried.and_then(|json| serde_json::from_str::<Record>(&json).ok()) else { continue };
            let Some(start) = table.start_of(p.pid) else { continue };
            let record = Record { pid: Some(p.pid), start_ticks: Some(start), launcher: None, group: true, ..record };
            if record.id != p.instance || client::read_record(&dir, &record.id).is_ok_and(|r| r.is_some()) {
                continue;
            }
            client::write_record(&dir, &record)?;
            rebuilt.push(record.id);
        }
        let _ = &mut table;
        Ok((quarantined, rebuilt, corrupt_balancers))
    }
}

/// Live processes that carry `state_dir` and an instance id that is not in `recorded`, one per
/// instance (the leader of its group when it has one).
fn unrecorded(state_dir: &Path, recorded: &[String]) -> Vec<InventoryProcess> {
    let mut table = ProcTable::read();
    let wanted = state_dir.display().to_string();
    let from_here: Vec<i32> =
        table.with_env(env::STATE_DIR).into_iter().filter(|(_, v)| *v == wanted).map(|(p, _)| p).collect();
    let mut by_instance: BTreeMap<String, InventoryProcess> = BTreeMap::new();
    for pid in from_here {
        let vars = table.env(pid).to_vec();
        let get = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let Some(instance) = get(env::INSTANCE_ID) else { continue };
        if recorded.contains(&instance) {
            continue;
        }
        let carried = get(env::RECORD).and_then(|json| serde_json::from_str::<Record>(&json).ok());
        let leader = client::stat(pid).is_some_and(|(_, pgrp, _)| pgrp == pid);
        let entry = InventoryProcess {
            pid,
            instance: instance.clone(),
            service: get(env::SERVICE),
            version: get(env::ARTIFACT_VERSION),
            port: get(env::PORT).and_then(|p| p.parse().ok()),
            rebuildable: carried.is_some_and(|r| r.id == instance),
        };
        match by_instance.get(&instance) {
            Some(_) if !leader => {}
            _ => {
                by_instance.insert(instance, entry);
            }
        }
    }
    by_instance.into_values().collect()
}

/// Moves an unreadable file into `<state_dir>/quarantine/`, under a name that says where it
/// came from and when.
fn quarantine(state_dir: &Path, path: &Path) -> Result<PathBuf> {
    let into = client::quarantine_dir(state_dir);
    std::fs::create_dir_all(&into).map_err(|e| client::map_io(e, "create the quarantine directory", &into))?;
    let relative = path.strip_prefix(state_dir).unwrap_or(path);
    let name = relative.to_string_lossy().replace('/', "__");
    let to = into.join(format!("{name}.{}", client::now_ms()));
    std::fs::rename(path, &to).map_err(|e| client::map_io(e, "move an unreadable file aside", path))?;
    Ok(to)
}
