//! Manual promotion: gates (`promote` of blue/green, `canary-step-N` of a canary) decided by
//! another process through the state location, so that a person or a CI job approves a
//! deployment that runs elsewhere.
//!
//! With `promotion = "manual"` in `[strategy]`, the deploying process holds at each gate and
//! polls for a verdict; `immut promote` (or `immut promote --reject REASON`) writes it. Both
//! are create-only objects, like everything on the state store, so the first verdict wins
//! and nothing is ever overwritten:
//!
//! | object | written by |
//! |---|---|
//! | `approvals/<service>/<deployment>/<gate>/waiting.json` | the deployer, when it first holds at the gate |
//! | `approvals/<service>/<deployment>/<gate>/verdict.json` | `immut promote` |
//!
//! The wait counts toward the progress deadline: a gate nobody decides in time rolls back.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use immut::engine::{Gate, GateVerdict};
use immut::state::StateStore;
use immut::strategy::FleetView;
use immut::{DeploymentId, Error, ErrorKind, Result};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::cli::Failure;
use crate::exit::Exit;
use crate::progress::{Mode, Progress};
use crate::state::State;

/// What approves a waiting gate.
pub const APPROVE: &str = "immut promote";
/// What rejects it.
pub const REJECT: &str = "immut promote --reject REASON";

/// A gate a deployment holds at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The service.
    pub service: String,
    /// The deployment.
    pub deployment: DeploymentId,
    /// The gate (`promote`, `canary-step-1`, ...).
    pub gate: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The deploying process (`host:pid`).
    pub by: String,
}

/// A decision on a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Approved (the deployment goes on) or rejected (it rolls back).
    pub approved: bool,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Who decided (`user@host`).
    pub by: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Verdict {
    /// A verdict by the user running this process, now.
    pub fn now(reject: Option<&str>) -> Verdict {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "someone".into());
        Verdict {
            approved: reject.is_none(),
            reason: reject.map(str::to_owned),
            by: format!("{user}@{}", immut::state::HostId::this_machine().hostname),
            at_ms: now_ms(),
        }
    }
}

/// The approvals on a state store.
#[derive(Debug, Clone)]
pub struct Approvals {
    store: StateStore,
}

impl Approvals {
    /// The approvals kept on `store`.
    pub fn new(store: StateStore) -> Approvals {
        Approvals { store }
    }

    fn key(&self, service: &str, deployment: &DeploymentId, gate: &str, leaf: &str) -> object_store::path::Path {
        self.store.key(&format!("approvals/{service}/{deployment}/{gate}/{leaf}.json"))
    }

    fn error(&self, doing: &str, e: object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, format!("state store {}: cannot {doing}: {e}", self.store.location()))
    }

    /// Creates the object unless it exists; returns the one already there otherwise.
    async fn create<T: Serialize + for<'de> Deserialize<'de>>(
        &self,
        key: &object_store::path::Path,
        value: &T,
    ) -> Result<Option<T>> {
        let (store, _) = self.store.object_store();
        let bytes = serde_json::to_vec_pretty(value).expect("approvals serialize");
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match store.put_opts(key, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(None),
            Err(object_store::Error::AlreadyExists { .. }) => self.read(key).await,
            Err(e) => Err(self.error(&format!("write {key}"), e)),
        }
    }

    async fn read<T: for<'de> Deserialize<'de>>(&self, key: &object_store::path::Path) -> Result<Option<T>> {
        let (store, _) = self.store.object_store();
        let bytes = match store.get(key).await {
            Ok(got) => got.bytes().await.map_err(|e| self.error(&format!("read {key}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(&format!("read {key}"), e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!(
                    "corrupt state in {}: {key} is not an approval object ({e}); remove it deliberately",
                    self.store.location()
                ),
            )
        })
    }

    /// The verdict on a gate, if any.
    pub async fn verdict(&self, service: &str, deployment: &DeploymentId, gate: &str) -> Result<Option<Verdict>> {
        self.read(&self.key(service, deployment, gate, "verdict")).await
    }

    /// Records that a deployment holds at a gate (once; a resumed deployment finds it there).
    pub async fn announce(&self, waiting: &Waiting) -> Result<()> {
        let key = self.key(&waiting.service, &waiting.deployment, &waiting.gate, "waiting");
        self.create(&key, waiting).await.map(|_| ())
    }

    /// Decides a gate. Returns the verdict that was already there, if another came first.
    pub async fn decide(
        &self,
        service: &str,
        deployment: &DeploymentId,
        gate: &str,
        verdict: &Verdict,
    ) -> Result<Option<Verdict>> {
        self.create(&self.key(service, deployment, gate, "verdict"), verdict).await
    }

    /// The gates of a deployment that wait for a verdict.
    pub async fn pending(&self, service: &str, deployment: &DeploymentId) -> Result<Vec<Waiting>> {
        let (store, _) = self.store.object_store();
        let prefix = self.store.key(&format!("approvals/{service}/{deployment}"));
        let metas: Vec<object_store::ObjectMeta> =
            store.list(Some(&prefix)).try_collect().await.map_err(|e| self.error(&format!("list {prefix}"), e))?;
        let mut waiting = Vec::new();
        for meta in metas.iter().filter(|m| m.location.filename() == Some("waiting.json")) {
            let Some(w) = self.read::<Waiting>(&meta.location).await? else { continue };
            if self.verdict(service, deployment, &w.gate).await?.is_none() {
                waiting.push(w);
            }
        }
        waiting.sort_by_key(|w| w.since_ms);
        Ok(waiting)
    }
}

/// The gate of a deploying process: verdicts come from the state location.
#[derive(Debug)]
pub struct ApprovalGate {
    approvals: Approvals,
    service: String,
    deployment: Arc<OnceLock<DeploymentId>>,
    mode: Mode,
    announced: Mutex<BTreeSet<String>>,
}

impl ApprovalGate {
    /// A gate for `service`'s deployment, whose id is set in `deployment` before it runs.
    pub fn new(approvals: Approvals, service: &str, deployment: Arc<OnceLock<DeploymentId>>, mode: Mode) -> Self {
        ApprovalGate { approvals, service: service.to_owned(), deployment, mode, announced: Mutex::default() }
    }

    /// Says, once per gate, that the deployment waits and how to decide it.
    fn tell(&self, deployment: &DeploymentId, gate: &str) {
        if !self.announced.lock().expect("announced").insert(gate.to_owned()) {
            return;
        }
        if self.mode == Mode::Json {
            let line = serde_json::json!({
                "event": "awaiting_approval",
                "service": self.service,
                "deployment": deployment,
                "gate": gate,
                "approve": APPROVE,
                "reject": REJECT,
            });
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        } else {
            Progress::note(
                self.mode,
                &format!(
                    "waiting for approval: gate {gate} of deployment {deployment}; run `{APPROVE}` to go on or `{REJECT}` to roll back"
                ),
            );
        }
    }
}

#[async_trait]
impl Gate for ApprovalGate {
    async fn evaluate(&self, name: &str, _view: &FleetView) -> GateVerdict {
        let Some(deployment) = self.deployment.get() else {
            return GateVerdict::Hold("the deployment has no id yet".into());
        };
        match self.approvals.verdict(&self.service, deployment, name).await {
            Ok(Some(v)) if v.approved => GateVerdict::Pass,
            Ok(Some(v)) => {
                GateVerdict::Fail(format!("rejected by {}: {}", v.by, v.reason.as_deref().unwrap_or("no reason given")))
            }
            Ok(None) => {
                let waiting = Waiting {
                    service: self.service.clone(),
                    deployment: deployment.clone(),
                    gate: name.to_owned(),
                    since_ms: now_ms(),
                    by: format!("{}:{}", immut::state::HostId::this_machine().hostname, std::process::id()),
                };
                if !self.announced.lock().expect("announced").contains(name)
                    && let Err(e) = self.approvals.announce(&waiting).await
                {
                    return GateVerdict::Hold(format!("cannot record that gate {name} waits ({e}); trying again"));
                }
                self.tell(deployment, name);
                GateVerdict::Hold(format!("waiting for approval of gate {name}: `{APPROVE}` or `{REJECT}`"))
            }
            Err(e) => GateVerdict::Hold(format!("cannot read the verdict on gate {name} ({e}); trying again")),
        }
    }
}

/// What `immut promote` decided.
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    /// The service.
    pub service: String,
    /// The deployment.
    pub deployment: DeploymentId,
    /// The gate.
    pub gate: String,
    /// The verdict written.
    pub verdict: Verdict,
}

/// `immut promote`: decides the gate that the service's deployment in flight waits at
/// (`gate` names it when several wait). Refused, changing nothing, when no deployment is in
/// flight, none of its gates waits, or another verdict came first.
pub async fn promote(
    state: &State,
    service: &str,
    gate: Option<&str>,
    reject: Option<&str>,
) -> std::result::Result<Decided, Failure> {
    let refuse = |message: String| Failure { exit: Exit::Refused, message };
    let provider_error = |e: Error| Failure { exit: Exit::of_error(e.kind()), message: e.to_string() };
    let read = immut::journal::Journal::read_last(&*state.journal, service).map_err(provider_error)?;
    let Some(flight) = immut::journal::interrupted(&read) else {
        return Err(refuse(format!(
            "no deployment of {service} is in flight, so nothing waits for approval; nothing changed"
        )));
    };
    let deployment = flight.deployment;
    if let Some(reason) = &flight.rolling_back {
        return Err(refuse(format!(
            "deployment {deployment} of {service} is rolling back ({reason}); there is nothing to approve; nothing changed"
        )));
    }
    let approvals = Approvals::new(state.approvals.clone());
    let pending = approvals.pending(service, &deployment).await.map_err(provider_error)?;
    let names: Vec<&str> = pending.iter().map(|w| w.gate.as_str()).collect();
    let not_waiting = || {
        refuse(format!(
            "deployment {deployment} of {service} is not waiting for approval (yet): `immut status` shows when it is; nothing changed"
        ))
    };
    let gate = match gate {
        Some(g) if names.contains(&g) => g.to_owned(),
        Some(g) if flight.passed_gates.contains(g) => {
            return Err(refuse(format!("gate {g} of deployment {deployment} has passed already; nothing changed")));
        }
        Some(_) if names.is_empty() => return Err(not_waiting()),
        Some(g) => {
            return Err(Failure {
                exit: Exit::BadInput,
                message: format!(
                    "deployment {deployment} does not wait at gate {g:?}; it waits at {}",
                    names.join(", ")
                ),
            });
        }
        None => match names.as_slice() {
            [] => return Err(not_waiting()),
            [one] => (*one).to_owned(),
            _ => {
                return Err(Failure {
                    exit: Exit::BadInput,
                    message: format!(
                        "deployment {deployment} waits at {} gates: {}; name one with --gate",
                        names.len(),
                        names.join(", ")
                    ),
                });
            }
        },
    };
    let verdict = Verdict::now(reject);
    if let Some(earlier) = approvals.decide(service, &deployment, &gate, &verdict).await.map_err(provider_error)? {
        return Err(refuse(format!(
            "gate {gate} of deployment {deployment} was already {} by {}; nothing changed",
            if earlier.approved { "approved" } else { "rejected" },
            earlier.by
        )));
    }
    Ok(Decided { service: service.to_owned(), deployment, gate, verdict })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
