//! A blue/green deployment of Compute Engine instances behind a backend service.
//!
//! With no endpoint given it starts the fake Compute API in-process, on 127.0.0.1 (no Google
//! account needed):
//!
//! ```text
//! cargo run --example gcp_blue_green --features gcp
//! ```
//!
//! Against a fake running elsewhere (`cargo run -p immut-gcp --bin immut-fake-gce -- --port
//! 8085`), set `IMMUT_GCP_ENDPOINT=http://127.0.0.1:8085`.
//!
//! Against a real project, credentials come from Application Default Credentials, the project
//! from `GOOGLE_CLOUD_PROJECT` and the zones from `IMMUT_GCP_ZONES` (or `CLOUDSDK_COMPUTE_ZONE`);
//! the backend service, its two groups (the same name in each zone) and the images from:
//!
//! ```text
//! IMMUT_GCP_BACKEND_SERVICE=web IMMUT_GCP_BLUE_GROUP=web-blue IMMUT_GCP_GREEN_GROUP=web-green \
//! IMMUT_GCP_IMAGE_V1=projects/P/global/images/web-v1 IMMUT_GCP_IMAGE_V2=projects/P/global/images/web-v2 \
//! cargo run --example gcp_blue_green --features gcp
//! ```
//!
//! It deploys release 1.0.0 (3 instances, into the serving colour), then 2.0.0 blue/green: 3 new
//! instances are launched with one bulkInsert, staged in the idle colour (capacity 0: probed by
//! the backend service's health check, given no traffic), proven healthy, and the backend
//! service is switched with one patch; after a short bake the old instances are deleted. It
//! prints each step, then a summary (which colour serves, what serves, the calls by method),
//! and deletes its instances unless `--keep` is given. Against the fake it creates the groups
//! and the backend service itself.

mod progress;

use std::time::Duration;

use immut::gcp::fake::FakeGce;
use immut::gcp::{GcpBuilder, GcpConfig, GcpProvider, stack};
use immut::prelude::*;
use immut::{AllOf, InstanceId, ProviderStatus};

const DEMO_PROJECT: &str = "immut-demo";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() -> std::process::ExitCode {
    progress::run(run())
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let real = env("IMMUT_GCP_BACKEND_SERVICE");
    // Held to the end: the in-process fake stops when it is dropped.
    let mut fake: Option<FakeGce> = None;
    let builder = match (&real, env("IMMUT_GCP_ENDPOINT")) {
        (Some(_), _) => GcpBuilder::from_config(GcpConfig::from_env()),
        (None, endpoint) => {
            let url = match endpoint {
                Some(url) => url,
                None => {
                    let started = FakeGce::start().await?;
                    println!("started the fake Compute API on {}", started.url());
                    let url = started.url().to_owned();
                    fake = Some(started);
                    url
                }
            };
            GcpBuilder::new()
                .project(DEMO_PROJECT)
                .zone("us-central1-a")
                .endpoint(url)
                .anonymous()
                .operation_poll(Duration::from_millis(100))
        }
    };
    if let Some(fake) = &fake {
        for name in ["web-v1", "web-v2"] {
            fake.add_image(DEMO_PROJECT, name, Some("web"));
        }
    }
    let provider: GcpProvider = builder.build().await?;
    let (backend_service, blue, green) = match &real {
        Some(bs) => match (env("IMMUT_GCP_BLUE_GROUP"), env("IMMUT_GCP_GREEN_GROUP")) {
            (Some(b), Some(g)) => (bs.clone(), b, g),
            _ => {
                return Err(
                    "set IMMUT_GCP_BLUE_GROUP and IMMUT_GCP_GREEN_GROUP beside IMMUT_GCP_BACKEND_SERVICE".into()
                );
            }
        },
        None => {
            let s = stack::create(&provider, "immut-demo", Duration::from_secs(1)).await?;
            println!("created a demo stack in the fake: backend service {}", s.backend_service);
            (s.backend_service, s.blue_group, s.green_group)
        }
    };
    let image = |var: &str, demo: &str| -> Result<String, String> {
        match (env(var), &real) {
            (Some(i), _) => Ok(i),
            (None, None) => Ok(format!("projects/{DEMO_PROJECT}/global/images/{demo}")),
            (None, Some(_)) => Err(format!("set {var} to an image (projects/P/global/images/NAME or .../family/F)")),
        }
    };
    let release = |version: Version, image: String| {
        let spec = LaunchSpec {
            machine_type: Some("e2-small".into()),
            user_data: Some("#!/bin/sh\nsystemctl start web\n".into()),
            ..LaunchSpec::default()
        };
        Release::new(
            "web",
            &ArtifactSpec::new("web", version, image),
            &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
        )
    };
    let v1 = release(Version::new(1, 0, 0), image("IMMUT_GCP_IMAGE_V1", "web-v1")?)?;
    let v2 = release(Version::new(2, 0, 0), image("IMMUT_GCP_IMAGE_V2", "web-v2")?)?;

    let traffic = provider.backend_switch(&backend_service, &blue, &green)?;
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
    println!("\n== gcp blue/green");
    println!("backend service       {backend_service}");
    println!("serving colour        {}", traffic.active_group().await?.unwrap_or_else(|| "none".into()));
    println!("serving               {} instances", serving.len());
    println!("live of 2.0.0         {}", live.iter().filter(|i| i.release() == Some(v2.id())).count());
    println!("live of 1.0.0         {}", live.iter().filter(|i| i.release() == Some(v1.id())).count());
    for (op, n) in provider.calls() {
        println!("calls {op:<32} {n}");
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
        println!("deleted {} instances", ids.len());
    }
    if let Some(fake) = fake {
        fake.shutdown().await;
    }
    Ok(ok)
}
