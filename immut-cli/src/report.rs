//! `immut report` and `immut plan --svg`: pictures of a deployment and of a plan.
//!
//! A deployment is drawn from the spec's state only (the journal's observations and records,
//! and the ledger's entry), never from the live fleet, so any machine that reads the same state
//! can draw a finished, failed or interrupted deployment; no provider is contacted.

use std::io::Write;
use std::path::{Path, PathBuf};

use immut::dry_run::Plan;
use immut::journal::Journal;
use immut::report::{html, plan, recorded, svg};
use immut::{DeploymentId, Error, Release};

use crate::cli::Failure;
use crate::exit::Exit;
use crate::spec::Spec;

/// The arguments of `immut report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The deployment id (default: the last one that began), as `immut history` and `immut status` show it.
    pub deployment: Option<String>,
    /// Writes the picture alone (SVG) to this file, instead of the HTML report.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Writes the HTML report to this file (default: `immut-report-<service>-<deployment>.html`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn failure(e: Error) -> Failure {
    Failure { exit: Exit::of_error(e.kind()), message: e.to_string() }
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| Failure {
        exit: Exit::BadInput,
        message: format!("cannot write {}: {e}; give a writable path", path.display()),
    })
}

/// Tells what was written: on stdout, or on stderr when stdout carries JSON.
fn wrote(json: bool, what: String) {
    if json {
        eprintln!("{what}");
    } else {
        let _ = writeln!(std::io::stdout().lock(), "{what}");
    }
}

/// Draws `plan` to `path` as an SVG picture.
pub fn plan_svg(spec: &Spec, release: &Release, plan_: &Plan, path: &Path, json: bool) -> Result<(), Failure> {
    let title = format!(
        "{}: plan of {}@{} over {}, {} instances",
        spec.service,
        release.artifact().name,
        release.artifact().version,
        plan_.outcome.previous.as_ref().map_or("nothing".to_owned(), |p| p.to_string()),
        spec.desired
    );
    let picture = svg::render(&plan::timeline(plan_, title)).map_err(failure)?;
    write(path, &picture)?;
    wrote(json, format!("wrote {} (the plan as a picture, {} bytes)", path.display(), picture.len()));
    Ok(())
}

/// `immut report`: the HTML report or the SVG picture of a deployment, from the state.
pub fn report(spec: &Spec, args: &ReportArgs, json: bool) -> Result<Exit, Failure> {
    let state = crate::state::open(&spec.state).map_err(failure)?;
    let records = state.journal.read(&spec.service).map_err(failure)?.records;
    let wanted = args.deployment.as_deref().map(DeploymentId::new);
    let timeline = recorded::timeline(&records, wanted.as_ref(), None).map_err(|e| Failure {
        exit: Exit::BadInput,
        message: format!("{} (state {}, service {})", e.message(), spec.state, spec.service),
    })?;
    let id = timeline
        .summary
        .iter()
        .find(|(k, _)| k == "deployment")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "unknown".to_owned());
    let entry = state.ledger.entries().map_err(failure)?.into_iter().find(|e| e.deployment.as_str() == id);
    let timeline =
        recorded::timeline(&records, Some(&DeploymentId::new(id.clone())), entry.as_ref()).map_err(failure)?;
    if let Some(path) = &args.svg {
        let picture = svg::render(&timeline).map_err(failure)?;
        write(path, &picture)?;
        wrote(json, format!("wrote {} (deployment {id} as a picture)", path.display()));
    }
    if args.svg.is_none() || args.out.is_some() {
        let path =
            args.out.clone().unwrap_or_else(|| PathBuf::from(format!("immut-report-{}-{id}.html", spec.service)));
        write(&path, &html::render(&timeline).map_err(failure)?)?;
        let outcome = timeline.summary.iter().find(|(k, _)| k == "outcome").map_or("", |(_, v)| v.as_str());
        let outcome = outcome.strip_prefix(&format!("deployment {id} of ")).unwrap_or(outcome);
        wrote(json, format!("wrote {} (deployment {id}: {outcome})", path.display()));
    }
    Ok(Exit::Success)
}
