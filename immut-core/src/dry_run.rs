//! Dry-run: the same engine and strategy against the simulator, seeded from the live fleet.
//!
//! The plan says which instance ids go in which wave, how serving-healthy and total capacity
//! move at each step, how many provider calls the deployment makes, and how long it takes
//! under the stated latencies. It serializes to JSON. Gates pass automatically in a dry-run.
//! Instances the plan launches have simulator ids (`sim-…`); instances it terminates keep
//! their real ids. The simulated engine polls at the deployer's poll interval, as it will
//! against the real provider, so the plan's duration and call counts are predictions under the
//! stated latencies, not minimums.
//!
//! ```
//! use std::time::Duration;
//! use immut_core::prelude::*;
//! use immut_core::sim::{Latencies, SimProvider};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> immut_core::Result<()> {
//! # let sim = SimProvider::builder().build()?;
//! # let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
//! # let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img-1"), &base)?;
//! # let v2 = Release::new("web", &ArtifactSpec::new("web", Version::new(2, 0, 0), "img-2"), &base)?;
//! # sim.seed(&v1, 4, true);
//! // `sim` stands for any provider here: the dry-run only describes it.
//! let deployer = Deployer::builder()
//!     .provider(sim.clone())
//!     .traffic(sim.traffic())
//!     .strategy(Rolling::new().max_surge(Count::Count(2)))
//!     .desired(4)
//!     .build()?;
//! let latencies = Latencies {
//!     api: Duration::from_millis(100),
//!     launch_to_running: Duration::from_secs(30),
//!     boot_to_healthy: Duration::from_secs(20),
//!     drain: Duration::from_secs(10),
//!     ..Latencies::default()
//! };
//! let plan = deployer.dry_run(&v2, Some(&v1), latencies).await?;
//! assert!(plan.outcome.succeeded());
//! assert_eq!(plan.waves.len(), 2);
//! assert!(plan.capacity.iter().all(|c| c.serving_healthy >= 4 && c.total <= 6));
//! assert_eq!(sim.calls().launch, 0, "a dry-run changes nothing");
//! println!("{}", serde_json::to_string_pretty(&plan).unwrap());
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{Deployer, Event, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Instance, InstanceId, Release, ReleaseId};
use crate::provider::{Query, Readiness};
use crate::sim::{Latencies, SimCalls, SimProvider};

/// One launch wave and what happened in it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wave {
    /// Wave number, from 1.
    pub wave: u32,
    /// Instances launched.
    pub launched: Vec<InstanceId>,
    /// Instances that started serving.
    pub attached: Vec<InstanceId>,
    /// Instances that stopped serving.
    pub detached: Vec<InstanceId>,
    /// Instances terminated.
    pub terminated: Vec<InstanceId>,
    /// When it was launched, in milliseconds since the start.
    #[serde(default)]
    pub launched_at_ms: u64,
}

/// Where the deployment would run an analysis, and the least time it takes there. The plan
/// passes gates at once, so its expected duration leaves this time out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAnalysis {
    /// The gate (`canary-step-1`, `promote`, `bake`).
    pub gate: String,
    /// When the plan reached it, in milliseconds since the start.
    pub at_ms: u64,
    /// The least time the analysis takes (count x interval of its slowest metric).
    pub min_duration_ms: u64,
}

/// Something the plan does at a moment: what a picture of the plan marks on its time axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Milliseconds since the start (the step that did it).
    pub at_ms: u64,
    /// What.
    pub kind: MarkKind,
    /// The wave it belongs to (0 before the first launch).
    pub wave: u32,
    /// How many instances it concerns.
    pub count: usize,
}

/// What a [`Mark`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// A wave was launched.
    Launch,
    /// Instances started serving.
    Attach,
    /// Instances stopped serving.
    Detach,
    /// Traffic moved in one step.
    Switch,
    /// Instances were terminated.
    Terminate,
    /// The deployment started rolling back.
    Rollback,
}

/// Capacity at one engine step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityPoint {
    /// Step number.
    pub step: u64,
    /// Time since the start, in milliseconds.
    pub at_ms: u64,
    /// Serving and healthy.
    pub serving_healthy: usize,
    /// Live instances.
    pub total: usize,
}

/// The result of a dry-run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// How the simulated deployment ended.
    pub outcome: Outcome,
    /// The wave schedule.
    pub waves: Vec<Wave>,
    /// The capacity curve.
    pub capacity: Vec<CapacityPoint>,
    /// The healthy floor the deployment is held to.
    #[serde(default)]
    pub floor: usize,
    /// The surge ceiling.
    #[serde(default)]
    pub ceiling: usize,
    /// Launches, switches, terminations and rollbacks, in order, with their times.
    #[serde(default)]
    pub marks: Vec<Mark>,
    /// Where analysis runs and how long it takes at least, in gate order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<PlannedAnalysis>,
    /// Provider and traffic calls the deployment would make.
    pub calls: SimCalls,
    /// Expected duration under `latencies`, in milliseconds.
    pub expected_duration_ms: u64,
    /// The latencies assumed.
    pub latencies: Latencies,
    /// Rollback readiness of the previous release, as the real provider reports it now. The
    /// simulated deployment assumes the same answer, so a plan whose way back is gone ends as
    /// the deployment would: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReleaseReadiness>,
}

/// Whether one release could be launched again, for a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReadiness {
    /// The release.
    pub release: ReleaseId,
    /// What the provider reported.
    pub readiness: Readiness,
}

impl Plan {
    fn from_events(events: &[Event], calls: SimCalls, latencies: Latencies) -> Option<Plan> {
        let mut waves: Vec<Wave> = Vec::new();
        let mut capacity = Vec::new();
        let mut outcome = None;
        let (mut floor, mut ceiling, mut now, mut marks) = (0, 0, 0, Vec::new());
        let mut mark = |kind: MarkKind, at_ms: u64, waves: &[Wave], count: usize| {
            marks.push(Mark { at_ms, kind, wave: waves.last().map_or(0, |w| w.wave), count })
        };
        let current = |waves: &mut Vec<Wave>| -> usize {
            if waves.is_empty() {
                waves.push(Wave::default());
            }
            waves.len() - 1
        };
        for event in events {
            match event {
                Event::Started { floor: f, ceiling: c, .. } => (floor, ceiling) = (*f, *c),
                Event::Step { step, at_ms, capacity: c, .. } => {
                    now = *at_ms;
                    capacity.push(CapacityPoint {
                        step: *step,
                        at_ms: *at_ms,
                        serving_healthy: c.serving_healthy,
                        total: c.total,
                    })
                }
                Event::Launched { wave, ids, .. } => {
                    if waves.last().is_none_or(|w| w.wave != *wave) {
                        waves.push(Wave { wave: *wave, launched_at_ms: now, ..Wave::default() });
                    }
                    waves.last_mut().expect("just pushed").launched.extend(ids.iter().cloned());
                    mark(MarkKind::Launch, now, &waves, ids.len());
                }
                Event::Attached { ids } => {
                    let i = current(&mut waves);
                    waves[i].attached.extend(ids.iter().cloned());
                    mark(MarkKind::Attach, now, &waves, ids.len());
                }
                Event::Detached { ids } => {
                    let i = current(&mut waves);
                    waves[i].detached.extend(ids.iter().cloned());
                    mark(MarkKind::Detach, now, &waves, ids.len());
                }
                Event::Switched { attached, detached } => {
                    let i = current(&mut waves);
                    waves[i].attached.extend(attached.iter().cloned());
                    waves[i].detached.extend(detached.iter().cloned());
                    mark(MarkKind::Switch, now, &waves, attached.len());
                }
                Event::Terminated { ids } => {
                    let i = current(&mut waves);
                    waves[i].terminated.extend(ids.iter().cloned());
                    mark(MarkKind::Terminate, now, &waves, ids.len());
                }
                Event::RollbackStarted { .. } => mark(MarkKind::Rollback, now, &waves, 0),
                Event::Finished { outcome: o } => outcome = Some(o.clone()),
                _ => {}
            }
        }
        let outcome = outcome?;
        Some(Plan {
            expected_duration_ms: outcome.elapsed.as_millis() as u64,
            outcome,
            waves,
            capacity,
            floor,
            ceiling,
            marks,
            analysis: Vec::new(),
            calls,
            latencies,
            readiness: None,
        })
    }
}

/// Plans a deployment of `release` over a given fleet, without touching any backend.
/// Blocking: it runs a paused tokio runtime on its own thread.
pub fn plan(
    deployer: &Deployer,
    release: &Release,
    previous: Option<&Release>,
    live: Vec<Instance>,
    serving: Vec<InstanceId>,
    latencies: Latencies,
) -> Result<Plan> {
    plan_assuming(deployer, release, previous, live, serving, latencies, None)
}

/// [`plan`], with the simulator answering `readiness` for the previous release.
fn plan_assuming(
    deployer: &Deployer,
    release: &Release,
    previous: Option<&Release>,
    live: Vec<Instance>,
    serving: Vec<InstanceId>,
    latencies: Latencies,
    readiness: Option<ReleaseReadiness>,
) -> Result<Plan> {
    let gate_of = deployer.gate().clone();
    let deployer = deployer.clone();
    let release = release.clone();
    let previous = previous.cloned();
    std::thread::spawn(move || {
        crate::sim::run_in_virtual_time(async move {
            // The plan polls as the deployer will against its real provider (no next-change
            // promise), so its duration and call counts are predictions, not minimums.
            let assumed = readiness.iter().map(|r| (r.release.clone(), r.readiness.clone())).collect();
            let faults = crate::sim::Faults { no_next_change: true, readiness: assumed, ..Default::default() };
            let sim = SimProvider::builder().latencies(latencies).faults(faults).build()?;
            sim.seed_instances(&live, &serving);
            let simulated =
                deployer.with_backends(Arc::new(sim.clone()), Arc::new(sim.traffic()), Arc::new(sim.health()));
            let mut deployment = simulated.deploy(release);
            if let Some(previous) = previous {
                deployment = deployment.with_previous(previous);
            }
            let mut events = Vec::new();
            deployment.run_with(|e| events.push(e.clone())).await;
            let mut plan = Plan::from_events(&events, sim.calls(), latencies)
                .ok_or_else(|| Error::new(ErrorKind::Other, "the dry-run ended without an outcome"))?;
            let mut at_ms = 0;
            for event in &events {
                match event {
                    Event::Step { at_ms: at, .. } => at_ms = *at,
                    Event::GatePassed { gate } => {
                        if let Some(least) = gate_of.analysis_duration(gate) {
                            plan.analysis.push(PlannedAnalysis {
                                gate: gate.clone(),
                                at_ms,
                                min_duration_ms: least.as_millis() as u64,
                            });
                        }
                    }
                    _ => {}
                }
            }
            plan.readiness = readiness;
            Ok(plan)
        })
    })
    .join()
    .map_err(|_| Error::new(ErrorKind::Other, "the dry-run thread panicked"))?
}

impl Deployer {
    /// Plans a deployment of `release` from the live fleet: one describe and one serving read
    /// against the real backends, then the same engine on the simulator in virtual time.
    pub async fn dry_run(&self, release: &Release, previous: Option<&Release>, latencies: Latencies) -> Result<Plan> {
        let live = self.provider().describe(&Query::service(release.service())).await?;
        let serving = self.traffic().serving().await?;
        let readiness = match previous {
            Some(p) => {
                Some(ReleaseReadiness { release: p.id().clone(), readiness: self.provider().readiness(p).await? })
            }
            None => None,
        };
        let (deployer, release, previous) = (self.clone(), release.clone(), previous.cloned());
        tokio::task::spawn_blocking(move || {
            plan_assuming(&deployer, &release, previous.as_ref(), live, serving, latencies, readiness)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, "the dry-run task failed").with_source(e))?
    }
}
