//! Shared test support: releases, a journal that crashes, the simulator's latencies, and the check of the final fleet.
//! Invariants are checked by the independent [`immut_core::checker::Checker`], which reads the
//! simulator's ground truth.
#![allow(dead_code)]

mod crashing;

#[allow(unused_imports)] // Not every test binary crashes its journal.
pub use crashing::{CrashingJournal, quiet_simulated_crashes};

use std::collections::HashSet;
use std::time::Duration;

use immut_core::engine::{Outcome, Phase};
use immut_core::semver::Version;
use immut_core::sim::SimProvider;
use immut_core::{ArtifactSpec, BaselineSpec, InstanceId, LaunchSpec, Query, Release};

pub fn release(version: (u64, u64, u64)) -> Release {
    let spec = LaunchSpec { machine_type: Some("m5.large".into()), ..LaunchSpec::default() };
    Release::new(
        "web",
        &ArtifactSpec::new(
            "web",
            Version::new(version.0, version.1, version.2),
            format!("img-{}.{}.{}", version.0, version.1, version.2),
        ),
        &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
    )
    .unwrap()
}

pub fn latencies(b: immut_core::sim::SimBuilder) -> immut_core::sim::SimBuilder {
    b.api_latency(Duration::from_millis(100))
        .launch_to_running(Duration::from_secs(20))
        .boot_to_healthy(Duration::from_secs(10))
        .drain(Duration::from_secs(5))
}

/// The final fleet: on success only the new release, all serving; after a rollback only the
/// old release, all serving, `old_count` of them. Nothing else is left: no orphans.
pub async fn assert_final_fleet(
    sim: &SimProvider,
    outcome: &Outcome,
    new: &Release,
    old: Option<&Release>,
    desired: usize,
    old_count: usize,
) {
    let (live, serving) = sim.inspect();
    // Instances on their way out are not left over; stopped ones are.
    let live: Vec<_> = live
        .into_iter()
        .filter(|i| Query::service("web").matches(i) && i.state != immut_core::InstanceState::Terminating)
        .collect();
    let serving: HashSet<InstanceId> = serving.into_iter().collect();
    let (want_release, want_count) = match &outcome.phase {
        Phase::Succeeded => (Some(new.id()), desired),
        Phase::RolledBack { .. } => (old.map(|r| r.id()), old_count),
        other => panic!("deployment ended in {other:?}: {}", outcome.summary()),
    };
    assert_eq!(
        live.len(),
        want_count,
        "{}: live {:?}",
        outcome.summary(),
        live.iter().map(|i| (&i.id, i.release())).collect::<Vec<_>>()
    );
    for i in &live {
        assert_eq!(i.release(), want_release, "{}: {} is of the wrong release", outcome.summary(), i.id);
        assert!(serving.contains(&i.id), "{}: {} is live but not serving (orphan)", outcome.summary(), i.id);
    }
    assert_eq!(serving.len(), want_count, "{}: serving set {serving:?}", outcome.summary());
}
