//! The service spec, `immut.toml`: what to deploy, where, and how.
//!
//! A spec is TOML read through serde. Unknown keys are errors, and every error names the file,
//! the line and the column (or the `--set` override it came from) and says what is allowed.
//! [`load`] reads a file, applies `--set key=value` overrides, and validates everything, the
//! library's own checks included ([`DeployerBuilder::build`](immut::DeployerBuilder::build),
//! release names, digests, durations, counts, the user-data file), before any provider is
//! called. `immut init` writes a complete, commented example for each provider.
//!
//! ```toml
//! service = "web"                 # 1 to 40 lowercase letters, digits or '-'
//! desired = 3                     # instances the service runs
//! state = ".immut/state"          # journal, lease, ledger: a directory, or s3://bucket/prefix
//! # signing_key_env = "IMMUT_SIGNING_KEY"   # the NAME of a variable holding the key
//!
//! [provider]
//! kind = "local"                  # local, sim, and aws or gcp when compiled in
//!
//! [artifact]
//! name = "sample"
//! version = "1.0.0"
//! image = "builtin:sample"        # local: an executable, or this binary's sample service
//!
//! [baseline]
//! name = "sample"
//! version = "1.0.0"
//! sealed = true                   # no interactive way in (aws, gcp, azure; local has none)
//!
//! [strategy]
//! kind = "blue_green"             # blue_green (bake, keep_old, promotion), rolling (max_surge,
//! bake = "2s"                     # max_unavailable, pause) or canary (steps, pause, promotion)
//! # promotion = "manual"          # each gate waits for `immut promote`
//! ```
//!
//! Relative paths (state, user-data file, provider directories) are resolved against the
//! directory of the spec file, so `immut -f deploy/immut.toml` works from anywhere.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use immut::engine::{HealthThresholds, ReplacementBudget};
use immut::semver::Version;
use immut::sim::Latencies;
use immut::strategy::{Promotion, ReplacementStrategy};
use immut::watch::{UnmanagedAction, UnmanagedScope};
use immut::{BlueGreen, Canary, Count, Deployer, DeployerBuilder, LaunchSpec, Rolling};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod analysis;

pub use analysis::{AnalysisSettings, MakeAlarms, MetricSource};

/// Where a problem is: a place in the spec file, or a `--set` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line and a column (both from 1) of the spec file.
    File {
        /// The spec file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column, from 1, in characters.
        column: usize,
    },
    /// The `--set` override with this text (`key=value`).
    Override(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Location::Override(text) => write!(f, "--set {text}"),
        }
    }
}

/// One problem in a spec, where it is and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where.
    pub location: Location,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a spec (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for SpecErrors {}

/// Maps byte offsets of the parsed text to locations. Offsets past the file belong to the
/// `--set` overrides, each of which is given a range of its own there.
#[derive(Debug, Clone)]
pub struct Locator {
    path: PathBuf,
    text: Arc<str>,
    overrides: Vec<(std::ops::Range<usize>, String)>,
}

impl Locator {
    fn new(path: &Path, text: &str) -> Self {
        Locator { path: path.to_owned(), text: Arc::from(text), overrides: Vec::new() }
    }

    /// The location of a byte offset.
    pub fn at(&self, offset: usize) -> Location {
        if let Some((_, text)) = self.overrides.iter().find(|(r, _)| r.contains(&offset) || r.start == offset) {
            return Location::Override(text.clone());
        }
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location::File { path: self.path.clone(), line, column }
    }

    fn error(&self, span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> SpecError {
        SpecError { location: self.at(span.map_or(0, |s| s.start)), message: message.into() }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// The file's shape. Every table denies unknown keys; values that need checking keep their span.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    service: Spanned<String>,
    desired: Spanned<i64>,
    #[serde(default)]
    state: Option<Spanned<String>>,
    #[serde(default)]
    signing_key_env: Option<Spanned<String>>,
    provider: Spanned<RawProvider>,
    artifact: Spanned<RawArtifact>,
    baseline: Spanned<RawBaseline>,
    strategy: Spanned<RawStrategy>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    rollout: Option<Spanned<RawRollout>>,
    #[serde(default)]
    analysis: Option<Spanned<analysis::RawAnalysis>>,
    #[serde(default)]
    plan: Option<Spanned<RawLatencies>>,
    #[serde(default)]
    watch: Option<Spanned<RawWatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    grace: Option<Spanned<String>>,
    #[serde(default)]
    max_repairs: Option<Spanned<i64>>,
    #[serde(default)]
    breaker_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    unmanaged: Option<Spanned<String>>,
    #[serde(default)]
    unmanaged_scope: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Spanned<String>,
    #[serde(default)]
    local: Option<Spanned<RawLocal>>,
    #[serde(default)]
    sim: Option<Spanned<RawSim>>,
    #[serde(default)]
    aws: Option<Spanned<RawAws>>,
    #[serde(default)]
    gcp: Option<Spanned<RawGcp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    drain_timeout: Option<Spanned<String>>,
    #[serde(default)]
    term_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    #[serde(default)]
    fleet: Option<Spanned<String>>,
    #[serde(default)]
    api: Option<Spanned<String>>,
    #[serde(default)]
    launch_to_running: Option<Spanned<String>>,
    #[serde(default)]
    boot_to_healthy: Option<Spanned<String>>,
    #[serde(default)]
    drain: Option<Spanned<String>>,
    #[serde(default)]
    seed: Option<Spanned<i64>>,
    #[serde(default)]
    never_healthy_versions: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    fail_launch_calls: Option<Vec<Spanned<i64>>>,
    #[serde(default)]
    fail_launch_kind: Option<Spanned<String>>,
    #[serde(default)]
    throttle_rate: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatencies {
    #[serde(default)]
    api: Option<Spanned<String>>,
    #[serde(default)]
    launch_to_running: Option<Spanned<String>>,
    #[serde(default)]
    boot_to_healthy: Option<Spanned<String>>,
    #[serde(default)]
    drain: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    target_group: Option<Spanned<String>>,
    #[serde(default)]
    listener: Option<Spanned<String>>,
    #[serde(default)]
    blue_target_group: Option<Spanned<String>>,
    #[serde(default)]
    green_target_group: Option<Spanned<String>>,
    #[serde(default)]
    drain_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGcp {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    zones: Option<Vec<String>>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    anonymous: Option<bool>,
    #[serde(default)]
    zone_fallback: Option<bool>,
    backend_service: Spanned<String>,
    #[serde(default)]
    group: Option<Spanned<String>>,
    #[serde(default)]
    blue_group: Option<Spanned<String>>,
    #[serde(default)]
    green_group: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: Spanned<String>,
    version: Spanned<String>,
    image: Spanned<String>,
    #[serde(default)]
    digest: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    machine_type: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    user_data_file: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Absent in specs written before the option existed: unsealed, as they were.
    #[serde(default)]
    sealed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    kind: Spanned<String>,
    #[serde(default)]
    bake: Option<Spanned<String>>,
    #[serde(default)]
    keep_old: Option<Spanned<String>>,
    #[serde(default)]
    max_surge: Option<Spanned<RawCount>>,
    #[serde(default)]
    max_unavailable: Option<Spanned<RawCount>>,
    #[serde(default)]
    pause: Option<Spanned<String>>,
    #[serde(default)]
    steps: Option<Spanned<Vec<Spanned<RawCount>>>>,
    #[serde(default)]
    promotion: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawCount {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    verify: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    provider_status: Option<bool>,
    #[serde(default)]
    healthy_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default)]
    min_ready: Option<Spanned<String>>,
    #[serde(default)]
    progress_deadline: Option<Spanned<String>>,
    #[serde(default)]
    instance_deadline: Option<Spanned<String>>,
    #[serde(default)]
    poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    replacement_budget_per_wave: Option<Spanned<RawCount>>,
    #[serde(default)]
    replacement_budget_per_deployment: Option<Spanned<RawCount>>,
    #[serde(default)]
    accept_no_way_back: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The resolved spec: checked, typed, with paths made absolute.

/// The provider kinds this build of `immut` knows.
pub const PROVIDER_KINDS: &[&str] = &[
    "local",
    "sim",
    #[cfg(feature = "aws")]
    "aws",
    #[cfg(feature = "gcp")]
    "gcp",
];

/// Settings of the local provider (`[provider.local]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    /// Instance records and logs (default `.immut/local`).
    pub state_dir: PathBuf,
    /// Where the balancer listens while a command runs (default `127.0.0.1:0`, any free port).
    pub listen: SocketAddr,
    /// The longest a detach waits for in-flight connections (default 10 s).
    pub drain_timeout: Duration,
    /// Between SIGTERM and SIGKILL of a terminated instance (default 5 s).
    pub term_timeout: Duration,
}

/// Settings of the simulator (`[provider.sim]`): an in-memory cloud whose fleet is kept in a
/// file between commands, for tests and demos.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// The file that keeps the simulated fleet between commands (default
    /// `.immut/sim-fleet.json`).
    pub fleet: PathBuf,
    /// Latencies of the simulated cloud (real time: keep them short).
    pub latencies: Latencies,
    /// Seed of the simulator's generator.
    pub seed: u64,
    /// Artifact versions whose instances never turn healthy.
    pub never_healthy_versions: Vec<Version>,
    /// Launch calls (from 1, counted per command) that fail.
    pub fail_launch_calls: Vec<u64>,
    /// How they fail (default quota exceeded).
    pub fail_launch_kind: immut::ErrorKind,
    /// Probability that a call is throttled.
    pub throttle_rate: f64,
}

/// Settings of the AWS provider (`[provider.aws]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Region (default: the SDK's chain).
    pub region: Option<String>,
    /// Endpoint URL (moto, a proxy).
    pub endpoint: Option<String>,
    /// Subnet to launch into.
    pub subnet: Option<String>,
    /// One target group (rolling, canary).
    pub target_group: Option<String>,
    /// Blue/green: the listener and its two target groups.
    pub listener: Option<(String, String, String)>,
    /// Drain of a detach or switch (default 30 s).
    pub drain_timeout: Duration,
}

/// Settings of the GCP provider (`[provider.gcp]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpSettings {
    /// Project (default: `GOOGLE_CLOUD_PROJECT`).
    pub project: Option<String>,
    /// Zones (default: `IMMUT_GCP_ZONES`).
    pub zones: Vec<String>,
    /// Endpoint (the fake Compute API).
    pub endpoint: Option<String>,
    /// No credentials (the fake).
    pub anonymous: bool,
    /// Try the next zone when one is out of capacity.
    pub zone_fallback: bool,
    /// The backend service.
    pub backend_service: String,
    /// One group (rolling, canary).
    pub group: Option<String>,
    /// Blue/green: the two groups.
    pub colours: Option<(String, String)>,
}

/// The provider and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSettings {
    /// Real local processes.
    Local(LocalSettings),
    /// The simulator.
    Sim(SimSettings),
    /// EC2 + ELBv2.
    Aws(AwsSettings),
    /// Compute Engine.
    Gcp(GcpSettings),
}

impl ProviderSettings {
    /// The kind's name, as in the spec.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSettings::Local(_) => "local",
            ProviderSettings::Sim(_) => "sim",
            ProviderSettings::Aws(_) => "aws",
            ProviderSettings::Gcp(_) => "gcp",
        }
    }
}

/// The replacement strategy and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrategySettings {
    /// Blue/green.
    BlueGreen {
        /// Bake after the switch.
        bake: Duration,
        /// How long the old fleet stays idle after the bake.
        keep_old: Duration,
    },
    /// Rolling.
    Rolling {
        /// Extra instances allowed.
        max_surge: Count,
        /// Serving instances that may be taken away.
        max_unavailable: Count,
        /// Pause between batches.
        pause: Duration,
    },
    /// Canary.
    Canary {
        /// Steps.
        steps: Vec<Count>,
        /// Pause at each step.
        pause: Duration,
    },
}

impl StrategySettings {
    /// The library's strategy, with automatic promotion.
    pub fn build(&self) -> Arc<dyn ReplacementStrategy> {
        self.build_with(Promotion::Auto)
    }

    /// The library's strategy. A manual promotion makes blue/green wait at its `promote` gate
    /// (a canary asks its step gates either way).
    pub fn build_with(&self, promotion: Promotion) -> Arc<dyn ReplacementStrategy> {
        match self {
            StrategySettings::BlueGreen { bake, keep_old } => {
                Arc::new(BlueGreen::new().bake(*bake).keep_old(*keep_old).promotion(promotion))
            }
            StrategySettings::Rolling { max_surge, max_unavailable, pause } => {
                Arc::new(Rolling::new().max_surge(*max_surge).max_unavailable(*max_unavailable).pause(*pause))
            }
            StrategySettings::Canary { steps, pause } => Arc::new(Canary::new(steps.clone()).pause(*pause)),
        }
    }
}

/// How instances are judged healthy (`[health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// An HTTP path to probe (`GET`, expect 2xx).
    pub http: Option<String>,
    /// A path where each instance says what it runs (`GET`, a JSON answer): it must run its
    /// release's executable (local: the digest) or image (clouds: the boot image its metadata
    /// service names).
    pub verify: Option<String>,
    /// The probe's timeout (default 2 s).
    pub timeout: Duration,
    /// Whether the provider's own status counts too (default true).
    pub provider_status: bool,
    /// Verdicts in a row that change an instance's standing.
    pub thresholds: HealthThresholds,
}

/// The engine's timing (`[rollout]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSettings {
    /// How long a new instance must stay healthy before it counts (default 0).
    pub min_ready: Duration,
    /// The longest wait without progress before a rollback (default 10 min).
    pub progress_deadline: Option<Duration>,
    /// The longest a new instance may take to turn healthy.
    pub instance_deadline: Option<Duration>,
    /// How often the engine observes while waiting (default 2 s).
    pub poll_interval: Option<Duration>,
    /// Failed new instances that may be replaced.
    pub budget: Option<ReplacementBudget>,
    /// Whether a deployment may terminate a release that can no longer be launched (default
    /// false; for one run: `--set rollout.accept_no_way_back=true`).
    pub accept_no_way_back: bool,
}

/// What `immut watch` does (`[watch]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSpec {
    /// Time between two audits (default 60 s; `--interval` overrides it).
    pub interval: Duration,
    /// How long an instance may fail its health check before it is replaced (default: the
    /// interval).
    pub grace: Option<Duration>,
    /// The most instances one cycle replaces (default 1).
    pub max_repairs: usize,
    /// Repairs that may fail in a row before the watch stops repairing (default 3).
    pub breaker_threshold: u32,
    /// What to do with unmanaged instances (default: report them).
    pub unmanaged: UnmanagedAction,
    /// Which unmanaged instances that applies to (default: those that serve).
    pub unmanaged_scope: UnmanagedScope,
}

impl Default for WatchSpec {
    fn default() -> Self {
        WatchSpec {
            interval: Duration::from_secs(60),
            grace: None,
            max_repairs: 1,
            breaker_threshold: 3,
            unmanaged: UnmanagedAction::Report,
            unmanaged_scope: UnmanagedScope::Serving,
        }
    }
}

/// The artifact, as the spec gives it (the provider resolves `image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSettings {
    /// Name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// The provider's image reference.
    pub image: String,
    /// Optional `sha256:` digest.
    pub digest: Option<String>,
}

/// A checked spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file it was read from.
    pub file: PathBuf,
    /// The service.
    pub service: String,
    /// Desired instance count.
    pub desired: usize,
    /// Where the journal, lock and ledger live (see [`crate::state::open`]).
    pub state: String,
    /// The name of the environment variable that holds the signing key.
    pub signing_key_env: Option<String>,
    /// The provider.
    pub provider: ProviderSettings,
    /// The artifact.
    pub artifact: ArtifactSettings,
    /// The baseline's name.
    pub baseline_name: String,
    /// The baseline's version.
    pub baseline_version: Version,
    /// The launch spec the baseline pins (user data read from its file).
    pub launch: LaunchSpec,
    /// The strategy.
    pub strategy: StrategySettings,
    /// Who passes the strategy's gates: automatic, `immut promote`, or the analysis
    /// (`strategy.promotion`).
    pub promotion: Promotion,
    /// The analysis that decides the gates when `strategy.promotion = "analysis"`.
    pub analysis: Option<AnalysisSettings>,
    /// Health checks.
    pub health: HealthSettings,
    /// Engine timing.
    pub rollout: RolloutSettings,
    /// Latencies `plan` assumes.
    pub plan_latencies: Latencies,
    /// What `immut watch` does.
    pub watch: WatchSpec,
    /// Maps library errors that name a field back to the spec.
    pub fields: BTreeMap<String, Location>,
}

impl Spec {
    /// A deployer builder with everything from the spec but the backends, the journal, the
    /// ledger and the key. Fails only when the analysis cannot build its providers (a bearer
    /// token's variable unset since the spec was read).
    /// `alarms` makes the providers of `[analysis]`'s `cloudwatch` metrics.
    pub fn deployer_builder(&self, alarms: analysis::Alarms<'_>) -> Result<DeployerBuilder, immut::Error> {
        let r = &self.rollout;
        let mut b = Deployer::builder()
            .strategy_arc(self.strategy.build_with(self.promotion))
            .desired(self.desired)
            .min_ready(r.min_ready)
            .health_thresholds(self.health.thresholds)
            .accept_no_way_back(r.accept_no_way_back);
        if let Some(d) = r.progress_deadline {
            b = b.progress_deadline(d);
        }
        if let Some(d) = r.instance_deadline {
            b = b.instance_deadline(d);
        }
        if let Some(d) = r.poll_interval {
            b = b.poll_interval(d);
        }
        if let Some(budget) = r.budget {
            b = b.replacement_budget(budget);
        }
        if let Some(analysis) = &self.analysis {
            b = b.gate(analysis.gate(alarms)?);
        }
        Ok(b)
    }

    /// The location of a field by its dotted name, or the top of the file.
    pub fn location_of(&self, field: &str) -> Location {
        let mut key = field;
        loop {
            if let Some(l) = self.fields.get(key) {
                return l.clone();
            }
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None => return Location::File { path: self.file.clone(), line: 1, column: 1 },
            }
        }
    }

    /// Turns a library error that names a field (`field: problem`) into a spec error at that
    /// field; `None` when the error is not about the input.
    pub fn locate(&self, error: &immut::Error) -> Option<SpecError> {
        if error.kind() != immut::ErrorKind::InvalidInput {
            return None;
        }
        let message = error.message();
        // `field: problem`, or `field (what): problem` as the analysis says it.
        let field = message
            .split_once(": ")
            .map(|(f, _)| f.split_once(" (").map_or(f, |(f, _)| f))
            .filter(|f| !f.contains(' '))
            .unwrap_or("");
        let field = LIBRARY_FIELDS.iter().find(|(lib, _)| *lib == field).map_or(field, |(_, spec)| spec);
        Some(SpecError { location: self.location_of(field), message: message.to_owned() })
    }

    /// Runs the library's own checks of the settings (the deployer builder's), with a
    /// simulator standing in for the provider: no provider is called.
    fn check_with_library(&self) -> Result<(), immut::Error> {
        let sim = immut::sim::SimProvider::builder().build()?;
        let builder = self.deployer_builder(&analysis::unconnected)?;
        builder.provider(sim.clone()).traffic(sim.traffic()).build().map(|_| ())
    }
}

/// The library's field names that differ from the spec's.
const LIBRARY_FIELDS: &[(&str, &str)] = &[
    ("max_surge", "strategy.max_surge"),
    ("max_unavailable", "strategy.max_unavailable"),
    ("steps", "strategy.steps"),
    ("bake", "strategy.bake"),
    ("strategy_by_change", "strategy"),
    ("instance_deadline", "rollout.instance_deadline"),
    ("progress_deadline", "rollout.progress_deadline"),
    ("poll_interval", "rollout.poll_interval"),
    ("accept_no_way_back", "rollout.accept_no_way_back"),
    ("health_thresholds", "health"),
    ("signing_key", "signing_key_env"),
    ("listen", "provider.local.listen"),
    ("term_timeout", "provider.local.term_timeout"),
    ("state_dir", "provider.local.state_dir"),
    ("journal_dir", "state"),
    ("ledger", "state"),
    ("labels", "baseline.labels"),
];

/// Reads, overrides and checks a spec file.
pub fn load(path: &Path, overrides: &[String]) -> Result<Spec, SpecErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "; write one with `immut init --provider local`, or pass -f PATH"
        } else {
            ""
        };
        SpecErrors(vec![SpecError {
            location: Location::File { path: path.to_owned(), line: 1, column: 1 },
            message: format!("cannot read the spec: {e}{hint}"),
        }])
    })?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    parse(&text, path, &base, overrides)
}

/// Parses and checks spec text as if read from `path`; relative paths resolve against `base`.
/// Never panics: every problem is a [`SpecError`] with a location.
pub fn parse(text: &str, path: &Path, base: &Path, overrides: &[String]) -> Result<Spec, SpecErrors> {
    let mut locator = Locator::new(path, text);
    let mut root = DeTable::parse(text).map_err(|e| {
        SpecErrors(vec![locator.error(e.span(), format!("{} (this is not valid TOML)", e.message().trim_end()))])
    })?;
    let mut next = text.len() + 1;
    for raw in overrides {
        let start = next;
        next += raw.len() + 1;
        locator.overrides.push((start..next - 1, raw.clone()));
        apply_override(&mut root, raw, start).map_err(|m| SpecErrors(vec![locator.error(Some(start..start), m)]))?;
    }
    let de = toml::de::Deserializer::from(root);
    let raw = RawSpec::deserialize(de).map_err(|e| SpecErrors(vec![locator.error(e.span(), explain(e.message()))]))?;
    Checker { locator: &locator, base, errors: Vec::new(), fields: BTreeMap::new() }.check(raw)
}

fn explain(message: &str) -> String {
    let message = message.trim_end();
    if message.starts_with("missing field") {
        format!("{message}; `immut init` writes a complete example")
    } else if message.contains("did not match any variant of untagged enum RawCount") {
        "expected a count (3) or a percent (\"25%\")".to_owned()
    } else {
        message.to_owned()
    }
}

/// Applies `key.path=value` to the document. The value is TOML (`3`, `"30s"`, `[1, "25%"]`,
/// `true`), or else taken as a string. Its spans are moved to `at`, past the file, so errors
/// in it are reported against the override.
fn apply_override<'i>(root: &mut Spanned<DeTable<'i>>, raw: &'i str, at: usize) -> Result<(), String> {
    let (key, value) =
        raw.split_once('=').ok_or_else(|| format!("{raw:?} is not key=value; write for example --set desired=5"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{key:?} is not a dotted key such as strategy.max_surge"));
    }
    let value = value.trim();
    let parsed = match DeValue::parse(value) {
        Ok(v) => v.into_inner(),
        Err(_) => DeValue::String(Cow::Borrowed(value)),
    };
    let value = moved(parsed, at..at + raw.len());
    let span = at..at + raw.len();
    let mut table = root.get_mut();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            table.insert(Spanned::new(span.clone(), Cow::Borrowed(*part)), value);
            return Ok(());
        }
        if table.get(*part).is_none() {
            table.insert(
                Spanned::new(span.clone(), Cow::Borrowed(*part)),
                Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        table = match table.get_mut(*part).map(Spanned::get_mut) {
            Some(DeValue::Table(t)) => t,
            _ => return Err(format!("{} is not a table, so {key} cannot be set", parts[..=i].join("."))),
        };
    }
    Ok(())
}

fn moved<'i>(value: DeValue<'i>, span: std::ops::Range<usize>) -> Spanned<DeValue<'i>> {
    let value = match value {
        DeValue::Array(items) => {
            let mut out = toml::de::DeArray::new();
            for item in items.iter() {
                out.push(moved(item.get_ref().clone(), span.clone()));
            }
            DeValue::Array(out)
        }
        DeValue::Table(t) => {
            let mut out = DeTable::new();
            for (k, v) in t {
                out.insert(Spanned::new(span.clone(), k.into_inner()), moved(v.into_inner(), span.clone()));
            }
            DeValue::Table(out)
        }
        other => other,
    };
    Spanned::new(span, value)
}

struct Checker<'a> {
    locator: &'a Locator,
    base: &'a Path,
    errors: Vec<SpecError>,
    fields: BTreeMap<String, Location>,
}

impl Checker<'_> {
    fn err<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(self.locator.error(Some(spanned.span()), message));
    }

    fn note<T>(&mut self, field: &str, spanned: &Spanned<T>) {
        self.fields.insert(field.to_owned(), self.locator.at(spanned.span().start));
    }

    fn name(&mut self, field: &str, value: &Spanned<String>) -> String {
        self.note(field, value);
        if let Err(e) = immut::model::validate_name(field, value.get_ref()) {
            self.err(value, e.message().to_owned());
        }
        value.get_ref().clone()
    }

    fn version(&mut self, field: &str, value: &Spanned<String>) -> Version {
        self.note(field, value);
        Version::parse(value.get_ref()).unwrap_or_else(|e| {
            self.err(
                value,
                format!("{field}: {:?} is not a semver version ({e}); write for example \"1.4.2\"", value.get_ref()),
            );
            Version::new(0, 0, 0)
        })
    }

    fn duration(&mut self, field: &str, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        self.note(field, value);
        humantime::parse_duration(value.get_ref().trim()).unwrap_or_else(|e| {
            self.err(
                value,
                format!(
                    "{field}: {:?} is not a duration ({e}); write a number and a unit, such as \"500ms\", \"30s\", \"2m\" or \"1h\"",
                    value.get_ref()
                ),
            );
            default
        })
    }

    fn count(&mut self, field: &str, value: &Spanned<RawCount>) -> Count {
        self.note(field, value);
        let bad = |this: &mut Self, what: String| {
            this.err(value, format!("{field}: {what}; give a count (3) or a percent from \"0%\" to \"100%\""));
            Count::Count(0)
        };
        match value.get_ref() {
            RawCount::Number(n) if *n >= 0 => Count::Count(*n as usize),
            RawCount::Number(n) => bad(self, format!("{n} is negative")),
            RawCount::Text(t) => {
                let t = t.trim();
                match t.strip_suffix('%').map(|p| p.trim().parse::<u64>()) {
                    Some(Ok(p)) if p <= 100 => Count::Percent(p as u8),
                    Some(Ok(p)) => bad(self, format!("{p}% is over 100%")),
                    _ => match t.parse::<u64>() {
                        Ok(n) => Count::Count(n as usize),
                        Err(_) => bad(self, format!("{t:?} is neither a count nor a percent")),
                    },
                }
            }
        }
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }

    /// Reports each setting that is present (`Some` span) but not `allowed`, in `message`'s words.
    fn only(
        &mut self,
        present: &[(&str, Option<std::ops::Range<usize>>)],
        allowed: impl Fn(&str) -> bool,
        message: impl Fn(&str) -> String,
    ) {
        for (name, span) in present {
            if let Some(span) = span.clone().filter(|_| !allowed(name)) {
                self.errors.push(self.locator.error(Some(span), message(name)));
            }
        }
    }

    fn promotion(&mut self, raw: Option<&Spanned<String>>) -> Promotion {
        let Some(raw) = raw else { return Promotion::Auto };
        self.note("strategy.promotion", raw);
        match raw.get_ref().as_str() {
            "auto" => Promotion::Auto,
            "manual" => Promotion::Manual,
            "analysis" => Promotion::Analysis,
            other => {
                self.err(
                    raw,
                    format!(
                        "strategy.promotion: {other:?}; use \"auto\" (gates pass at once), \"manual\" (each gate waits for `immut promote`) or \"analysis\" (the [analysis] metrics decide)"
                    ),
                );
                Promotion::Auto
            }
        }
    }

    fn positive(&mut self, field: &str, value: &Spanned<i64>, at_least: i64) -> i64 {
        self.note(field, value);
        if *value.get_ref() < at_least {
            self.err(
                value,
                format!("{field}: {} is below {at_least}; give a whole number of {at_least} or more", value.get_ref()),
            );
        }
        *value.get_ref()
    }

    fn check(mut self, raw: RawSpec) -> Result<Spec, SpecErrors> {
        let service = self.name("service", &raw.service);
        let desired = self.positive("desired", &raw.desired, 1).max(1) as usize;
        let state = match &raw.state {
            Some(s) => {
                self.note("state", s);
                if s.get_ref().trim().is_empty() {
                    self.err(s, "state: is empty; give a directory such as \".immut/state\"");
                }
                s.get_ref().clone()
            }
            None => ".immut/state".to_owned(),
        };
        let state = if crate::state::is_url(&state) { state } else { self.path(&state).display().to_string() };
        let signing_key_env = raw.signing_key_env.as_ref().map(|v| {
            self.note("signing_key_env", v);
            let name = v.get_ref();
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                self.err(
                    v,
                    "signing_key_env: give the NAME of an environment variable (letters, digits, '_'), such as \"IMMUT_SIGNING_KEY\"; never the key itself",
                );
            }
            name.clone()
        });
        let provider = self.provider(&raw.provider);
        let artifact = raw.artifact.get_ref();
        self.note("artifact", &raw.artifact);
        let artifact = ArtifactSettings {
            name: self.name("artifact.name", &artifact.name),
            version: self.version("artifact.version", &artifact.version),
            image: {
                self.note("artifact.image", &artifact.image);
                if artifact.image.get_ref().trim().is_empty() {
                    self.err(&artifact.image, "artifact.image: is empty; give the provider's image reference");
                }
                artifact.image.get_ref().clone()
            },
            digest: artifact.digest.as_ref().map(|d| {
                self.note("artifact.digest", d);
                if let Err(e) = immut::model::validate_digest("artifact.digest", d.get_ref()) {
                    self.err(d, e.message().to_owned());
                }
                d.get_ref().clone()
            }),
        };
        let b = raw.baseline.get_ref();
        self.note("baseline", &raw.baseline);
        let baseline_name = self.name("baseline.name", &b.name);
        let baseline_version = self.version("baseline.version", &b.version);
        if let Some(labels) = &b.labels {
            self.note("baseline.labels", labels);
        }
        let user_data = b.user_data_file.as_ref().and_then(|f| {
            self.note("baseline.user_data_file", f);
            let path = self.path(f.get_ref());
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(e) => {
                    self.err(f, format!("baseline.user_data_file: cannot read {}: {e}; give a readable file (relative paths start at the spec's directory)", path.display()));
                    None
                }
            }
        });
        let launch = LaunchSpec {
            machine_type: b.machine_type.clone(),
            network: b.network.clone(),
            user_data,
            args: b.args.clone(),
            env: b.env.clone(),
            labels: b.labels.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default(),
            params: b.params.clone(),
            sealed: b.sealed,
        };
        let strategy = self.strategy(&raw.strategy);
        let promotion = self.promotion(raw.strategy.get_ref().promotion.as_ref());
        let analysis = raw.analysis.as_ref().map(|a| self.analysis(a));
        match (&analysis, promotion, &raw.analysis) {
            (None, Promotion::Analysis, _) => self.err(
                raw.strategy.get_ref().promotion.as_ref().unwrap_or(&raw.strategy.get_ref().kind),
                "strategy.promotion: \"analysis\" needs an [analysis] section with the metrics that decide; add one (`immut init` shows one)",
            ),
            (Some(_), p, Some(a)) if p != Promotion::Analysis => self.err(
                a,
                "analysis: is set but strategy.promotion is not \"analysis\", so nothing would run it; set strategy.promotion = \"analysis\"",
            ),
            _ => {}
        }
        let health = self.health(raw.health.as_ref());
        let rollout = self.rollout(raw.rollout.as_ref());
        let plan_latencies = self.latencies("plan", raw.plan.as_ref().map(Spanned::get_ref), default_plan_latencies());
        let watch = self.watch(raw.watch.as_ref());
        if !self.errors.is_empty() {
            return Err(SpecErrors(self.errors));
        }
        let spec = Spec {
            file: self.locator.path.clone(),
            service,
            desired,
            state,
            signing_key_env,
            provider,
            artifact,
            baseline_name,
            baseline_version,
            launch,
            strategy,
            promotion,
            analysis,
            health,
            rollout,
            plan_latencies,
            watch,
            fields: self.fields,
        };
        if let Err(e) = spec.check_with_library() {
            let located =
                spec.locate(&e).unwrap_or_else(|| SpecError { location: spec.location_of(""), message: e.to_string() });
            return Err(SpecErrors(vec![located]));
        }
        Ok(spec)
    }

    fn provider(&mut self, raw: &Spanned<RawProvider>) -> ProviderSettings {
        self.note("provider", raw);
        let p = raw.get_ref();
        let kind = p.kind.get_ref().as_str();
        self.note("provider.kind", &p.kind);
        let known = ["local", "sim", "aws", "gcp"];
        if !known.contains(&kind) {
            self.err(
                &p.kind,
                format!("provider.kind: {kind:?} is not a provider; use one of {}", PROVIDER_KINDS.join(", ")),
            );
        } else if !PROVIDER_KINDS.contains(&kind) {
            self.err(
                &p.kind,
                format!(
                    "provider.kind: this immut was built without the {kind} provider; reinstall it with `cargo install immut-cli --features {kind}` (built in: {})",
                    PROVIDER_KINDS.join(", ")
                ),
            );
        }
        let sections = [
            ("local", p.local.as_ref().map(Spanned::span)),
            ("sim", p.sim.as_ref().map(Spanned::span)),
            ("aws", p.aws.as_ref().map(Spanned::span)),
            ("gcp", p.gcp.as_ref().map(Spanned::span)),
        ];
        self.only(&sections, |name| name == kind || !known.contains(&kind), |name| {
            format!("provider.{name}: is set but provider.kind is {kind:?}; remove [provider.{name}] or set kind = {name:?}")
        });
        match kind {
            "sim" => ProviderSettings::Sim(self.sim(p.sim.as_ref())),
            "aws" => ProviderSettings::Aws(self.aws(p.aws.as_ref(), &p.kind)),
            "gcp" => ProviderSettings::Gcp(self.gcp(p.gcp.as_ref(), &p.kind)),
            _ => ProviderSettings::Local(self.local(p.local.as_ref())),
        }
    }

    fn local(&mut self, raw: Option<&Spanned<RawLocal>>) -> LocalSettings {
        let none = RawLocal { state_dir: None, listen: None, drain_timeout: None, term_timeout: None };
        if let Some(r) = raw {
            self.note("provider.local", r);
        }
        let r = raw.map_or(&none, Spanned::get_ref);
        let state_dir = match &r.state_dir {
            Some(d) => {
                self.note("provider.local.state_dir", d);
                self.path(d.get_ref())
            }
            None => self.path(".immut/local"),
        };
        let listen = match &r.listen {
            Some(l) => {
                self.note("provider.local.listen", l);
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.ip().is_loopback() => a,
                    Ok(a) => {
                        self.err(l, format!("provider.local.listen: {a} is not a loopback address; the local balancer listens on 127.0.0.1 only"));
                        a
                    }
                    Err(_) => {
                        self.err(l, format!("provider.local.listen: {:?} is not host:port; write for example \"127.0.0.1:8080\" (port 0: any free port)", l.get_ref()));
                        SocketAddr::from(([127, 0, 0, 1], 0))
                    }
                }
            }
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        LocalSettings {
            state_dir,
            listen,
            drain_timeout: self.duration(
                "provider.local.drain_timeout",
                r.drain_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            term_timeout: self.duration("provider.local.term_timeout", r.term_timeout.as_ref(), Duration::from_secs(5)),
        }
    }

    fn latencies(&mut self, section: &str, raw: Option<&RawLatencies>, default: Latencies) -> Latencies {
        let Some(r) = raw else { return default };
        Latencies {
            api: self.duration(&format!("{section}.api"), r.api.as_ref(), default.api),
            launch_to_running: self.duration(
                &format!("{section}.launch_to_running"),
                r.launch_to_running.as_ref(),
                default.launch_to_running,
            ),
            boot_to_healthy: self.duration(
                &format!("{section}.boot_to_healthy"),
                r.boot_to_healthy.as_ref(),
                default.boot_to_healthy,
            ),
            drain: self.duration(&format!("{section}.drain"), r.drain.as_ref(), default.drain),
            ..default
        }
    }

    fn sim(&mut self, raw: Option<&Spanned<RawSim>>) -> SimSettings {
        let defaults = Latencies {
            api: Duration::from_millis(2),
            launch_to_running: Duration::from_millis(20),
            boot_to_healthy: Duration::from_millis(20),
            drain: Duration::from_millis(5),
            ..Latencies::default()
        };
        let Some(raw) = raw else {
            return SimSettings {
                fleet: self.path(".immut/sim-fleet.json"),
                latencies: defaults,
                seed: 0,
                never_healthy_versions: Vec::new(),
                fail_launch_calls: Vec::new(),
                fail_launch_kind: immut::ErrorKind::QuotaExceeded,
                throttle_rate: 0.0,
            };
        };
        self.note("provider.sim", raw);
        let r = raw.get_ref();
        let fleet = match &r.fleet {
            Some(f) => {
                self.note("provider.sim.fleet", f);
                self.path(f.get_ref())
            }
            None => self.path(".immut/sim-fleet.json"),
        };
        let given = RawLatencies {
            api: r.api.clone(),
            launch_to_running: r.launch_to_running.clone(),
            boot_to_healthy: r.boot_to_healthy.clone(),
            drain: r.drain.clone(),
        };
        let latencies = self.latencies("provider.sim", Some(&given), defaults);
        let seed = r.seed.as_ref().map_or(0, |s| self.positive("provider.sim.seed", s, 0).max(0) as u64);
        let never_healthy_versions = r
            .never_healthy_versions
            .iter()
            .flatten()
            .map(|v| self.version("provider.sim.never_healthy_versions", v))
            .collect();
        let fail_launch_calls = r
            .fail_launch_calls
            .iter()
            .flatten()
            .map(|c| self.positive("provider.sim.fail_launch_calls", c, 1).max(1) as u64)
            .collect();
        let fail_launch_kind = match &r.fail_launch_kind {
            None => immut::ErrorKind::QuotaExceeded,
            Some(k) => {
                self.note("provider.sim.fail_launch_kind", k);
                match k.get_ref().as_str() {
                    "quota_exceeded" => immut::ErrorKind::QuotaExceeded,
                    "unavailable" => immut::ErrorKind::Unavailable,
                    "permission_denied" => immut::ErrorKind::PermissionDenied,
                    other => {
                        self.err(k, format!("provider.sim.fail_launch_kind: {other:?}; use quota_exceeded, unavailable or permission_denied"));
                        immut::ErrorKind::QuotaExceeded
                    }
                }
            }
        };
        let throttle_rate = r.throttle_rate.as_ref().map_or(0.0, |t| {
            self.note("provider.sim.throttle_rate", t);
            let v = *t.get_ref();
            if !(0.0..1.0).contains(&v) {
                self.err(
                    t,
                    format!("provider.sim.throttle_rate: {v} is not a probability below 1; use 0.0 up to 0.99"),
                );
                0.0
            } else {
                v
            }
        });
        SimSettings {
            fleet,
            latencies,
            seed,
            never_healthy_versions,
            fail_launch_calls,
            fail_launch_kind,
            throttle_rate,
        }
    }

    fn aws(&mut self, raw: Option<&Spanned<RawAws>>, kind: &Spanned<String>) -> AwsSettings {
        let Some(raw) = raw else {
            self.err(kind, "provider.aws: the aws provider needs a [provider.aws] table with target_group, or listener, blue_target_group and green_target_group");
            return AwsSettings {
                region: None,
                endpoint: None,
                subnet: None,
                target_group: None,
                listener: None,
                drain_timeout: Duration::ZERO,
            };
        };
        self.note("provider.aws", raw);
        let r = raw.get_ref();
        let listener = match (&r.listener, &r.blue_target_group, &r.green_target_group) {
            (Some(l), Some(b), Some(g)) => Some((l.get_ref().clone(), b.get_ref().clone(), g.get_ref().clone())),
            (None, None, None) => None,
            _ => {
                self.err(
                    raw,
                    "provider.aws: blue/green needs all three of listener, blue_target_group and green_target_group",
                );
                None
            }
        };
        if listener.is_some() == r.target_group.is_some() {
            self.err(raw, "provider.aws: give either target_group (rolling, canary) or listener with blue_target_group and green_target_group (blue/green)");
        }
        AwsSettings {
            region: r.region.clone(),
            endpoint: r.endpoint.clone(),
            subnet: r.subnet.clone(),
            target_group: r.target_group.as_ref().map(|t| t.get_ref().clone()),
            listener,
            drain_timeout: self.duration(
                "provider.aws.drain_timeout",
                r.drain_timeout.as_ref(),
                Duration::from_secs(30),
            ),
        }
    }

    fn gcp(&mut self, raw: Option<&Spanned<RawGcp>>, kind: &Spanned<String>) -> GcpSettings {
        let Some(raw) = raw else {
            self.err(kind, "provider.gcp: the gcp provider needs a [provider.gcp] table with backend_service, and group or blue_group and green_group");
            return GcpSettings {
                project: None,
                zones: Vec::new(),
                endpoint: None,
                anonymous: false,
                zone_fallback: false,
                backend_service: String::new(),
                group: None,
                colours: None,
            };
        };
        self.note("provider.gcp", raw);
        let r = raw.get_ref();
        let colours = match (&r.blue_group, &r.green_group) {
            (Some(b), Some(g)) => Some((b.get_ref().clone(), g.get_ref().clone())),
            (None, None) => None,
            _ => {
                self.err(raw, "provider.gcp: blue/green needs both blue_group and green_group");
                None
            }
        };
        if colours.is_some() == r.group.is_some() {
            self.err(
                raw,
                "provider.gcp: give either group (rolling, canary) or blue_group and green_group (blue/green)",
            );
        }
        GcpSettings {
            project: r.project.clone(),
            zones: r.zones.clone().unwrap_or_default(),
            endpoint: r.endpoint.clone(),
            anonymous: r.anonymous.unwrap_or(false),
            zone_fallback: r.zone_fallback.unwrap_or(false),
            backend_service: r.backend_service.get_ref().clone(),
            group: r.group.as_ref().map(|g| g.get_ref().clone()),
            colours,
        }
    }

    fn strategy(&mut self, raw: &Spanned<RawStrategy>) -> StrategySettings {
        self.note("strategy", raw);
        let s = raw.get_ref();
        self.note("strategy.kind", &s.kind);
        let kind = s.kind.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "blue_green" => &["bake", "keep_old", "promotion"],
            "rolling" => &["max_surge", "max_unavailable", "pause"],
            "canary" => &["steps", "pause", "promotion"],
            other => {
                self.err(
                    &s.kind,
                    format!("strategy.kind: {other:?} is not a strategy; use blue_green, rolling or canary"),
                );
                &["bake", "keep_old", "max_surge", "max_unavailable", "pause", "steps", "promotion"]
            }
        };
        let present = [
            ("bake", s.bake.as_ref().map(Spanned::span)),
            ("keep_old", s.keep_old.as_ref().map(Spanned::span)),
            ("max_surge", s.max_surge.as_ref().map(Spanned::span)),
            ("max_unavailable", s.max_unavailable.as_ref().map(Spanned::span)),
            ("pause", s.pause.as_ref().map(Spanned::span)),
            ("steps", s.steps.as_ref().map(Spanned::span)),
            ("promotion", s.promotion.as_ref().map(Spanned::span)),
        ];
        self.only(
            &present,
            |name| allowed.contains(&name),
            |name| format!("strategy.{name}: is not a setting of {kind}; {kind} takes {}", allowed.join(", ")),
        );
        let pause = self.duration("strategy.pause", s.pause.as_ref(), Duration::ZERO);
        match kind {
            "rolling" => StrategySettings::Rolling {
                max_surge: s.max_surge.as_ref().map_or(Count::Count(1), |c| self.count("strategy.max_surge", c)),
                max_unavailable: s
                    .max_unavailable
                    .as_ref()
                    .map_or(Count::Count(0), |c| self.count("strategy.max_unavailable", c)),
                pause,
            },
            "canary" => {
                let steps = match &s.steps {
                    Some(steps) => {
                        self.note("strategy.steps", steps);
                        if steps.get_ref().is_empty() {
                            self.err(
                                steps,
                                "strategy.steps: is empty; give the canary's steps, such as [1, \"25%\", \"50%\"]",
                            );
                        }
                        steps.get_ref().iter().map(|c| self.count("strategy.steps", c)).collect()
                    }
                    None => {
                        self.err(&s.kind, "strategy.steps: canary needs steps, such as steps = [1, \"25%\", \"50%\"]");
                        Vec::new()
                    }
                };
                StrategySettings::Canary { steps, pause }
            }
            _ => StrategySettings::BlueGreen {
                bake: self.duration("strategy.bake", s.bake.as_ref(), Duration::ZERO),
                keep_old: self.duration("strategy.keep_old", s.keep_old.as_ref(), Duration::ZERO),
            },
        }
    }

    fn health(&mut self, raw: Option<&Spanned<RawHealth>>) -> HealthSettings {
        let defaults = HealthThresholds::default();
        let Some(raw) = raw else {
            return HealthSettings {
                http: None,
                verify: None,
                timeout: Duration::from_secs(2),
                provider_status: true,
                thresholds: defaults,
            };
        };
        self.note("health", raw);
        let r = raw.get_ref();
        let http = r.http.as_ref().map(|p| self.http_path("health.http", p, "to probe, such as \"/healthz\""));
        let verify = r
            .verify
            .as_ref()
            .map(|p| self.http_path("health.verify", p, "where instances say what they run, such as \"/version\""));
        let threshold = |this: &mut Self, field: &str, v: &Option<Spanned<i64>>, d: u32| {
            v.as_ref().map_or(d, |v| this.positive(field, v, 1).clamp(1, u32::MAX as i64) as u32)
        };
        HealthSettings {
            http,
            verify,
            timeout: self.duration("health.timeout", r.timeout.as_ref(), Duration::from_secs(2)),
            provider_status: r.provider_status.unwrap_or(true),
            thresholds: HealthThresholds {
                healthy: threshold(self, "health.healthy_threshold", &r.healthy_threshold, defaults.healthy),
                unhealthy: threshold(self, "health.unhealthy_threshold", &r.unhealthy_threshold, defaults.unhealthy),
            },
        }
    }

    /// An HTTP path of `field`, which must start with `/`; `what` says what the path is for.
    fn http_path(&mut self, field: &str, p: &Spanned<String>, what: &str) -> String {
        self.note(field, p);
        if !p.get_ref().starts_with('/') {
            self.err(p, format!("{field}: {:?} is not a path; give the path {what}", p.get_ref()));
        }
        p.get_ref().clone()
    }

    fn watch(&mut self, raw: Option<&Spanned<RawWatch>>) -> WatchSpec {
        let defaults = WatchSpec::default();
        let Some(raw) = raw else { return defaults };
        self.note("watch", raw);
        let w = raw.get_ref();
        let interval = self.duration("watch.interval", w.interval.as_ref(), defaults.interval);
        if let Some(v) = w.interval.as_ref().filter(|_| interval.is_zero()) {
            self.err(v, "watch.interval: must be above zero; for example \"30s\"");
        }
        let grace = w.grace.as_ref().map(|g| self.duration("watch.grace", Some(g), Duration::ZERO));
        let max_repairs = w
            .max_repairs
            .as_ref()
            .map_or(defaults.max_repairs, |v| self.positive("watch.max_repairs", v, 1).max(1) as usize);
        let breaker_threshold = w.breaker_threshold.as_ref().map_or(defaults.breaker_threshold, |v| {
            self.positive("watch.breaker_threshold", v, 1).clamp(1, u32::MAX as i64) as u32
        });
        let unmanaged = match &w.unmanaged {
            None => defaults.unmanaged,
            Some(v) => {
                self.note("watch.unmanaged", v);
                match v.get_ref().as_str() {
                    "report" => UnmanagedAction::Report,
                    "replace" => UnmanagedAction::Replace,
                    "terminate" => UnmanagedAction::Terminate,
                    other => {
                        self.err(
                            v,
                            format!(
                                "watch.unmanaged: {other:?}; use \"report\" (the default), \"replace\" (a repair drains and removes them) or \"terminate\" (terminated outright while the release holds the floor)"
                            ),
                        );
                        defaults.unmanaged
                    }
                }
            }
        };
        let unmanaged_scope = match &w.unmanaged_scope {
            None => defaults.unmanaged_scope,
            Some(v) => {
                self.note("watch.unmanaged_scope", v);
                match v.get_ref().as_str() {
                    "serving" => UnmanagedScope::Serving,
                    "service" => UnmanagedScope::Service,
                    other => {
                        self.err(
                            v,
                            format!(
                                "watch.unmanaged_scope: {other:?}; use \"serving\" (only those in the service's balancer, the default) or \"service\" (also those the provider attributes to the service)"
                            ),
                        );
                        defaults.unmanaged_scope
                    }
                }
            }
        };
        WatchSpec { interval, grace, max_repairs, breaker_threshold, unmanaged, unmanaged_scope }
    }

    fn rollout(&mut self, raw: Option<&Spanned<RawRollout>>) -> RolloutSettings {
        let Some(raw) = raw else {
            return RolloutSettings {
                min_ready: Duration::ZERO,
                progress_deadline: None,
                instance_deadline: None,
                poll_interval: None,
                budget: None,
                accept_no_way_back: false,
            };
        };
        self.note("rollout", raw);
        let r = raw.get_ref();
        let opt = |this: &mut Self, field: &str, v: &Option<Spanned<String>>| {
            v.as_ref().map(|v| this.duration(field, Some(v), Duration::ZERO))
        };
        let budget = if r.replacement_budget_per_wave.is_some() || r.replacement_budget_per_deployment.is_some() {
            let d = ReplacementBudget::default();
            Some(ReplacementBudget {
                per_wave: r
                    .replacement_budget_per_wave
                    .as_ref()
                    .map_or(d.per_wave, |c| self.count("rollout.replacement_budget_per_wave", c)),
                per_deployment: r
                    .replacement_budget_per_deployment
                    .as_ref()
                    .map_or(d.per_deployment, |c| self.count("rollout.replacement_budget_per_deployment", c)),
            })
        } else {
            None
        };
        RolloutSettings {
            min_ready: self.duration("rollout.min_ready", r.min_ready.as_ref(), Duration::ZERO),
            progress_deadline: opt(self, "rollout.progress_deadline", &r.progress_deadline),
            instance_deadline: opt(self, "rollout.instance_deadline", &r.instance_deadline),
            poll_interval: opt(self, "rollout.poll_interval", &r.poll_interval),
            budget,
            accept_no_way_back: r.accept_no_way_back.unwrap_or(false),
        }
    }
}

/// What `plan` assumes when the spec has no `[plan]` table: a cloud's typical latencies.
pub fn default_plan_latencies() -> Latencies {
    Latencies {
        api: Duration::from_millis(100),
        launch_to_running: Duration::from_secs(30),
        boot_to_healthy: Duration::from_secs(20),
        drain: Duration::from_secs(10),
        ..Latencies::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"service = "web"
desired = 3

[provider]
kind = "sim"

[artifact]
name = "web"
version = "1.0.0"
image = "img-1"

[baseline]
name = "base"
version = "1.0.0"

[strategy]
kind = "rolling"
max_surge = "25%"
"#;

    fn parse_with(text: &str, overrides: &[&str]) -> Result<Spec, SpecErrors> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        parse(text, Path::new("immut.toml"), Path::new("/tmp"), &overrides)
    }

    #[test]
    fn a_minimal_spec_parses_with_defaults() {
        let spec = parse_with(MINIMAL, &[]).unwrap();
        assert_eq!(spec.service, "web");
        assert_eq!(spec.desired, 3);
        assert_eq!(spec.state, "/tmp/.immut/state");
        assert_eq!(
            spec.strategy,
            StrategySettings::Rolling {
                max_surge: Count::Percent(25),
                max_unavailable: Count::Count(0),
                pause: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_spec_without_sealed_stays_unsealed_and_keeps_its_fingerprint() {
        let old = parse_with(MINIMAL, &[]).unwrap();
        assert!(!old.launch.sealed);
        assert_eq!(old.launch.fingerprint(), LaunchSpec::default().fingerprint());
        let sealed = parse_with(
            &MINIMAL.replace("version = \"1.0.0\"\n\n[strategy]", "version = \"1.0.0\"\nsealed = true\n\n[strategy]"),
            &[],
        )
        .unwrap();
        assert!(sealed.launch.sealed);
        assert_ne!(sealed.launch.fingerprint(), old.launch.fingerprint());
        assert!(parse_with(MINIMAL, &["baseline.sealed=true"]).unwrap().launch.sealed);
        let e = parse_with(MINIMAL, &["baseline.sealed=\"yes\""]).unwrap_err();
        assert!(e.to_string().contains("sealed"), "{e}");
    }

    #[test]
    fn overrides_apply_before_validation_and_are_located() {
        let spec = parse_with(MINIMAL, &["desired=5", "strategy.pause=30s", "rollout.min_ready=\"2s\""]).unwrap();
        assert_eq!(spec.desired, 5);
        assert_eq!(spec.rollout.min_ready, Duration::from_secs(2));
        let e = parse_with(MINIMAL, &["strategy.max_surge=120%"]).unwrap_err();
        assert_eq!(e.0[0].location, Location::Override("strategy.max_surge=120%".into()));
        assert!(e.0[0].message.contains("over 100%"), "{e}");
        let e = parse_with(MINIMAL, &["desired"]).unwrap_err();
        assert!(e.to_string().starts_with("--set desired: "), "{e}");
    }

    #[test]
    fn errors_name_line_and_column_and_what_is_allowed() {
        let text = MINIMAL.replace("max_surge = \"25%\"", "max_surge = \"25%\"\nbake = \"1x\"");
        let e = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("immut.toml:19:8: strategy.bake: is not a setting of rolling"), "{e}");
        let text = MINIMAL.replace("desired = 3", "desired = 3\ncolour = \"blue\"");
        let e = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("immut.toml:3:1: unknown field `colour`, expected one of"), "{e}");
        let text = MINIMAL.replace("version = \"1.0.0\"\nimage", "version = \"one\"\nimage");
        let e = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("immut.toml:9:11: artifact.version: \"one\" is not a semver version"), "{e}");
    }

    #[test]
    fn library_checks_come_back_located() {
        let e = parse_with(MINIMAL, &["strategy.max_surge=0"]).unwrap_err();
        assert_eq!(e.0[0].location, Location::Override("strategy.max_surge=0".into()), "{e}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Every rejection names a location: `file:line:column: ` or `--set key=value: `.
        fn located(e: &SpecErrors, text: &str) {
            assert!(!e.0.is_empty());
            let lines = text.split('\n').count();
            for err in &e.0 {
                match &err.location {
                    Location::File { line, column, .. } => {
                        assert!(*line >= 1 && *line <= lines, "line {line} of {lines}: {err}");
                        assert!(*column >= 1, "{err}");
                    }
                    Location::Override(_) => assert!(err.to_string().starts_with("--set "), "{err}"),
                }
                assert!(!err.message.is_empty(), "{err}");
            }
        }

        fn mutate(text: &str, at: usize, len: usize, with: &str) -> String {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + len).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            format!("{}{}{}", &text[..at], with, &text[end..])
        }

        const PIECES: &[&str] = &[
            "",
            "\n",
            "=",
            "\"",
            "[",
            "]",
            "[[x]]",
            "{",
            "}",
            ",",
            "#",
            "'",
            "\"\"\"",
            "0",
            "-1",
            "1e400",
            "\"25%\"",
            "\"120%\"",
            "\"30x\"",
            "true",
            "desired = 0\n",
            "[strategy]\n",
            "kind = \"canary\"\n",
            "steps = []\n",
            "\u{0}",
            "é",
            "\u{feff}",
            "\\u{110000}",
            "[provider.aws]\n",
            "x.y.z = 1\n",
            "service = \"Web Server\"\n",
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

            #[test]
            fn arbitrary_text_never_panics_and_rejections_are_located(text in "\\PC{0,300}") {
                if let Err(e) = parse(&text, Path::new("immut.toml"), Path::new("/nonexistent"), &[]) {
                    located(&e, &text);
                }
            }

            #[test]
            fn mutated_specs_never_panic_and_rejections_are_located(
                edits in proptest::collection::vec((any::<usize>(), 0usize..12, proptest::sample::select(PIECES)), 1..5),
                base in proptest::sample::select(&[0usize, 1, 2, 3][..]),
            ) {
                let mut text = match base {
                    0 => MINIMAL.to_owned(),
                    1 => crate::init::template(crate::cli::InitProvider::Local),
                    2 => crate::init::template(crate::cli::InitProvider::Sim),
                    _ => crate::init::template(crate::cli::InitProvider::Aws),
                };
                for (at, len, with) in edits {
                    text = mutate(&text, at, len, with);
                }
                if let Err(e) = parse(&text, Path::new("immut.toml"), Path::new("/nonexistent"), &[]) {
                    located(&e, &text);
                }
            }

            #[test]
            fn arbitrary_overrides_never_panic_and_rejections_are_located(
                sets in proptest::collection::vec("[a-z_.]{0,24}(=[\\PC]{0,16})?", 0..4),
            ) {
                if let Err(e) = parse(MINIMAL, Path::new("immut.toml"), Path::new("/nonexistent"), &sets) {
                    located(&e, MINIMAL);
                }
            }
        }
    }
}
