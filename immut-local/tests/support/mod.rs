//! Shared test support for the local provider.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use immut_core::semver::Version;
use immut_core::{BaselineSpec, LaunchSpec, Release};
use immut_local::{LocalBalancer, LocalProvider};

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

pub fn release(service: &str, version: Version, spec: LaunchSpec) -> Release {
    let artifact = immut_local::artifact("sample", version, sample_path()).unwrap();
    Release::new(service, &artifact, &BaselineSpec::new("sample-base", Version::new(1, 0, 0), spec)).unwrap()
}

pub async fn local(tag: &str) -> (LocalProvider, LocalBalancer) {
    let provider = LocalProvider::builder().state_dir(state_dir(tag)).build().unwrap();
    let balancer = provider.balancer().build().await.unwrap();
    (provider, balancer)
}

/// The instance records in a state directory.
pub fn records(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect()
}

/// Polls `probe` until it answers `Some`, for at most `timeout`; fails the test naming `what`
/// when it never does. Tests wait for conditions this way, never with a sleep that stands in
/// for one.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub async fn listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
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

/// Kills, when dropped, every process still recorded in `state_dir`, checked by pid and start
/// time: a test that fails half-way leaves no instance running.
pub fn stop_on_drop(state_dir: &Path) -> StopOnDrop {
    StopOnDrop(state_dir.to_owned())
}

/// See [`stop_on_drop`].
pub struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for path in records(&self.0) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let Some(pid) = record["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else { continue };
            if immut_core::process::is_alive(pid, record["start_ticks"].as_u64()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}
