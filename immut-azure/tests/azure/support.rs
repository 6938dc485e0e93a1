//! What every Azure test shares: a fake ARM with the test images, a provider pointed at it with
//! a static token, a demo stack (one load balancer, two pools), and the leak check.
#![allow(dead_code)]

use std::time::Duration;

use immut_azure::fake::{FakeArm, Settings};
use immut_azure::stack::{self, Stack};
use immut_azure::{AzureBuilder, AzureProvider, AzureTraffic, Bucket, Pacing};
use immut_core::semver::Version;
use immut_core::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};

pub const SUB: &str = "00000000-0000-0000-0000-0000000000aa";
pub const GROUP: &str = "rg-immut";
pub const LOCATION: &str = "westeurope";

pub fn subnet() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"
    )
}

/// A gallery image version of the test gallery: `.../images/web/versions/N.0.0`.
pub fn image(n: u32) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/immut/images/web/versions/{n}.0.0"
    )
}

/// Fast timings, no `Retry-After` wait, and ARM buckets too large to matter (the pacing
/// tests set their own).
pub fn settings() -> Settings {
    Settings {
        create_ms: 100,
        boot_ms: 30,
        healthy_after_ms: 50,
        delete_ms: 60,
        deallocate_ms: 40,
        lb_update_ms: 20,
        retry_after_s: 0,
        buckets: [[100_000, 100_000]; 3],
        ..Settings::default()
    }
}

/// A fake with versions 1.0.0 to 4.0.0 of the test image.
pub async fn fake_with(settings: Settings) -> FakeArm {
    let fake = FakeArm::start_with(([127, 0, 0, 1], 0).into(), settings).await.expect("the fake starts on 127.0.0.1");
    for n in 1..=4 {
        fake.publish_image(&image(n), LOCATION);
    }
    fake
}

pub async fn fake() -> FakeArm {
    fake_with(settings()).await
}

/// Generous client-side pacing: the fake's buckets are generous too.
pub fn fast_pacing() -> Pacing {
    let b = Bucket { burst: 10_000, per_second: 10_000 };
    Pacing { reads: b, writes: b, deletes: b, low_water: 20 }
}

/// A builder pointed at the fake, polling operations every 20 ms.
pub fn builder(fake: &FakeArm) -> AzureBuilder {
    AzureBuilder::new()
        .subscription(SUB)
        .resource_group(GROUP)
        .location(LOCATION)
        .subnet(subnet())
        .endpoint(fake.url())
        .static_token("fake-token")
        .pacing(fast_pacing())
        .operation_poll(Duration::from_millis(20))
        .operation_timeout(Duration::from_secs(20))
}

pub fn provider(fake: &FakeArm) -> AzureProvider {
    builder(fake).build().expect("the provider builds")
}

pub async fn stack(provider: &AzureProvider, drain: Duration) -> Stack {
    stack::create(provider, "web", drain).await.expect("the stack is created")
}

pub fn switch(provider: &AzureProvider, s: &Stack) -> AzureTraffic {
    provider.pool_switch(&s.load_balancer, &s.rule, &s.test_rule, &s.blue_pool, &s.green_pool).unwrap()
}

pub fn pool(provider: &AzureProvider, s: &Stack) -> AzureTraffic {
    provider.backend_pool(&s.load_balancer, &s.blue_pool).unwrap()
}

pub fn release(service: &str, version: (u64, u64, u64), image: &str) -> Release {
    release_on(service, version, image, "Standard_B2s")
}

pub fn release_on(service: &str, version: (u64, u64, u64), image: &str, size: &str) -> Release {
    let artifact = ArtifactSpec::new("web", Version::new(version.0, version.1, version.2), image);
    let spec = LaunchSpec {
        machine_type: Some(size.into()),
        user_data: Some("#!/bin/sh\necho hello\n".into()),
        ..LaunchSpec::default()
    };
    Release::new(service, &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
}

/// Names of the fake's VMs, NICs and disks that start with `prefix`: what a test left behind.
pub fn leftovers(fake: &FakeArm, prefix: &str) -> Vec<String> {
    let state = fake.state();
    ["virtualMachines", "networkInterfaces", "disks"]
        .iter()
        .flat_map(|kind| {
            state[*kind]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .filter(|n| n.starts_with(prefix))
                .map(move |n| format!("{kind}/{n}"))
        })
        .collect()
}

/// Fails when anything of the service is left in the fake.
pub fn assert_clean(fake: &FakeArm, prefix: &str) {
    let left = leftovers(fake, prefix);
    assert!(left.is_empty(), "left behind in the fake: {left:?}");
}

/// VMs updated in place, by name (immut never does it).
pub fn updated_in_place(fake: &FakeArm) -> Vec<String> {
    fake.state()["virtualMachines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v["updates"].as_u64().unwrap_or(0) > 0)
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect()
}
