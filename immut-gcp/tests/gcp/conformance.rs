//! The immut-core conformance suite on Compute Engine (the fake), with both kinds of traffic:
//! one instance group (rolling, canary) and two colours behind a backend service (blue/green).

use std::sync::Arc;
use std::time::Duration;

use google_cloud_compute_v1::model;
use immut_core::conformance::{Harness, hand_launch};
use immut_core::semver::Version;
use immut_core::{
    AllOf, BaselineSpec, Error, ErrorKind, FnCheck, Health, Instance, InstanceId, ProviderStatus, Release,
};

use crate::support::{self, PROJECT, ZONE};

/// Low, so that `terminate_all_batches` crosses the batch boundary with 5 instances, not 1001.
const TERMINATE_BATCH: usize = 4;

#[derive(Clone, Copy)]
enum Mode {
    Group,
    Switch,
}

async fn harness(mode: Mode) -> Harness {
    let fake = support::fake().await;
    let provider = support::builder(&fake).max_terminate_batch(TERMINATE_BATCH).build().await.unwrap();
    // A short drain: every detach and switch waits it out before returning.
    let stack = support::stack(&provider, Duration::from_secs(0)).await;
    let traffic = match mode {
        Mode::Group => support::group(&provider, &stack),
        Mode::Switch => support::switch(&provider, &stack),
    };
    let with_team = |release: Release| {
        let mut spec = release.baseline().spec.clone();
        spec.labels.insert("team".into(), "platform".into());
        Release::new("conf", release.artifact(), &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
    };
    let release = with_team(support::release("conf", (1, 0, 0), &support::image(1)));
    let next_release = with_team(support::release("conf", (2, 0, 1), &support::image(2)));
    let unhealthy_release = with_team(support::release("conf", (2, 0, 0), &support::image(3)));
    // The fake runs no software on its instances, so the broken application of the unhealthy
    // release is played by this check (an HTTP probe's verdict).
    let failing = unhealthy_release.id().clone();
    let application = FnCheck(move |i: &Instance| {
        if i.release() == Some(&failing) {
            Health::Unhealthy("GET /healthz answered 500 (the release's application is broken)".into())
        } else {
            Health::Healthy
        }
    });
    let health = AllOf::default().and(ProviderStatus).and(traffic.clone()).and(application);
    let instances = provider.instances_client().clone();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Harness {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(traffic),
        health: Arc::new(health),
        release,
        next_release,
        unhealthy_release,
        bad_releases: vec![
            ("an image that does not exist".into(), support::release("conf", (1, 0, 0), &support::image(99))),
            (
                "an image family without images".into(),
                support::release("conf", (1, 0, 0), &format!("projects/{PROJECT}/global/images/family/none")),
            ),
            (
                "a reference that is not an image".into(),
                support::release("conf", (1, 0, 0), "ami-0123456789abcdef0/x/y"),
            ),
        ],
        // A bare instances.insert without labels, as from the console.
        launch_by_hand: hand_launch(move || {
            let instances = instances.clone();
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let name = format!("by-hand-{n}");
                let disk = model::AttachedDisk::new().set_boot(true).set_auto_delete(true).set_initialize_params(
                    model::AttachedDiskInitializeParams::new()
                        .set_source_image("projects/debian-cloud/global/images/family/debian-12"),
                );
                let body = model::Instance::new()
                    .set_name(name.clone())
                    .set_machine_type(format!("zones/{ZONE}/machineTypes/e2-small"))
                    .set_disks([disk])
                    .set_network_interfaces([model::NetworkInterface::new().set_network("global/networks/default")]);
                instances
                    .insert()
                    .set_project(PROJECT)
                    .set_zone(ZONE)
                    .set_body(body)
                    .send()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Unavailable, format!("instances.insert by hand: {e}")))?;
                Ok(InstanceId::new(format!("{ZONE}/{name}")))
            }
        }),
        adopt: Some(Arc::new(provider)),
        settle: Duration::from_secs(10),
        keep_alive: vec![Arc::new(fake)],
    }
}

/// Traffic through one instance group.
mod group {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::Group).await
    }
    immut_core::conformance_tests!(harness);
}

/// Blue/green traffic: two colours behind one backend service.
mod switch {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::Switch).await
    }
    immut_core::conformance_tests!(harness);
}
