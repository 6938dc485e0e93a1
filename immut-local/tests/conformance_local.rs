//! The immut-core conformance suite on the local provider: real processes, a real balancer.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut_core::conformance::Harness;
use immut_core::semver::Version;
use immut_core::{ArtifactSpec, BaselineSpec, LaunchSpec, Release};

async fn harness() -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let service = format!("conf-{}", N.fetch_add(1, Ordering::SeqCst));
    let (provider, balancer) = support::local(&service).await;
    let mut spec = LaunchSpec::default();
    spec.labels.insert("team".into(), "platform".into());
    let release = support::release(&service, Version::new(1, 0, 0), spec.clone());
    let base = BaselineSpec::new("sample-base", Version::new(1, 0, 0), spec);
    let good = release.artifact().clone();

    let missing = ArtifactSpec { image: "/nonexistent/immut-sample".into(), ..good.clone() };
    let tampered = ArtifactSpec { digest: Some(format!("sha256:{}", "0".repeat(64))), ..good.clone() };
    let undigested = ArtifactSpec { digest: None, ..good.clone() };
    let not_executable_path = provider.state_dir().join("not-executable");
    std::fs::write(&not_executable_path, b"data").unwrap();
    let not_executable = ArtifactSpec { image: not_executable_path.display().to_string(), ..good.clone() };
    // A port held for the whole test: a baseline pinned to it must be refused.
    let held = Box::leak(Box::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap()));
    let mut pinned = LaunchSpec::default();
    pinned.params.insert("port".into(), held.local_addr().unwrap().port().to_string());
    let pinned = BaselineSpec::new("pinned", Version::new(1, 0, 0), pinned);

    let bad = |what: &str, artifact: &ArtifactSpec, baseline: &BaselineSpec| {
        (what.to_owned(), Release::new(service.clone(), artifact, baseline).unwrap())
    };
    Harness {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(balancer),
        release,
        bad_releases: vec![
            bad("a missing executable", &missing, &base),
            bad("a digest mismatch", &tampered, &base),
            bad("an artifact without a digest", &undigested, &base),
            bad("a file that is not executable", &not_executable, &base),
            bad("a port in use", &good, &pinned),
        ],
        settle: Duration::from_secs(10),
        keep_alive: Vec::new(),
    }
}

immut_core::conformance_tests!(harness);
