//! Shared test support for the local provider.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut_core::semver::Version;
use immut_core::{BaselineSpec, LaunchSpec, Release};
use immut_local::{LocalBalancer, LocalProvider};

#[allow(unused_imports)] // Each test binary uses its own part.
pub use immut_local::test_tools::{
    Live, Load, Seen, balancers_from, eventually, kill_all_from, listening, processes_from, records,
};

/// A fresh state directory under the system temp dir.
pub fn state_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "immut-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn sample_path() -> &'static str {
    env!("CARGO_BIN_EXE_immut-sample")
}

/// The executable the tests start balancers from: a test harness cannot serve as one, the
/// sample binary does (it calls `immut_local::serve_if_requested` first).
pub fn balancer_exe() -> &'static str {
    env!("CARGO_BIN_EXE_immut-sample")
}

pub fn release(service: &str, version: Version, spec: LaunchSpec) -> Release {
    let artifact = immut_local::artifact("sample", version, sample_path()).unwrap();
    Release::new(service, &artifact, &BaselineSpec::new("sample-base", Version::new(1, 0, 0), spec)).unwrap()
}

/// `service`'s balancer in the provider's state directory, started from [`balancer_exe`].
pub async fn balancer(provider: &LocalProvider, service: &str) -> LocalBalancer {
    provider.balancer(service).executable(balancer_exe()).drain_timeout(Duration::from_secs(5)).build().await.unwrap()
}

/// A provider in a fresh state directory.
pub fn provider(tag: &str) -> LocalProvider {
    LocalProvider::builder().state_dir(state_dir(tag)).build().unwrap()
}

pub async fn local(tag: &str, service: &str) -> (LocalProvider, LocalBalancer) {
    let provider = LocalProvider::builder().state_dir(state_dir(tag)).build().unwrap();
    let balancer = balancer(&provider, service).await;
    (provider, balancer)
}

/// A process the test started by hand; killed (by its pid) when dropped, so that a failing
/// test leaves nothing running.
pub struct HandStarted(pub std::process::Child);

impl Drop for HandStarted {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Kills, when dropped, every process launched from `state_dir` (instances, with their
/// process groups, and balancers), found by their environment and command line rather than by
/// the state files: a test that fails half-way leaves nothing running.
pub fn stop_on_drop(state_dir: &Path) -> StopOnDrop {
    StopOnDrop(state_dir.to_owned())
}

/// See [`stop_on_drop`].
pub struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        kill_all_from(&self.0);
    }
}

/// Deploys `release` blue/green (3 instances) behind `balancer`, then starts 8 clients against
/// it and returns once the release has served 50 of their requests.
pub async fn serve_under_load(provider: &LocalProvider, balancer: &LocalBalancer, release: &Release) -> Load {
    use immut_core::health::HttpProbe;
    use immut_core::{BlueGreen, Deployer};
    let first = Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(BlueGreen::new())
        .desired(3)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(first.deploy(release.clone()).run().await.succeeded());
    let live = std::sync::Arc::new(Live::default());
    let load = Load::start(balancer.addr(), 8, live.clone());
    let version = release.artifact().version.to_string();
    eventually(&format!("requests served by {version}"), Duration::from_secs(10), || async {
        (live.served_by(&version) >= 50).then_some(())
    })
    .await;
    load
}
