//! Deploys an executable with the local provider and prints the engine's events as JSON lines.
//!
//! ```text
//! immut-local-deploy --state-dir DIR --artifact PATH --version 2.0.0
//!     [--service web] [--desired 3] [--strategy blue-green|rolling]
//!     [--previous-version 1.0.0] [--deployment-id ID] [--fail-health]
//! ```
//!
//! Instances are real processes recorded in DIR; the balancer's serving set is persisted
//! there too, so a later run (or `describe`) picks up where a killed one stopped. Exits 0 when
//! the deployment succeeds, 1 when it rolls back or fails, 2 on bad arguments.

use std::collections::HashMap;
use std::time::Duration;

use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::{BaselineSpec, BlueGreen, Deployer, DeploymentId, LaunchSpec, Release, Rolling};
use immut_local::{LocalProvider, sample};

const USAGE: &str = "usage: immut-local-deploy --state-dir DIR --artifact PATH --version VERSION [--service NAME] [--desired N] [--strategy blue-green|rolling] [--previous-version VERSION] [--deployment-id ID] [--fail-health]";

fn main() -> std::process::ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    while let Some(flag) = it.next() {
        let key = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        if key == "fail-health" {
            out.insert(key.to_owned(), "1".to_owned());
            continue;
        }
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.insert(key.to_owned(), value);
    }
    for required in ["state-dir", "artifact", "version"] {
        if !out.contains_key(required) {
            return Err(format!("--{required} is required"));
        }
    }
    Ok(out)
}

async fn run(args: HashMap<String, String>) -> Result<bool, Box<dyn std::error::Error>> {
    let version = |key: &str| -> Result<Option<Version>, String> {
        args.get(key).map(|v| Version::parse(v).map_err(|e| format!("--{key} {v:?}: {e}"))).transpose()
    };
    let service = args.get("service").map_or("web", String::as_str);
    let desired: usize =
        args.get("desired").map_or(Ok(3), |d| d.parse().map_err(|_| format!("--desired {d:?} is not a count")))?;
    let provider = LocalProvider::builder().state_dir(&args["state-dir"]).build()?;
    let balancer = provider.balancer().build().await?;
    let release = |version: Version, healthy: bool| -> immut_core::Result<Release> {
        let artifact = immut_local::artifact("sample", version, &args["artifact"])?;
        let mut spec = LaunchSpec::default();
        if !healthy {
            spec.env.insert(sample::FAIL_HEALTH.into(), "1".into());
        }
        Release::new(service, &artifact, &BaselineSpec::new("sample", Version::new(1, 0, 0), spec))
    };
    let target = release(version("version")?.expect("required"), !args.contains_key("fail-health"))?;
    let builder = Deployer::builder()
        .provider(provider)
        .traffic(balancer)
        .health(HttpProbe::with_timeout("/healthz", Duration::from_millis(500)))
        .desired(desired)
        .min_ready(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(20));
    let deployer = match args.get("strategy").map_or("blue-green", String::as_str) {
        "blue-green" => builder.strategy(BlueGreen::new()),
        "rolling" => builder.strategy(Rolling::new()),
        other => return Err(format!("--strategy {other:?}: use blue-green or rolling").into()),
    }
    .build()?;
    let mut deployment = deployer.deploy(target);
    if let Some(previous) = version("previous-version")? {
        deployment = deployment.with_previous(release(previous, true)?);
    }
    if let Some(id) = args.get("deployment-id") {
        deployment = deployment.with_id(DeploymentId::new(id));
    }
    let outcome =
        deployment.run_with(|event| println!("{}", serde_json::to_string(event).expect("events serialize"))).await;
    Ok(outcome.succeeded())
}
