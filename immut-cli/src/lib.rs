//! # immut-cli
//!
//! The `immut` command: a declarative service spec ([`spec`], `immut.toml`) and the commands
//! platform teams run from CI and on call: `plan`, `deploy`, `status`, `audit`, `rollback`,
//! `history`, `report`, `verify`, `resume`, `promote`, `watch`, `reap`, `adopt`, `destroy`, `init` and
//! `completions`, and for the local provider `repair` and `stop-balancer`.
//!
//! It is a thin face over the `immut` library: every command is a few public library calls
//! ([`immut::Deployer`], [`immut::audit::Audit`], [`immut::ledger::Ledger`],
//! [`immut::journal::FileJournal`]), so a team that outgrows the CLI keeps its behaviour in
//! its own Rust code. Exit codes are in [`exit`].

pub mod approval;
pub mod cli;
pub mod exit;
pub mod faults;
pub mod guardrails;
pub mod init;
pub mod progress;
pub mod providers;
pub mod render;
pub mod repair;
pub mod report;
pub mod signals;
pub mod spec;
pub mod state;
pub mod watch;

use clap::Parser;

/// The whole program: serves as the sample service when launched as one, else parses the
/// command line, runs it and returns its exit code. A panic is caught and reported as
/// [`exit::Exit::Internal`] (70), never Rust's 101.
pub fn main() -> std::process::ExitCode {
    providers::serve_if_requested();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { exit::Exit::BadInput.code() } else { 0 });
        }
    };
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug in immut): {info}");
        eprintln!("the journal is intact: `immut status` shows the fleet, `immut resume` continues a deployment");
    }));
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli::run(cli))).unwrap_or(exit::Exit::Internal);
    std::process::ExitCode::from(code.code())
}
