//! A blue/green deployment of EC2 instances behind an application load balancer.
//!
//! Against moto (no AWS account), with the standard AWS variables:
//!
//! ```text
//! ./scripts/test.sh --setup        # moto, pinned, in target/test-venv
//! target/test-venv/bin/python -m moto.server -H 127.0.0.1 -p 5000 & moto=$!
//! AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
//!   AWS_REGION=us-east-1 cargo run --example aws_blue_green --features aws
//! kill $moto
//! ```
//!
//! (`IMMUT_AWS_ENDPOINT` works as well as `AWS_ENDPOINT_URL`.) Against an emulator, the example
//! creates its demo stack (an ALB, two target groups, a listener with a weighted forward) unless
//! a stack is named, finds it again on a rerun, and tells the provider what an emulator like
//! moto does not do: it ignores ClientToken and is strongly consistent.
//!
//! Against a real account, credentials and region come from the SDK's default chain
//! (`AWS_PROFILE` with SSO or `credential_process`, `AWS_REGION`, roles, ...), and the stack
//! from the environment. The listener's default action must forward to the blue group (a
//! weighted forward to both is best; a plain forward is rewritten once, traffic unchanged):
//!
//! ```text
//! IMMUT_AWS_LISTENER_ARN=arn:... IMMUT_AWS_TG_BLUE=arn:... IMMUT_AWS_TG_GREEN=arn:... \
//! IMMUT_AWS_SUBNETS=subnet-a,subnet-b IMMUT_AWS_AMI_V1=ami-... IMMUT_AWS_AMI_V2=ami-... \
//! cargo run --example aws_blue_green --features aws
//! ```
//!
//! It deploys release 1.0.0 (3 instances), then 2.0.0 blue/green: 3 new instances are launched
//! with one RunInstances (one per subnet when several are given), staged in the idle target
//! group (weight 0: ELB health-checks them, no requests reach them), switched to with one
//! ModifyListener once ELB reports them healthy, baked, and the old instances are deregistered
//! (honouring the group's deregistration delay) and terminated. It prints each step, then a
//! summary (the listener's weights, what serves, the calls of the two deployments by
//! operation), and terminates its instances unless `--keep` is given. Every call it makes,
//! setup, summary and clean-up included, goes through the provider's pacing and retries.

mod progress;

use std::collections::BTreeMap;
use std::time::Duration;

use immut::aws::{AwsBuilder, AwsConfig, AwsProvider, retried, stack};
use immut::prelude::*;
use immut::{AllOf, InstanceId};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn main() -> std::process::ExitCode {
    progress::run(run())
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let config = AwsConfig::from_env()?;
    let emulator = config.endpoint_url.clone();
    let mut builder = AwsBuilder::from_config(config);
    if let Some(endpoint) = &emulator {
        println!("endpoint {endpoint}: an emulator (moto ignores ClientToken and is strongly consistent)");
        builder = builder.honours_client_token(false).consistency_window(Duration::ZERO);
        if builder.config().region.is_none() {
            builder = builder.region("us-east-1");
        }
        // An emulator takes any credentials; bring your own with AWS_ACCESS_KEY_ID, a profile or
        // a web identity token.
        let own = ["AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"];
        if own.iter().all(|name| env(name).is_none()) {
            builder = builder.credentials("testing", "testing");
        }
    }
    let provider: AwsProvider = builder.check_credentials(true).build().await?;
    let named = (env("IMMUT_AWS_LISTENER_ARN"), env("IMMUT_AWS_TG_BLUE"), env("IMMUT_AWS_TG_GREEN"));
    let (listener, blue, green) = match named {
        (Some(l), Some(b), Some(g)) => (l, b, g),
        (None, None, None) if emulator.is_some() => {
            let s = stack::create(&provider, "immut-demo").await?;
            println!("demo stack in the emulator: listener {}", s.listener_arn);
            (s.listener_arn, s.blue_target_group_arn, s.green_target_group_arn)
        }
        _ => {
            return Err("name the stack with IMMUT_AWS_LISTENER_ARN, IMMUT_AWS_TG_BLUE and IMMUT_AWS_TG_GREEN, \
                        or point AWS_ENDPOINT_URL at an emulator (moto) for a demo stack"
                .into());
        }
    };
    let ami = |var: &str, demo: &str| -> Result<String, String> {
        env(var).or_else(|| emulator.as_ref().map(|_| demo.to_owned())).ok_or_else(|| format!("set {var} to an AMI id"))
    };
    let release = |version: Version, ami: String| {
        let spec = LaunchSpec { machine_type: Some("t3.micro".into()), ..LaunchSpec::default() };
        Release::new(
            "web",
            &ArtifactSpec::new("web", version, ami),
            &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
        )
    };
    let v1 = release(Version::new(1, 0, 0), ami("IMMUT_AWS_AMI_V1", "ami-1e749f67")?)?;
    let v2 = release(Version::new(2, 0, 0), ami("IMMUT_AWS_AMI_V2", "ami-03cf127a")?)?;

    // The drain waited after a switch is each group's deregistration delay, at most 5 minutes.
    let traffic = provider.listener_switch(&listener, &blue, &green, Duration::from_secs(300))?;
    let web = Query::service("web");
    if emulator.is_some() {
        let leftovers = retried("describe", || provider.describe(&web)).await?;
        if !leftovers.is_empty() {
            println!("cleaning up {} instances a previous run left", leftovers.len());
            let ids: Vec<InstanceId> = leftovers.into_iter().map(|i| i.id).collect();
            retried("terminate", || provider.terminate_all(&ids)).await?;
        }
    }
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(provider.status_checks()).and(traffic.clone()))
        .strategy(BlueGreen::new().bake(Duration::from_secs(if emulator.is_some() { 2 } else { 60 })))
        .desired(3)
        .poll_interval(Duration::from_secs(if emulator.is_some() { 1 } else { 5 }))
        .build()?;

    let before = provider.calls();
    let mut outcomes = Vec::new();
    for (release, previous) in [(v1.clone(), None), (v2.clone(), Some(v1.clone()))] {
        println!("\n== deploying {release}");
        let mut deployment = deployer.deploy(release);
        if let Some(previous) = previous {
            deployment = deployment.with_previous(previous);
        }
        let mut printer = progress::Printer::default();
        outcomes.push(deployment.run_with(|e| printer.print(e)).await);
    }
    let calls: BTreeMap<String, u64> = provider
        .calls()
        .into_iter()
        .map(|(op, n)| (op.clone(), n - before.get(&op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();

    let serving = retried("serving", || traffic.serving()).await?;
    let live = retried("describe", || provider.describe(&web)).await?;
    let forwarding = retried("forwarding", || traffic.forwarding()).await?;
    println!("\n== aws blue/green");
    for (group, weight) in &forwarding {
        println!("listener forwards      weight {weight:>3} to {group}");
    }
    println!("serving                {} instances", serving.len());
    println!("live of 2.0.0          {}", live.iter().filter(|i| i.release() == Some(v2.id())).count());
    println!("live of 1.0.0          {}", live.iter().filter(|i| i.release() == Some(v1.id())).count());
    for (op, n) in &calls {
        println!("calls {op:<30} {n}");
    }
    println!("calls of both deployments: {}", calls.values().sum::<u64>());
    let serving_ids: Vec<&InstanceId> = serving.iter().collect();
    let ok = outcomes.iter().all(|o| o.succeeded())
        && serving.len() == 3
        && live.len() == 3
        && live.iter().all(|i| i.release() == Some(v2.id()) && serving_ids.contains(&&i.id))
        && forwarding.iter().filter(|(_, w)| *w > 0).count() == 1;
    if std::env::args().any(|a| a == "--keep") {
        println!("--keep: instances left running");
    } else {
        let ids: Vec<InstanceId> = live.into_iter().map(|i| i.id).collect();
        // Terminate takes them out of the target groups first (with the drain), then ends them.
        retried("terminate", || provider.terminate_all(&ids)).await?;
        println!("terminated {} instances", ids.len());
    }
    Ok(ok)
}
