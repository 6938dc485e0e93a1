//! The conformance suite on the simulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut::conformance::Harness;
use immut::semver::Version;
use immut::sim::SimProvider;
use immut::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};

async fn harness() -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let service = format!("svc-{}", N.fetch_add(1, Ordering::SeqCst));
    let sim = SimProvider::builder()
        .api_latency(Duration::from_millis(1))
        .launch_to_running(Duration::from_millis(20))
        .max_launch_batch(50)
        .build()
        .unwrap();
    let mut spec = LaunchSpec::default();
    spec.labels.insert("team".into(), "platform".into());
    let release = Release::new(
        service,
        &ArtifactSpec::new("app", Version::new(1, 0, 0), "image-1"),
        &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
    )
    .unwrap();
    Harness {
        provider: Arc::new(sim.clone()),
        traffic: Arc::new(sim.traffic()),
        release,
        bad_releases: Vec::new(),
        settle: Duration::from_secs(5),
        keep_alive: Vec::new(),
    }
}

immut_core::conformance_tests!(harness);
