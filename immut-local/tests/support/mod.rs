//! Shared test support for the local provider.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

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
