//! A blue/green deployment of Azure VMs behind a Standard Load Balancer's backend pools.
//!
//! With no endpoint given it starts the fake ARM in-process, on 127.0.0.1 (no Azure
//! subscription needed):
//!
//! ```text
//! cargo run --example azure_blue_green --features azure
//! ```
//!
//! Against a fake running elsewhere (`cargo run -p immut-azure --bin immut-fake-arm -- --port
//! 8086`), set `IMMUT_AZURE_ENDPOINT=http://127.0.0.1:8086`.
//!
//! Against a real subscription it reads the standard environment (`AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_SUBSCRIPTION_ID`) and
//! `IMMUT_AZURE_RESOURCE_GROUP`, `IMMUT_AZURE_LOCATION`, `IMMUT_AZURE_SUBNET`, plus the load
//! balancer (two pools, a serving rule and a rule on a test port with the same probe) and the
//! images:
//!
//! ```text
//! IMMUT_AZURE_LB=web IMMUT_AZURE_RULE=http IMMUT_AZURE_TEST_RULE=test \
//! IMMUT_AZURE_BLUE_POOL=web-blue IMMUT_AZURE_GREEN_POOL=web-green \
//! IMMUT_AZURE_IMAGE_V1=/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/galleries/GAL/images/web/versions/1.0.0 \
//! IMMUT_AZURE_IMAGE_V2=.../versions/2.0.0 cargo run --example azure_blue_green --features azure
//! ```
//!
//! It deploys release 1.0.0 (3 VMs, into the serving pool), then 2.0.0 blue/green: 3 new VMs
//! are created (one PUT each, `If-None-Match: *`), staged in the idle pool (probed through the
//! test rule, given no traffic), proven healthy, and the serving rule is pointed at their pool
//! in one update; after a short bake the old VMs are deleted with their NICs and disks. It
//! prints each step, then a summary (which pool serves, what serves, the calls by
//! operationId), and deletes its VMs unless `--keep` is given. Against the fake it creates the
//! load balancer itself.

mod progress;

use std::time::Duration;

use immut::azure::fake::FakeArm;
use immut::azure::{AzureBuilder, AzureProvider, stack};
use immut::prelude::*;
use immut::{AllOf, InstanceId, ProviderStatus};

const DEMO_SUB: &str = "00000000-0000-0000-0000-00000000de70";
const DEMO_GROUP: &str = "rg-immut-demo";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn demo_image(version: u32) -> String {
    format!(
        "/subscriptions/{DEMO_SUB}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute/galleries/demo/images/web/versions/{version}.0.0"
    )
}

fn main() -> std::process::ExitCode {
    progress::run(run())
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let real = env("IMMUT_AZURE_LB");
    // Held to the end: the in-process fake stops when it is dropped.
    let mut fake: Option<FakeArm> = None;
    let builder = match (&real, env("IMMUT_AZURE_ENDPOINT")) {
        (Some(_), _) => AzureBuilder::from_env(),
        (None, endpoint) => {
            let url = match endpoint {
                Some(url) => url,
                None => {
                    let started = FakeArm::start().await?;
                    println!("started the fake ARM on {}", started.url());
                    for v in [1, 2] {
                        started.publish_image(&demo_image(v), "westeurope");
                    }
                    let url = started.url().to_owned();
                    fake = Some(started);
                    url
                }
            };
            AzureBuilder::new()
                .subscription(DEMO_SUB)
                .resource_group(DEMO_GROUP)
                .location("westeurope")
                .subnet(format!("/subscriptions/{DEMO_SUB}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Network/virtualNetworks/demo/subnets/default"))
                .endpoint(url)
                .static_token("fake-token")
                .operation_poll(Duration::from_millis(100))
        }
    };
    let provider: AzureProvider = builder.build()?;
    let (lb, rule, test_rule, blue, green) = match &real {
        Some(lb) => match (
            env("IMMUT_AZURE_RULE"),
            env("IMMUT_AZURE_TEST_RULE"),
            env("IMMUT_AZURE_BLUE_POOL"),
            env("IMMUT_AZURE_GREEN_POOL"),
        ) {
            (Some(r), Some(t), Some(b), Some(g)) => (lb.clone(), r, t, b, g),
            _ => {
                return Err("set IMMUT_AZURE_RULE, IMMUT_AZURE_TEST_RULE, IMMUT_AZURE_BLUE_POOL and IMMUT_AZURE_GREEN_POOL beside IMMUT_AZURE_LB".into());
            }
        },
        None => {
            let s = stack::create(&provider, "immut-demo", Duration::from_secs(1)).await?;
            println!("created a demo load balancer in the fake: {}", s.load_balancer);
            (s.load_balancer, s.rule, s.test_rule, s.blue_pool, s.green_pool)
        }
    };
    let image = |var: &str, version: u32| -> Result<String, String> {
        match (env(var), &real) {
            (Some(i), _) => Ok(i),
            (None, None) => Ok(demo_image(version)),
            (None, Some(_)) => Err(format!("set {var} to a gallery image version id or a marketplace URN")),
        }
    };
    let release = |version: Version, image: String| {
        let spec = LaunchSpec {
            machine_type: Some("Standard_B2s".into()),
            user_data: Some("#!/bin/sh\nsystemctl start web\n".into()),
            ..LaunchSpec::default()
        };
        Release::new(
            "web",
            &ArtifactSpec::new("web", version, image),
            &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
        )
    };
    let v1 = release(Version::new(1, 0, 0), image("IMMUT_AZURE_IMAGE_V1", 1)?)?;
    let v2 = release(Version::new(2, 0, 0), image("IMMUT_AZURE_IMAGE_V2", 2)?)?;

    let traffic = provider.pool_switch(&lb, &rule, &test_rule, &blue, &green)?;
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()))
        .strategy(BlueGreen::new().bake(Duration::from_secs(2)))
        .desired(3)
        .poll_interval(Duration::from_secs(if real.is_some() { 5 } else { 1 }))
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
    println!("\n== azure blue/green");
    println!("load balancer         {lb}");
    println!("serving pool          {}", traffic.active_pool().await?.unwrap_or_else(|| "none".into()));
    println!("serving               {} VMs", serving.len());
    println!("live of 2.0.0         {}", live.iter().filter(|i| i.release() == Some(v2.id())).count());
    println!("live of 1.0.0         {}", live.iter().filter(|i| i.release() == Some(v1.id())).count());
    for (op, n) in provider.calls() {
        println!("calls {op:<40} {n}");
    }
    let ok = outcomes.iter().all(|o| o.succeeded())
        && serving.len() == 3
        && live.len() == 3
        && live.iter().all(|i| i.release() == Some(v2.id()));
    if std::env::args().any(|a| a == "--keep") {
        println!("--keep: VMs left running");
    } else {
        let ids: Vec<InstanceId> = live.into_iter().map(|i| i.id).collect();
        traffic.detach(&ids).await?;
        provider.terminate_all(&ids).await?;
        println!("deleted {} VMs (with their NICs and disks)", ids.len());
    }
    if let Some(fake) = fake {
        fake.shutdown().await;
    }
    Ok(ok)
}
