//! A blue/green deployment of EC2 instances behind an ELBv2 listener.
//!
//! Against moto (no AWS account):
//!
//! ```text
//! ./scripts/test.sh --setup        # moto, pinned, in target/test-venv
//! target/test-venv/bin/python -m moto.server -H 127.0.0.1 -p 5000 & moto=$!
//! IMMUT_AWS_ENDPOINT=http://127.0.0.1:5000 cargo run --example aws_blue_green --features aws
//! kill $moto
//! ```
//!
//! Against a real account, credentials and region come from the SDK's default chain
//! (`AWS_PROFILE`, `AWS_REGION`, ...), and the stack from the environment:
//!
//! ```text
//! IMMUT_AWS_LISTENER_ARN=arn:... IMMUT_AWS_TG_BLUE=arn:... IMMUT_AWS_TG_GREEN=arn:... \
//! IMMUT_AWS_SUBNET=subnet-... IMMUT_AWS_AMI_V1=ami-... IMMUT_AWS_AMI_V2=ami-... \
//! cargo run --example aws_blue_green --features aws
//! ```
//!
//! It deploys release 1.0.0 (3 instances, into the group the listener forwards to), then 2.0.0
//! blue/green: 3 new instances are launched with one RunInstances, proven by EC2 status checks
//! and target health, registered in the idle target group, and the listener is switched with
//! one ModifyListener; after a short bake the old instances are terminated. It prints each
//! step, then a summary (where the listener points, what serves, the calls by operation), and
//! terminates its instances unless `--keep` is given. Against moto, it creates the load
//! balancer, target groups and listener itself.

mod progress;

use std::time::Duration;

use immut::aws::{AwsBuilder, AwsConfig, AwsProvider, stack};
use immut::prelude::*;
use immut::{AllOf, InstanceId};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() -> std::process::ExitCode {
    progress::run(run())
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let moto = env("IMMUT_AWS_ENDPOINT");
    let mut builder = AwsBuilder::from_config(AwsConfig::from_env());
    if moto.is_some() {
        // moto accepts any credentials; a real account's come from the default chain.
        builder = builder.credentials("testing", "testing");
        if env("IMMUT_AWS_REGION").is_none() && env("AWS_REGION").is_none() {
            builder = builder.region("us-east-1");
        }
    }
    let provider: AwsProvider = builder.build().await?;
    let (listener, blue, green) =
        match (env("IMMUT_AWS_LISTENER_ARN"), env("IMMUT_AWS_TG_BLUE"), env("IMMUT_AWS_TG_GREEN")) {
            (Some(l), Some(b), Some(g)) => (l, b, g),
            _ if moto.is_some() => {
                let s = stack::create(&provider, "immut-demo").await?;
                println!("created a demo stack in moto: listener {}", s.listener_arn);
                (s.listener_arn, s.blue_target_group_arn, s.green_target_group_arn)
            }
            _ => return Err(
                "set IMMUT_AWS_LISTENER_ARN, IMMUT_AWS_TG_BLUE and IMMUT_AWS_TG_GREEN (or IMMUT_AWS_ENDPOINT for moto)"
                    .into(),
            ),
        };
    let ami = |var: &str, moto_default: &str| -> Result<String, String> {
        env(var)
            .or_else(|| moto.as_ref().map(|_| moto_default.to_owned()))
            .ok_or_else(|| format!("set {var} to an AMI id"))
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

    let traffic = provider.listener_switch(&listener, &blue, &green, Duration::from_secs(300))?;
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(provider.status_checks()).and(traffic.clone()))
        .strategy(BlueGreen::new().bake(Duration::from_secs(5)))
        .desired(3)
        .poll_interval(Duration::from_secs(if moto.is_some() { 1 } else { 5 }))
        .build()?;

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

    let serving = traffic.serving().await?;
    let live = provider.describe(&Query::service("web")).await?;
    let forward = provider.elb().describe_listeners().listener_arns(&listener).send().await?;
    let target =
        forward.listeners().first().and_then(|l| l.default_actions().first()).and_then(|a| a.target_group_arn());
    println!("\n== aws blue/green");
    println!("listener forwards to  {}", target.unwrap_or("?"));
    println!("serving               {} instances", serving.len());
    println!("live of 2.0.0         {}", live.iter().filter(|i| i.release() == Some(v2.id())).count());
    println!("live of 1.0.0         {}", live.iter().filter(|i| i.release() == Some(v1.id())).count());
    for (op, n) in provider.calls() {
        println!("calls {op:<24} {n}");
    }
    let ok = outcomes.iter().all(|o| o.succeeded())
        && serving.len() == 3
        && live.len() == 3
        && live.iter().all(|i| i.release() == Some(v2.id()));
    if std::env::args().any(|a| a == "--keep") {
        println!("--keep: instances left running");
    } else {
        let ids: Vec<InstanceId> = live.into_iter().map(|i| i.id).collect();
        traffic.detach(&ids).await?;
        provider.terminate_all(&ids).await?;
        println!("terminated {} instances", ids.len());
    }
    Ok(ok)
}
