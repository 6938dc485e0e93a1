//! The conformance suite on the simulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut::semver::Version;
use immut::sim::{Faults, SimProvider};
use immut::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};
use immut_core::conformance::{Harness, hand_launch};

async fn harness() -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let service = format!("svc-{}", N.fetch_add(1, Ordering::SeqCst));
    let mut spec = LaunchSpec::default();
    spec.labels.insert("team".into(), "platform".into());
    let base = BaselineSpec::new("base", Version::new(1, 0, 0), spec);
    let release = |version: Version, image: &str| {
        Release::new(service.clone(), &ArtifactSpec::new("app", version, image), &base).unwrap()
    };
    let v1 = release(Version::new(1, 0, 0), "image-1");
    let unhealthy = release(Version::new(2, 0, 0), "image-2-broken");
    let v2 = release(Version::new(2, 0, 1), "image-2");
    let sim = SimProvider::builder()
        .api_latency(Duration::from_millis(1))
        .launch_to_running(Duration::from_millis(20))
        // A drain that takes time, so that a switch or detach returning early would show.
        .drain(Duration::from_millis(30))
        .max_launch_batch(50)
        .faults(Faults { never_healthy_releases: vec![unhealthy.id().clone()], ..Faults::default() })
        .build()
        .unwrap();
    let by_hand = sim.clone();
    Harness {
        provider: Arc::new(sim.clone()),
        traffic: Arc::new(sim.traffic()),
        health: Arc::new(sim.health()),
        release: v1,
        next_release: v2,
        unhealthy_release: unhealthy,
        bad_releases: Vec::new(),
        launch_by_hand: hand_launch(move || {
            let id = by_hand.launch_unmanaged(1, "image-by-hand", false)[0].id.clone();
            async move { Ok(id) }
        }),
        adopt: Some(Arc::new(sim)),
        settle: Duration::from_secs(5),
        keep_alive: Vec::new(),
    }
}

immut_core::conformance_tests!(harness);
