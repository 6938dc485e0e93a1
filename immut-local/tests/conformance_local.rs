//! The immut-core conformance suite on the local provider: real processes, a real balancer
//! process per case.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_core::conformance::{Harness, hand_launch};
use immut_core::semver::Version;
use immut_core::{
    ArtifactSpec, BaselineSpec, Error, ErrorKind, HttpProbe, InstanceId, LaunchSpec, Provider, Query, Release,
};
use immut_local::LocalProvider;

/// Processes the suite started by hand. Dropped with the harness: whatever a case did not
/// terminate through the provider is killed by its pid and reaped, even when the case failed.
#[derive(Default)]
struct ByHand(Mutex<Vec<Child>>);

impl Drop for ByHand {
    fn drop(&mut self) {
        for child in self.0.get_mut().map(std::mem::take).unwrap_or_default().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the sample executable by hand, as an operator would (a `PORT`, no immut
/// environment), and waits until the provider sees it as an unmanaged instance.
async fn start_by_hand(provider: LocalProvider, children: Arc<ByHand>) -> immut_core::Result<InstanceId> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let port = port.map_err(|e| Error::new(ErrorKind::Unavailable, format!("no free port: {e}")))?;
    let child = Command::new(support::sample_path())
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot start the sample by hand: {e}")))?;
    children.0.lock().expect("poisoned").push(child);
    let address = format!("127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = provider.describe(&Query::default().with_unmanaged()).await?;
        if let Some(instance) = found.iter().find(|i| i.provenance.is_none() && i.address.as_deref() == Some(&address))
        {
            return Ok(instance.id.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("the process started by hand on {address} never showed"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn harness() -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let service = format!("conf-{}", N.fetch_add(1, Ordering::SeqCst));
    let (provider, balancer) = support::local(&service, &service).await;
    // Dropped with the harness: the balancer process and any instance a case left go too.
    let stop = Arc::new(support::stop_on_drop(provider.state_dir()));
    let mut spec = LaunchSpec::default();
    spec.labels.insert("team".into(), "platform".into());
    let release = support::release(&service, Version::new(1, 0, 0), spec.clone());
    let next_release = support::release(&service, Version::new(2, 0, 1), spec.clone());
    // The sample answers 503 on /healthz with this variable set: a release that never passes.
    let mut failing = spec.clone();
    failing.env.insert(immut_local::sample::FAIL_HEALTH.into(), "1".into());
    let unhealthy_release = support::release(&service, Version::new(2, 0, 0), failing);
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
    let children = Arc::new(ByHand::default());
    let (hand_provider, hand_children) = (provider.clone(), children.clone());
    Harness {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(balancer),
        health: Arc::new(HttpProbe::with_timeout("/healthz", Duration::from_secs(1))),
        release,
        next_release,
        unhealthy_release,
        bad_releases: vec![
            bad("a missing executable", &missing, &base),
            bad("a digest mismatch", &tampered, &base),
            bad("an artifact without a digest", &undigested, &base),
            bad("a file that is not executable", &not_executable, &base),
            bad("a port in use", &good, &pinned),
        ],
        launch_by_hand: hand_launch(move || start_by_hand(hand_provider.clone(), hand_children.clone())),
        adopt: Some(Arc::new(provider)),
        settle: Duration::from_secs(10),
        keep_alive: vec![children, stop],
    }
}

immut_core::conformance_tests!(harness);
