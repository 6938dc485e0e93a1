//! What every GCP test shares: a fake Compute API with the test images, a provider pointed at
//! it with anonymous credentials, and a demo stack (two groups, one backend service).
#![allow(dead_code)]

use std::time::Duration;

use immut_core::semver::Version;
use immut_core::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};
use immut_gcp::fake::FakeGce;
use immut_gcp::stack::{self, Stack};
use immut_gcp::{GcpBuilder, GcpProvider, GcpTraffic};

pub const PROJECT: &str = "immut-test";
pub const ZONE: &str = "us-central1-a";

/// `projects/immut-test/global/images/web-vN`.
pub fn image(n: u32) -> String {
    format!("projects/{PROJECT}/global/images/web-v{n}")
}

/// A fake with images web-v1 to web-v4 (and web-bad) in the test project.
pub async fn fake() -> FakeGce {
    let fake = FakeGce::start().await.expect("the fake starts on 127.0.0.1");
    for n in 1..=4 {
        fake.add_image(PROJECT, &format!("web-v{n}"), Some("web"));
    }
    fake.add_image(PROJECT, "web-bad", None);
    fake
}

/// A builder pointed at the fake, polling operations every 20 ms.
pub fn builder(fake: &FakeGce) -> GcpBuilder {
    GcpBuilder::new()
        .project(PROJECT)
        .zone(ZONE)
        .endpoint(fake.url())
        .anonymous()
        .operation_poll(Duration::from_millis(20))
        .operation_timeout(Duration::from_secs(20))
}

pub async fn provider(fake: &FakeGce) -> GcpProvider {
    builder(fake).build().await.expect("the provider builds")
}

/// The demo stack, with a short connection draining.
pub async fn stack(provider: &GcpProvider, drain: Duration) -> Stack {
    stack::create(provider, "web", drain).await.expect("the stack is created")
}

/// Blue/green traffic over the stack.
pub fn switch(provider: &GcpProvider, stack: &Stack) -> GcpTraffic {
    provider.backend_switch(&stack.backend_service, &stack.blue_group, &stack.green_group).unwrap()
}

/// One-group traffic over the stack's blue group.
pub fn group(provider: &GcpProvider, stack: &Stack) -> GcpTraffic {
    provider.backend_group(&stack.backend_service, &stack.blue_group).unwrap()
}

pub fn release(service: &str, version: (u64, u64, u64), image: &str) -> Release {
    release_on(service, version, image, "e2-small")
}

pub fn release_on(service: &str, version: (u64, u64, u64), image: &str, machine: &str) -> Release {
    let artifact = ArtifactSpec::new("web", Version::new(version.0, version.1, version.2), image);
    let spec = LaunchSpec {
        machine_type: Some(machine.into()),
        user_data: Some("#!/bin/sh\necho hello\n".into()),
        ..LaunchSpec::default()
    };
    Release::new(service, &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
}

/// A fake with short timings, for tests that run many deployments.
pub async fn fast_fake() -> FakeGce {
    let settings = immut_gcp::fake::Settings {
        operation_pending_ms: 5,
        operation_running_ms: 15,
        provisioning_ms: 10,
        staging_ms: 10,
        healthy_after_ms: 10,
        stopping_ms: 10,
    };
    let fake = FakeGce::start_with(([127, 0, 0, 1], 0).into(), settings).await.expect("the fake starts on 127.0.0.1");
    for n in 1..=2 {
        fake.add_image(PROJECT, &format!("web-v{n}"), Some("web"));
    }
    fake
}
