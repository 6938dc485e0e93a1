//! The immut-core conformance suite on Azure (the fake ARM), with both kinds of traffic: one
//! backend pool (rolling, canary) and two pools behind switched rules (blue/green).

use std::sync::Arc;
use std::time::Duration;

use immut_core::conformance::{Harness, hand_launch};
use immut_core::semver::Version;
use immut_core::{
    AllOf, BaselineSpec, Error, ErrorKind, FnCheck, Health, Instance, InstanceId, ProviderStatus, Release,
};

use crate::support::{self, GROUP, LOCATION, SUB};

/// Low, so that `terminate_all_batches` crosses the batch boundary with 5 VMs.
const TERMINATE_BATCH: usize = 4;

#[derive(Clone, Copy)]
enum Mode {
    Pool,
    Switch,
}

async fn harness(mode: Mode) -> Harness {
    let fake = support::fake().await;
    let provider = support::builder(&fake).max_terminate_batch(TERMINATE_BATCH).build().unwrap();
    let stack = support::stack(&provider, Duration::ZERO).await;
    let traffic = match mode {
        Mode::Pool => support::pool(&provider, &stack),
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
    // The fake runs no software on its VMs, so the broken application of the unhealthy
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
    let compute = provider.compute_client().clone();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Harness {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(traffic),
        health: Arc::new(health),
        release,
        next_release,
        unhealthy_release,
        bad_releases: vec![
            (
                "a gallery image version that does not exist".into(),
                support::release("conf", (1, 0, 0), &support::image(99)),
            ),
            (
                "a marketplace image at 'latest'".into(),
                support::release("conf", (1, 0, 0), "Canonical:ubuntu-24_04-lts:server:latest"),
            ),
            (
                "a marketplace version that does not exist".into(),
                support::release("conf", (1, 0, 0), "Canonical:ubuntu-24_04-lts:server:1.0.0"),
            ),
            ("a reference that is not an image".into(), support::release("conf", (1, 0, 0), "ami-0123456789abcdef0")),
        ],
        // A bare PUT without tags, as from the portal.
        launch_by_hand: hand_launch(move || {
            let compute = compute.clone();
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let name = format!("by-hand-{n}");
                let body: azure_mgmt_compute::models::VirtualMachine =
                    serde_json::from_value(hand_vm(&name, &support::image(1), "Standard_B2s", None)).unwrap();
                compute
                    .virtual_machines_client()
                    .create_or_update(GROUP, &name, body, SUB)
                    .send()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Unavailable, format!("a VM by hand: {e}")))?;
                Ok(InstanceId::new(name))
            }
        }),
        adopt: Some(Arc::new(provider)),
        settle: Duration::from_secs(10),
        keep_alive: vec![Arc::new(fake)],
    }
}

/// The JSON of a VM made outside immut (optionally with tags).
pub fn hand_vm(
    name: &str,
    image: &str,
    size: &str,
    tags: Option<&std::collections::BTreeMap<String, String>>,
) -> serde_json::Value {
    serde_json::json!({
        "location": LOCATION,
        "tags": tags.cloned().unwrap_or_default(),
        "properties": {
            "hardwareProfile": { "vmSize": size },
            "storageProfile": { "imageReference": { "id": image }, "osDisk": { "createOption": "FromImage", "deleteOption": "Delete" } },
            "osProfile": { "computerName": name, "adminUsername": "azureuser" },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [{ "name": format!("{name}-nic"), "properties": { "primary": true, "deleteOption": "Delete",
                    "ipConfigurations": [{ "name": "ipconfig1", "properties": { "subnet": { "id": support::subnet() } } }] } }],
            },
        },
    })
}

/// Traffic through one backend pool.
mod pool {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::Pool).await
    }
    immut_core::conformance_tests!(harness);
}

/// Blue/green traffic: two pools behind switched rules.
mod switch {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::Switch).await
    }
    immut_core::conformance_tests!(harness);
}
