//! The balancer's files and its control channel: one directory per service
//! (`<state_dir>/balancers/<service>/`, mode 0700) holding its state, its log and a Unix
//! socket (mode 0600) that takes one JSON request per connection and answers one JSON line.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use immut_core::{InstanceId, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::client::{self, Corrupt, map_io};

use super::{BalancerStatus, Protocol};

/// The control socket, in the service's balancer directory.
pub(crate) const SOCKET: &str = "control.sock";
/// The balancer's state: address, protocol, process and serving set.
pub(crate) const STATE: &str = "state.json";
/// The balancer process's stdout and stderr.
pub(crate) const LOG: &str = "balancer.log";
/// Held by the running balancer process for its whole life: one per service.
pub(crate) const DAEMON_LOCK: &str = "daemon.lock";
/// Held by whoever starts the balancer, so that two deployers never start two.
pub(crate) const START_LOCK: &str = "start.lock";

/// The directory of `service`'s balancer.
pub(crate) fn dir(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("balancers").join(service)
}

/// Creates a balancer directory readable by its owner only.
pub(crate) fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| map_io(e, "create the balancer directory", dir).with_field("state_dir"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| map_io(e, "restrict the balancer directory", dir).with_field("state_dir"))
}

/// What the balancer process persists, written atomically on every change of the serving set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub service: String,
    /// Where it listens; every start listens here again.
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// The running balancer process (`None` once it stopped).
    pub pid: Option<i32>,
    pub start_ticks: Option<u64>,
    pub serving: Vec<(InstanceId, SocketAddr)>,
    pub updated_at_ms: u64,
}

/// Reads a balancer's state; `None` when it never ran. A state that does not parse is an error
/// naming the file and the line.
pub(crate) fn read_state(dir: &Path) -> Result<Option<State>> {
    let path = dir.join(STATE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| Corrupt::of(&path, &e).error("balancer state"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(map_io(e, "read the balancer state", &path)),
    }
}

/// Reads a balancer's state without failing on a corrupt file: for the inventory.
pub(crate) fn scan_state(dir: &Path) -> std::result::Result<Option<State>, Corrupt> {
    let path = dir.join(STATE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Corrupt::of(&path, &e)),
        Err(_) => Ok(None),
    }
}

pub(crate) fn write_state(dir: &Path, state: &State) -> io::Result<()> {
    client::write_atomic(&dir.join(STATE), &serde_json::to_vec_pretty(state).expect("states serialize"))
}

/// A request on the control socket. It names the service: a balancer refuses requests for
/// another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    pub service: String,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// Who it is and what it serves.
    Status,
    /// Adds backends to the serving set.
    Attach { backends: Vec<(InstanceId, SocketAddr)> },
    /// Removes backends, then waits for their in-flight requests, for at most `drain_ms`.
    Detach { ids: Vec<InstanceId>, drain_ms: u64 },
    /// Both in one change of the serving set, then the drain.
    Switch { attach: Vec<(InstanceId, SocketAddr)>, detach: Vec<InstanceId>, drain_ms: u64 },
    /// Writes the state file again from memory (the repair of a corrupt state file).
    Persist,
    /// Stops the balancer process.
    Stop,
}

/// The answer to a request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ids the error is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BalancerStatus>,
    /// After a drain: requests still in flight when the drain timeout passed.
    #[serde(default)]
    pub left_in_flight: usize,
}

impl Reply {
    pub(crate) fn ok() -> Reply {
        Reply { ok: true, ..Reply::default() }
    }

    pub(crate) fn error(message: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(message.into()), ..Reply::default() }
    }
}

/// The largest request or answer on the control socket.
pub(crate) const MAX_LINE: usize = 4 << 20;

/// Sends one request and reads its answer, within `timeout`.
pub(crate) async fn call(socket: &Path, request: &Request, timeout: Duration) -> io::Result<Reply> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        let mut line = serde_json::to_vec(request).expect("requests serialize");
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        if answer.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the balancer closed the control connection"));
        }
        serde_json::from_str::<Reply>(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the balancer did not answer in time")))
}
