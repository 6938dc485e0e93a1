//! `immut repair` and `immut stop-balancer`: the local provider's own upkeep.
//!
//! Corrupt state stops every command with the file and the position and changes nothing.
//! `immut repair` shows what runs whatever the state files say (processes whose record is
//! unreadable among them) and what cannot be read, the service's journal included; with
//! `--yes` it moves the unreadable files to `<state_dir>/quarantine/` (a journal kept in a
//! directory to `<state>/quarantine/`), rebuilds the records of running instances from their
//! environment, and has a running balancer write its state again. A journal moved aside cannot
//! be resumed: deploy the release you want, and the engine replaces the rest.

use std::path::{Path, PathBuf};

use immut::journal::Journal;
use immut::local::{LocalBalancer, LocalProvider};
use immut::{Error, ErrorKind, Result};
use serde_json::json;

use crate::exit::Exit;
use crate::spec::{LocalSettings, ProviderSettings, Spec};
use crate::state::State;

/// What a command prints and how it ends.
#[derive(Debug)]
pub struct Report {
    /// For `--json`.
    pub json: serde_json::Value,
    /// For people.
    pub text: String,
    /// The exit code.
    pub exit: Exit,
}

fn local(spec: &Spec, command: &str) -> Result<LocalSettings> {
    match &spec.provider {
        ProviderSettings::Local(s) => Ok(s.clone()),
        other => Err(Error::invalid(
            "provider.kind",
            format!("`immut {command}` is for the local provider; this spec's provider is {}", other.kind()),
        )),
    }
}

/// Why the service's journal cannot be trusted, if it cannot: an error no retry cures.
fn journal_problem(state: &State, service: &str) -> Option<String> {
    match state.journal.read(service) {
        Err(e) if !e.is_retryable() => Some(format!("the journal of {service} cannot be read: {e}")),
        _ => None,
    }
}

/// `immut repair [--yes]`.
pub async fn repair(spec: &Spec, state: &State, yes: bool) -> Result<Report> {
    let settings = local(spec, "repair")?;
    let provider = LocalProvider::builder().state_dir(&settings.state_dir).build()?;
    let service = &spec.service;
    let problem = journal_problem(state, service);
    if !yes {
        let inventory = provider.inventory().await?;
        let mut text = inventory.table();
        if let Some(p) = &problem {
            text.push_str(&format!("{p}\n"));
        }
        let clean = inventory.is_clean() && problem.is_none();
        text.push_str(if clean {
            "nothing to repair"
        } else {
            "run `immut repair --yes` to move the unreadable files aside and rebuild the records of running instances"
        });
        return Ok(Report {
            json: json!({ "inventory": inventory, "unreadable_journal": problem, "repaired": false }),
            text,
            exit: if clean { Exit::Success } else { Exit::Findings },
        });
    }
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut left = Vec::new();
    if let Some(problem) = problem {
        match state.dir() {
            Some(dir) => moved.extend(quarantine_journal(&dir, service)?),
            None => left.push(format!(
                "{problem}; it is on {}: remove the objects under journal/{service}/ there deliberately",
                state.location
            )),
        }
    }
    let repaired = provider.repair().await?;
    moved.extend(repaired.quarantined.iter().cloned());
    let mut text = String::new();
    for (from, to) in &moved {
        text.push_str(&format!("moved {} aside to {}\n", from.display(), to.display()));
    }
    for id in &repaired.rebuilt {
        text.push_str(&format!("rebuilt the record of {id} from its running process\n"));
    }
    for service in &repaired.rewritten_balancers {
        text.push_str(&format!("the running balancer of {service} wrote its state again\n"));
    }
    text.push_str(&repaired.inventory.table());
    for line in &left {
        text.push_str(&format!("{line}\n"));
    }
    let clean = repaired.inventory.is_clean() && left.is_empty();
    Ok(Report {
        json: json!({
            "moved": moved,
            "rebuilt": repaired.rebuilt,
            "rewritten_balancers": repaired.rewritten_balancers,
            "inventory": repaired.inventory,
            "unreadable_journal": left,
            "repaired": true,
        }),
        text: text.trim_end().to_owned(),
        exit: if clean { Exit::Success } else { Exit::Findings },
    })
}

/// Moves a service's journal records (`<dir>/journal/journal/<service>`) to `<dir>/quarantine/`.
fn quarantine_journal(dir: &Path, service: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
    let records = dir.join("journal").join("journal").join(service);
    if !records.exists() {
        return Ok(Vec::new());
    }
    let into = dir.join("quarantine");
    let io = |e: std::io::Error| Error::new(ErrorKind::Unavailable, format!("cannot move the journal aside: {e}"));
    std::fs::create_dir_all(&into).map_err(io)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let to = into.join(format!("journal__{service}.{now}"));
    std::fs::rename(&records, &to).map_err(io)?;
    Ok(vec![(records, to)])
}

/// `immut stop-balancer`: stops the service's balancer process; the instances keep running.
pub async fn stop_balancer(spec: &Spec) -> Result<Report> {
    let settings = local(spec, "stop-balancer")?;
    let service = &spec.service;
    let stopped = LocalBalancer::stop_service(&settings.state_dir, service).await?;
    let text = match stopped {
        Some(pid) => format!("stopped the balancer of {service} (pid {pid})"),
        None => format!("no balancer of {service} runs in {}", settings.state_dir.display()),
    };
    Ok(Report { json: json!({ "service": service, "stopped_pid": stopped }), text, exit: Exit::Success })
}
