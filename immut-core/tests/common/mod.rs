//! Shared test support: releases, a seeded simulator and an invariant checker that reads the
//! event stream independently of the engine's own checks.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Duration;

use immut_core::engine::{Capacity, Event, Outcome, Phase};
use immut_core::semver::Version;
use immut_core::sim::SimProvider;
use immut_core::strategy::Decision;
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

/// Checks the event stream: the surge ceiling at every step, the healthy floor at every step
/// (when nothing is killed out of band), no serving instance terminated, and a finished event.
#[derive(Debug, Default)]
pub struct Checker {
    pub floor: usize,
    pub ceiling: usize,
    pub initial_serving_healthy: Option<usize>,
    pub steps: usize,
    pub violations: Vec<String>,
    pub refused: Vec<String>,
    pub retries: usize,
    pub finished: Option<Outcome>,
    /// Strict checks need a fleet that changes only by the engine's hand (no out-of-band kills).
    pub strict: bool,
    pub previous_count: usize,
    serving: HashSet<InstanceId>,
    last: Option<Capacity>,
}

impl Checker {
    pub fn new(strict: bool) -> Self {
        Checker { strict, ..Checker::default() }
    }

    pub fn observe(&mut self, event: &Event) {
        // Every event must serialize; the stream is a public, typed record.
        serde_json::to_string(event).expect("event serializes");
        match event {
            Event::Started { floor, ceiling, previous_count, .. } => {
                self.previous_count = *previous_count;
                self.floor = *floor;
                self.ceiling = *ceiling;
            }
            Event::Step { step, capacity, decision, .. } => {
                self.steps += 1;
                let base = *self.initial_serving_healthy.get_or_insert(capacity.serving_healthy);
                if capacity.total > self.ceiling.max(base) {
                    self.violations
                        .push(format!("step {step}: {} live above ceiling {}", capacity.total, self.ceiling));
                }
                if self.strict && capacity.serving_healthy < self.floor.min(base) {
                    self.violations.push(format!(
                        "step {step}: serving-healthy {} below floor {}",
                        capacity.serving_healthy,
                        self.floor.min(base)
                    ));
                }
                if let (true, Decision::Terminate { ids }) = (self.strict, decision)
                    && let Some(id) = ids.iter().find(|id| self.serving.contains(*id))
                {
                    self.violations.push(format!("step {step}: terminating {id}, which serves"));
                }
                self.last = Some(*capacity);
            }
            Event::Attached { ids } => self.serving.extend(ids.iter().cloned()),
            Event::Detached { ids } => ids.iter().for_each(|id| {
                self.serving.remove(id);
            }),
            Event::Switched { attached, detached } => {
                detached.iter().for_each(|id| {
                    self.serving.remove(id);
                });
                self.serving.extend(attached.iter().cloned());
            }
            Event::RollbackStarted { floor, ceiling, .. } => {
                self.floor = *floor;
                self.ceiling = *ceiling;
            }
            Event::InvariantViolated { invariant, detail } => self.refused.push(format!("{invariant}: {detail}")),
            Event::Retrying { .. } => self.retries += 1,
            Event::Finished { outcome } => self.finished = Some(outcome.clone()),
            _ => {}
        }
    }
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
