//! The command line: arguments (clap), and one function per command, each a few library calls.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use clap::{Parser, Subcommand, ValueEnum};
use immut::audit::{Audit, AuditReport};
use immut::journal::Journal;
use immut::{Deployer, Deployment, DeploymentId, Error, Instance, InstanceId, Provenance, Query, Release, SigningKey};
use serde_json::json;

use crate::exit::{self, Exit};
use crate::faults::Faults;
use crate::progress::{InFlight, Mode, Progress};
use crate::providers::{self, Access, Backend};
use crate::spec::{self, Spec, SpecErrors};
use crate::state::{self, State};

/// `immut`: deploy releases by replacing instances, never patching them.
#[derive(Debug, Parser)]
#[command(name = "immut", version, about, long_about = None, after_help = exit::TABLE, after_long_help = exit::TABLE)]
pub struct Cli {
    /// The service spec.
    #[arg(short = 'f', long = "file", global = true, default_value = "immut.toml", value_name = "PATH")]
    pub file: PathBuf,
    /// Overrides a spec value before it is checked; repeatable (`--set desired=5 --set artifact.version=2.0.0`).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// JSON output: a document, or for deploy, rollback, resume and reconcile one event per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// How deployments print: auto (live progress on a terminal, JSON lines otherwise), lines or json.
    #[arg(long, global = true, value_enum, default_value_t = Output::Auto)]
    pub output: Output,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How deployments print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Live progress on a terminal, JSON lines otherwise.
    Auto,
    /// One readable line per event.
    Lines,
    /// One JSON object per event.
    Json,
}

/// A provider `init` can write a spec for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitProvider {
    /// Real local processes: the sample service built into immut.
    Local,
    /// The simulator, for trying strategies and for tests.
    Sim,
    /// EC2 + ELBv2.
    Aws,
    /// Compute Engine + a backend service.
    Gcp,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes a commented example spec for a provider.
    Init {
        /// The provider.
        #[arg(long, value_enum, default_value_t = InitProvider::Local)]
        provider: InitProvider,
        /// Overwrites an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Dry-runs the deployment on the simulator from the live fleet: waves, capacity, duration, calls.
    Plan {
        /// Also draws the plan as a picture (SVG) in this file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Deploys the spec's release.
    Deploy {
        /// Allows going to an older version: an explicit rollback.
        #[arg(long)]
        rollback: bool,
        /// Fault injection for the crash tests (hidden).
        #[command(flatten)]
        faults: Faults,
    },
    /// The serving release, live instances by release, any deployment in flight and the lock's holder.
    Status,
    /// Continues a deployment whose process died, from the journal.
    Resume {
        /// Rolls it back instead of continuing it.
        #[arg(long)]
        rollback: bool,
        /// Fault injection for the crash tests (hidden).
        #[command(flatten)]
        faults: Faults,
    },
    /// Approves the gate the deployment in flight waits at (`promotion = "manual"`), or rejects it.
    Promote {
        /// Rejects it instead: the deployment rolls back.
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
        /// The gate, when several wait (`promote`, `canary-step-1`, ...).
        #[arg(long, value_name = "NAME")]
        gate: Option<String>,
    },
    /// Redeploys the previous successful release, from the ledger.
    Rollback,
    /// The ledger: every finished deployment of the service.
    History,
    /// Draws a deployment from the journal and the ledger: an HTML report, or the picture alone.
    Report(crate::report::ReportArgs),
    /// Verifies the ledger's hash chain.
    Verify {
        /// A head hash kept elsewhere: also catches entries cut from the end.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
    },
    /// Gives every instance a verdict against the current release; non-zero exit on findings.
    Audit {
        /// Replaces the offenders through the strategy.
        #[arg(long)]
        reconcile: bool,
    },
    /// Audits at an interval and repairs what drifted by replacement, until Ctrl-C.
    Watch {
        /// Time between two audits (default: `[watch] interval`, else 60s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        interval: Option<std::time::Duration>,
        /// Runs one cycle (audit, then repair within the rate) and exits: 0 when nothing is
        /// left open, 1 when findings stay open.
        #[arg(long)]
        once: bool,
    },
    /// Lists orphaned instances; terminates them with --yes.
    Reap {
        /// Terminates them.
        #[arg(long)]
        yes: bool,
    },
    /// Labels instances launched outside immut as release zero, so the next deployment replaces them.
    Adopt {
        /// Which (default: every unmanaged instance of the service).
        ids: Vec<String>,
    },
    /// Detaches and terminates every instance of the service (after showing them); needs --yes.
    Destroy {
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
    /// Local provider: shows what runs and what state cannot be read; repairs it with --yes.
    Repair {
        /// Moves unreadable files aside and rebuilds the records of running instances.
        #[arg(long)]
        yes: bool,
    },
    /// Local provider: stops the service's balancer process (the instances keep running).
    StopBalancer,
    /// Guardrail policies as JSON: the deployer's least privilege, or the refusals for everyone else.
    Guardrails(crate::guardrails::GuardrailsArgs),
    /// Prints a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Why a command stopped.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// For people.
    pub message: String,
}

type Run = Result<Exit, Failure>;

fn fail(exit: Exit, message: impl Into<String>) -> Failure {
    Failure { exit, message: message.into() }
}

impl From<SpecErrors> for Failure {
    fn from(e: SpecErrors) -> Self {
        fail(Exit::BadInput, e.to_string())
    }
}

/// Runs a parsed command line; returns the exit code. Prints errors itself.
pub fn run(cli: Cli) -> Exit {
    // A test hook: proves that a panic becomes exit 70, never Rust's 101.
    if std::env::var_os("IMMUT_CLI_PANIC_FOR_TESTS").is_some() {
        panic!("a deliberate panic (IMMUT_CLI_PANIC_FOR_TESTS is set)");
    }
    let json = cli.json || cli.output == Output::Json;
    let result = match &cli.command {
        Command::Init { provider, force } => init(&cli, *provider, *force),
        Command::Guardrails(args) => crate::guardrails::render(args)
            .map(|json| {
                say(json);
                Exit::Success
            })
            .map_err(|(exit, message)| fail(exit, message)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "immut", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        _ => match spec::load(&cli.file, &cli.set) {
            Err(e) => Err(e.into()),
            Ok(spec) => match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt.block_on(Ctx::new(&cli, spec).dispatch(&cli.command)),
                Err(e) => Err(fail(Exit::Internal, format!("cannot start the runtime: {e}"))),
            },
        },
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            if json {
                let line = json!({ "event": "error", "exit": f.exit.code(), "message": f.message });
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            for line in f.message.lines() {
                eprintln!("error: {line}");
            }
            f.exit
        }
    }
}

fn say(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stdout().lock(), "{}", text.as_ref());
}

fn print_json(value: &impl serde::Serialize) {
    say(serde_json::to_string_pretty(value).expect("reports serialize"));
}

fn init(cli: &Cli, provider: InitProvider, force: bool) -> Run {
    if cli.file.exists() && !force {
        return Err(fail(
            Exit::BadInput,
            format!("{} exists; pass --force to overwrite it, or -f PATH to write elsewhere", cli.file.display()),
        ));
    }
    let text = crate::init::template(provider);
    if let Some(dir) = cli.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(Exit::BadInput, format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&cli.file, text)
        .map_err(|e| fail(Exit::BadInput, format!("cannot write {}: {e}", cli.file.display())))?;
    say(format!("wrote {} ({:?} provider); next: immut plan, then immut deploy", cli.file.display(), provider)
        .to_lowercase());
    Ok(Exit::Success)
}

/// What every command of a spec shares.
struct Ctx {
    spec: Spec,
    json: bool,
    mode: Mode,
    faults: Faults,
    /// The id of the deployment this command drives, for the approval gate.
    deployment_id: Arc<OnceLock<DeploymentId>>,
}

impl Ctx {
    fn new(cli: &Cli, spec: Spec) -> Ctx {
        let json = cli.json || cli.output == Output::Json;
        let mode = match cli.output {
            _ if json => Mode::Json,
            Output::Lines => Mode::Lines,
            _ if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() => Mode::Live,
            _ => Mode::Json,
        };
        Ctx { spec, json, mode, faults: Faults::default(), deployment_id: Arc::default() }
    }

    fn with_faults(mut self, faults: &Faults) -> Ctx {
        self.faults = faults.clone();
        self
    }

    /// A library error as a failure: errors about the input point into the spec.
    fn err(&self, e: Error) -> Failure {
        match self.spec.locate(&e) {
            Some(located) => fail(Exit::BadInput, located.to_string()),
            None => fail(Exit::of_error(e.kind()), e.to_string()),
        }
    }

    fn state(&self) -> Result<State, Failure> {
        state::open(&self.spec.state).map_err(|e| self.err(e))
    }

    fn release(&self) -> Result<Release, Failure> {
        providers::release(&self.spec).map_err(|e| self.err(e))
    }

    fn key(&self) -> Result<Option<SigningKey>, Failure> {
        self.spec.signing_key_env.as_deref().map(SigningKey::from_env).transpose().map_err(|e| self.err(e))
    }

    async fn backend(&self, access: Access, releases: &[&Release]) -> Result<Backend, Failure> {
        providers::connect(&self.spec, access, releases, self.faults.kill_at_spawn).await.map_err(|e| self.err(e))
    }

    /// The deployer of a real run: its gates wait for `immut promote` when the spec asks.
    fn deployer(&self, backend: &Backend, state: &State, key: Option<SigningKey>) -> Result<Deployer, Failure> {
        self.deployer_with(backend, state, key, self.spec.promotion == immut::strategy::Promotion::Manual)
    }

    fn deployer_with(
        &self,
        backend: &Backend,
        state: &State,
        key: Option<SigningKey>,
        approvals: bool,
    ) -> Result<Deployer, Failure> {
        let factory = backend.alarms.clone();
        let alarms = move |names: &[String]| match &factory {
            Some(make) => (make.0)(names),
            None => Err(Error::invalid("analysis.metrics", "no AWS connection was opened for the cloudwatch metrics")),
        };
        let mut b = self
            .spec
            .deployer_builder(&alarms)
            .map_err(|e| self.err(e))?
            .provider_arc(backend.provider.clone())
            .traffic_arc(backend.traffic.clone())
            .health_arc(backend.health.clone())
            .journal_arc(self.faults.journal(state.journal_dyn()))
            .ledger(state.ledger.clone());
        if let Some(key) = key {
            b = b.signing_key(key);
        }
        if approvals {
            let approvals = crate::approval::Approvals::new(state.approvals.clone());
            b = b.gate(crate::approval::ApprovalGate::new(
                approvals,
                &self.spec.service,
                self.deployment_id.clone(),
                self.mode,
            ));
        }
        b.build().map_err(|e| self.err(e))
    }

    fn current(&self, state: &State) -> Result<Option<Release>, Failure> {
        Ok(state.ledger.current(&self.spec.service).map_err(|e| self.err(e))?.map(|e| e.release))
    }

    async fn dispatch(self, command: &Command) -> Run {
        match command {
            Command::Plan { svg } => self.plan(svg.as_deref()).await,
            Command::Report(args) => crate::report::report(&self.spec, args, self.json),
            Command::Deploy { rollback, faults } => self.with_faults(faults).deploy(*rollback).await,
            Command::Status => self.status().await,
            Command::Resume { rollback, faults } => self.with_faults(faults).resume(*rollback).await,
            Command::Promote { reject, gate } => self.promote(gate.as_deref(), reject.as_deref()).await,
            Command::Repair { yes } => self.repair(*yes).await,
            Command::StopBalancer => self.stop_balancer().await,
            Command::Rollback => self.rollback().await,
            Command::History => self.history(),
            Command::Verify { head } => self.verify(head.as_deref()),
            Command::Audit { reconcile } => self.audit(*reconcile).await,
            Command::Watch { interval, once } => self.watch(*interval, *once).await,
            Command::Reap { yes } => self.reap(*yes).await,
            Command::Adopt { ids } => self.adopt(ids).await,
            Command::Destroy { yes } => self.destroy(*yes).await,
            Command::Init { .. } | Command::Guardrails(_) | Command::Completions { .. } => {
                unreachable!("handled before the spec is read")
            }
        }
    }

    /// The release that serves most, if any, as the engine picks the previous release.
    async fn serving_release(&self, backend: &Backend) -> Result<Option<immut::ReleaseId>, Failure> {
        let live = backend.provider.describe(&Query::service(&self.spec.service)).await.map_err(|e| self.err(e))?;
        let serving = backend.traffic.serving().await.map_err(|e| self.err(e))?;
        let mut counts: std::collections::BTreeMap<&immut::ReleaseId, usize> = Default::default();
        for i in live.iter().filter(|i| serving.contains(&i.id)) {
            if let Some(r) = i.release() {
                *counts.entry(r).or_default() += 1;
            }
        }
        Ok(counts.into_iter().max_by_key(|(_, n)| *n).map(|(r, _)| r.clone()))
    }

    async fn plan(self, svg: Option<&std::path::Path>) -> Run {
        let state = self.state()?;
        let release = self.release()?;
        let previous = self.current(&state)?.filter(|p| p.id() != release.id());
        let backend = self.backend(Access::Read, &[&release]).await?;
        // The plan assumes that every gate is approved at once.
        let deployer = self.deployer_with(&backend, &state, self.key()?, false)?;
        let serving = self.serving_release(&backend).await?;
        let previous = previous.filter(|p| Some(p.id()) == serving.as_ref());
        let plan =
            deployer.dry_run(&release, previous.as_ref(), self.spec.plan_latencies).await.map_err(|e| self.err(e))?;
        if self.json {
            print_json(&plan);
        } else {
            say(crate::render::plan(&self.spec, &release, &plan));
        }
        if let Some(path) = svg {
            crate::report::plan_svg(&self.spec, &release, &plan, path, self.json)?;
        }
        Ok(match Exit::of_outcome(&plan.outcome, false) {
            Exit::Success => Exit::Success,
            other => other,
        })
    }

    async fn deploy(self, rollback: bool) -> Run {
        let state = self.state()?;
        let release = self.release()?;
        let key = self.key()?;
        let previous = self.current(&state)?.filter(|p| p.id() != release.id());
        let releases: Vec<&Release> = std::iter::once(&release).chain(previous.as_ref()).collect();
        let backend = self.backend(Access::Write, &releases).await?;
        let deployer = self.deployer(&backend, &state, key)?;
        let serving = self.serving_release(&backend).await?;
        let mut deployment = deployer.deploy(release.clone());
        if let Some(previous) = previous.filter(|p| Some(p.id()) == serving.as_ref()) {
            deployment = deployment.with_previous(previous);
        }
        if rollback {
            deployment = deployment.as_rollback();
        }
        self.drive(deployment, &backend).await
    }

    async fn rollback(self) -> Run {
        let state = self.state()?;
        let key = self.key()?;
        let previous = state.ledger.previous(&self.spec.service).map_err(|e| self.err(e))?;
        let Some(previous) = previous else {
            return Err(fail(
                Exit::Refused,
                format!(
                    "the ledger holds no earlier successful release of {} to roll back to; nothing changed",
                    self.spec.service
                ),
            ));
        };
        let current = self.current(&state)?;
        let releases: Vec<&Release> = std::iter::once(&previous.release).chain(current.as_ref()).collect();
        let backend = self.backend(Access::Write, &releases).await?;
        let deployer = self.deployer(&backend, &state, key)?;
        let deployment = deployer.rollback_to_previous(&self.spec.service).map_err(|e| self.err(e))?;
        self.drive(deployment, &backend).await
    }

    async fn resume(self, rollback: bool) -> Run {
        let state = self.state()?;
        let key = self.key()?;
        let release = self.release().ok();
        // The serving release too, so that health.verify knows what its instances run.
        let current = self.current(&state)?;
        let releases: Vec<&Release> = release.iter().chain(current.iter()).collect();
        let backend = self.backend(Access::Write, &releases).await?;
        let deployer = self.deployer(&backend, &state, key)?;
        let Some(deployment) = deployer.resume(&self.spec.service).map_err(|e| self.err(e))? else {
            if self.json {
                say(json!({ "event": "nothing_to_resume", "service": self.spec.service }).to_string());
            } else {
                say(format!("nothing to resume: no deployment of {} was interrupted", self.spec.service));
            }
            return Ok(Exit::Success);
        };
        if rollback {
            deployment.cancel_handle().cancel();
        }
        let exit = self.drive(deployment, &backend).await?;
        // A resume asked to roll back has done what it was asked.
        Ok(if rollback && exit == Exit::Cancelled { Exit::Success } else { exit })
    }

    /// Runs a deployment to its end, printing its events; Ctrl-C and SIGTERM cancel it (it
    /// rolls back), a second one says what is still in flight.
    async fn drive(&self, deployment: Deployment, backend: &Backend) -> Run {
        let _ = self.deployment_id.set(deployment.id().clone());
        let cancel = deployment.cancel_handle();
        let state = Arc::new(Mutex::new(InFlight::default()));
        let mode = self.mode;
        let signals = {
            let (cancel, state) = (cancel.clone(), state.clone());
            crate::signals::on_interrupt(move |seen| {
                if seen == 1 {
                    cancel.cancel();
                    Progress::note(
                        mode,
                        "cancelling: the deployment rolls back (interrupt again to see what is still in flight)",
                    );
                } else {
                    let what = state.lock().expect("progress state").describe();
                    Progress::note(mode, &what);
                }
            })
        };
        let mut progress = Progress::new(self.mode, state);
        let mut launched: Vec<InstanceId> = Vec::new();
        let outcome = deployment
            .run_with(|e| {
                if let immut::Event::Launched { ids, .. } = e {
                    launched.extend(ids.iter().cloned());
                }
                progress.event(e)
            })
            .await;
        signals.abort();
        let cancelled = cancel.is_cancelled();
        let exit = Exit::of_outcome(&outcome, cancelled);
        if matches!(exit, Exit::RolledBack | Exit::RollbackFailed) {
            quote_failures(backend, &launched).await;
        }
        if self.mode != Mode::Json {
            eprintln!("{}", verdict(exit));
        }
        if let immut::Phase::Refused { reason } = &outcome.phase
            && exit == Exit::Refused
            && reason.contains("artifact.version")
        {
            eprintln!(
                "to deploy an older version on purpose, run `immut deploy --rollback`; `immut rollback` goes back to the previous release"
            );
        }
        Ok(exit)
    }

    async fn status(self) -> Run {
        let state = self.state()?;
        let release = self.release().ok();
        let backend = self.backend(Access::Read, &[]).await?;
        let service = &self.spec.service;
        let live =
            backend.provider.describe(&Query::service(service).with_unmanaged()).await.map_err(|e| self.err(e))?;
        let serving = backend.traffic.serving().await.map_err(|e| self.err(e))?;
        let read = state.journal.read(service).map_err(|e| self.err(e))?;
        let interrupted = immut::journal::interrupted(&read);
        let holder = state.journal.holder(service).map_err(|e| self.err(e))?;
        let current = state.ledger.current(service).map_err(|e| self.err(e))?;
        let mut report = crate::render::StatusReport::new(
            &self.spec,
            release.as_ref(),
            &live,
            &serving,
            interrupted.as_ref(),
            holder.as_ref(),
            current.as_ref(),
        );
        if let Some(flight) = &interrupted {
            let approvals = crate::approval::Approvals::new(state.approvals.clone());
            report.awaiting_approval = approvals.pending(service, &flight.deployment).await.map_err(|e| self.err(e))?;
        }
        if self.json {
            print_json(&report);
        } else {
            say(report.table());
        }
        Ok(Exit::Success)
    }

    async fn promote(self, gate: Option<&str>, reject: Option<&str>) -> Run {
        let state = self.state()?;
        let decided = crate::approval::promote(&state, &self.spec.service, gate, reject).await?;
        if self.json {
            print_json(&decided);
        } else {
            let what = if decided.verdict.approved { "approved" } else { "rejected" };
            let next = if decided.verdict.approved { "goes on" } else { "rolls back" };
            say(format!(
                "{what} gate {} of deployment {} of {}; the deployment {next} at its next poll",
                decided.gate, decided.deployment, decided.service
            ));
        }
        Ok(Exit::Success)
    }

    async fn repair(self, yes: bool) -> Run {
        let state = self.state()?;
        let report = crate::repair::repair(&self.spec, &state, yes).await.map_err(|e| self.err(e))?;
        self.report(report)
    }

    async fn stop_balancer(self) -> Run {
        let report = crate::repair::stop_balancer(&self.spec).await.map_err(|e| self.err(e))?;
        self.report(report)
    }

    fn report(&self, report: crate::repair::Report) -> Run {
        if self.json {
            print_json(&report.json);
        } else {
            say(&report.text);
        }
        Ok(report.exit)
    }

    fn history(self) -> Run {
        let state = self.state()?;
        let entries: Vec<_> = state
            .ledger
            .entries()
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|e| e.service == self.spec.service)
            .collect();
        if self.json {
            print_json(&entries);
        } else {
            say(crate::render::history(&self.spec.service, &entries));
        }
        Ok(Exit::Success)
    }

    fn verify(self, head: Option<&str>) -> Run {
        let state = self.state()?;
        let check = match head {
            Some(h) => state.ledger.verify_head(h),
            None => state.ledger.verify(),
        }
        .map_err(|e| self.err(e))?;
        if self.json {
            print_json(&check);
        } else if check.is_intact() {
            say(format!("ledger intact: {} entries, head {}", check.entries, check.head));
        } else {
            say(format!("ledger BROKEN: {} entries read, {} problems", check.entries, check.problems.len()));
            for p in &check.problems {
                say(format!("  {}", serde_json::to_string(p).expect("problems serialize")));
            }
        }
        Ok(if check.is_intact() { Exit::Success } else { Exit::Findings })
    }

    /// The release the fleet should run: the ledger's current one, or the spec's.
    fn expected(&self, state: &State) -> Result<Release, Failure> {
        match self.current(state)? {
            Some(r) => Ok(r),
            None => self.release(),
        }
    }

    async fn run_audit(&self, backend: &Backend, state: &State, expected: &Release) -> Result<AuditReport, Failure> {
        let key = self.key()?;
        let mut audit =
            Audit::new(&*backend.provider, &*backend.traffic).health(&*backend.health).journal(&*state.journal);
        if let Some(key) = &key {
            audit = audit.signing_key(key);
        }
        audit.run(expected).await.map_err(|e| self.err(e))
    }

    async fn audit(self, reconcile: bool) -> Run {
        let state = self.state()?;
        let expected = self.expected(&state)?;
        let access = if reconcile { Access::Write } else { Access::Read };
        let backend = self.backend(access, &[&expected]).await?;
        let report = self.run_audit(&backend, &state, &expected).await?;
        if !reconcile || report.is_clean() {
            if self.json {
                print_json(&report);
            } else {
                say(report.table());
            }
            return Ok(if report.is_clean() { Exit::Success } else { Exit::Findings });
        }
        if self.mode != Mode::Json {
            say(report.table());
            say(format!("reconciling: replacing {} instances through the strategy", report.offenders().len()));
        }
        let deployer = self.deployer(&backend, &state, self.key()?)?;
        self.drive(deployer.reconcile(&report, expected), &backend).await
    }

    async fn watch(self, interval: Option<std::time::Duration>, once: bool) -> Run {
        let state = self.state()?;
        let Some(expected) = self.current(&state)? else {
            return Err(fail(
                Exit::Refused,
                format!(
                    "nothing to watch: the ledger holds no successful deployment of {}; run `immut deploy` first",
                    self.spec.service
                ),
            ));
        };
        let backend = self.backend(Access::Write, &[&expected]).await?;
        // A repair redeploys the release that already passed its gates: they pass at once.
        let deployer = self.deployer_with(&backend, &state, self.key()?, false)?;
        let watch = crate::watch::build(&self.spec, deployer, expected, interval).map_err(|e| self.err(e))?;
        let printer = crate::watch::Printer::new(self.mode);
        if !once {
            return Ok(crate::watch::run(watch, printer).await);
        }
        let mut watch = watch;
        let cycle = watch.run_once().await.map_err(|e| self.err(e))?;
        for event in &cycle.events {
            printer.event(event);
        }
        Ok(crate::watch::once_exit(&cycle))
    }

    async fn reap(self, yes: bool) -> Run {
        let state = self.state()?;
        let expected = self.expected(&state)?;
        let backend = self.backend(if yes { Access::Write } else { Access::Read }, &[&expected]).await?;
        let orphans = Audit::new(&*backend.provider, &*backend.traffic)
            .journal(&*state.journal)
            .reap(&expected, yes)
            .await
            .map_err(|e| self.err(e))?;
        let ids: Vec<&str> = orphans.iter().map(|f| f.id.as_str()).collect();
        if self.json {
            print_json(&json!({ "orphans": orphans, "terminated": yes }));
        } else if orphans.is_empty() {
            say("no orphans");
        } else if yes {
            say(format!("terminated {} orphans: {}", ids.len(), ids.join(", ")));
        } else {
            say(format!("{} orphans: {}\nrun `immut reap --yes` to terminate them", ids.len(), ids.join(", ")));
        }
        Ok(if orphans.is_empty() || yes { Exit::Success } else { Exit::Findings })
    }

    fn lock(&self, state: &State, what: &str) -> Result<immut::journal::LockGuard, Failure> {
        let id = DeploymentId::new(format!("{what}-{}", std::process::id()));
        state.journal.lock(&self.spec.service, &id).map_err(|e| self.err(e))
    }

    async fn adopt(self, ids: &[String]) -> Run {
        let state = self.state()?;
        let key = self.key()?;
        let backend = self.backend(Access::Write, &[]).await?;
        let Some(adopter) = backend.adopt.clone() else {
            return Err(fail(
                Exit::BadInput,
                format!("the {} provider cannot adopt instances", self.spec.provider.kind()),
            ));
        };
        let _lock = self.lock(&state, "adopt")?;
        let unmanaged: Vec<Instance> = backend
            .provider
            .describe(&Query::service(&self.spec.service).with_unmanaged())
            .await
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|i| i.provenance.is_none())
            .collect();
        let chosen: Vec<InstanceId> = if ids.is_empty() {
            unmanaged.iter().map(|i| i.id.clone()).collect()
        } else {
            let missing: Vec<&String> =
                ids.iter().filter(|id| !unmanaged.iter().any(|i| i.id.as_str() == *id)).collect();
            if !missing.is_empty() {
                let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                return Err(fail(
                    Exit::BadInput,
                    format!(
                        "not unmanaged instances of {}: {}; `immut audit` lists them",
                        self.spec.service,
                        missing.join(", ")
                    ),
                ));
            }
            ids.iter().map(InstanceId::new).collect()
        };
        if chosen.is_empty() {
            if self.json {
                print_json(&json!({ "adopted": Vec::<String>::new() }));
            } else {
                say("nothing to adopt: no unmanaged instances");
            }
            return Ok(Exit::Success);
        }
        let deployment = DeploymentId::new(format!("adopt-{}", now_ms()));
        let provenance = Provenance::adopted(&self.spec.service, &deployment);
        let signature = key.as_ref().map(|k| k.sign(&provenance));
        let adopted = adopter.adopt(&chosen, &provenance, signature.as_deref()).await.map_err(|e| self.err(e))?;
        let names: Vec<&str> = adopted.iter().map(|i| i.id.as_str()).collect();
        if self.json {
            print_json(&json!({ "adopted": names, "release": "r0" }));
        } else {
            say(format!(
                "adopted {} as release r0 of {}: {}; the next deployment replaces them",
                names.len(),
                self.spec.service,
                names.join(", ")
            ));
        }
        Ok(Exit::Success)
    }

    async fn destroy(self, yes: bool) -> Run {
        let state = self.state()?;
        let backend = self.backend(if yes { Access::Write } else { Access::Read }, &[]).await?;
        let live = backend.provider.describe(&Query::service(&self.spec.service)).await.map_err(|e| self.err(e))?;
        let ids: Vec<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
        let names: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        if !yes {
            if self.json {
                print_json(&json!({ "would_remove": names, "removed": false }));
            } else {
                say(format!(
                    "destroy would detach and terminate {} instances of {}: {}",
                    ids.len(),
                    self.spec.service,
                    names.join(", ")
                ));
                say("nothing was removed: run `immut destroy --yes` to remove them");
            }
            return Ok(if ids.is_empty() { Exit::Success } else { Exit::Refused });
        }
        let _lock = self.lock(&state, "destroy")?;
        use immut::ProviderExt;
        backend.traffic.detach(&ids).await.map_err(|e| self.err(e))?;
        backend.provider.terminate_all(&ids).await.map_err(|e| self.err(e))?;
        drop(backend);
        let retired = crate::providers::retire(&self.spec).await.map_err(|e| self.err(e))?;
        if self.json {
            print_json(&json!({ "removed": names, "stopped": retired }));
        } else {
            say(format!("detached and terminated {} instances of {}", ids.len(), self.spec.service));
            if let Some(line) = retired {
                say(line);
            }
        }
        Ok(Exit::Success)
    }
}

/// Why the last instances of a failed deployment died on their own, in the provider's words
/// (the local provider quotes their logs): at most three, newest first, on stderr.
async fn quote_failures(backend: &Backend, launched: &[InstanceId]) {
    let mut quoted = 0;
    for id in launched.iter().rev() {
        if quoted == 3 {
            break;
        }
        if let Some(detail) = backend.provider.failure_detail(id).await {
            eprintln!("{detail}");
            quoted += 1;
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err("must be above zero, such as 30s".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; write a number and a unit, such as 500ms, 30s or 2m")),
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// The last line of a deployment for people (the event before it has the summary).
fn verdict(exit: Exit) -> String {
    let what = match exit {
        Exit::Success => "done",
        Exit::RolledBack => "ROLLED BACK: the previous release serves",
        Exit::RollbackFailed => "ROLLBACK FAILED: both releases may be serving; a human is needed",
        Exit::Cancelled => "CANCELLED and rolled back",
        Exit::Refused => "REFUSED: nothing changed",
        Exit::BadInput => "REFUSED: bad input; nothing changed",
        _ => "FAILED",
    };
    format!("{what} (exit {})", exit.code())
}
