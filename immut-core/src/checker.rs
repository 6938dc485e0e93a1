//! An independent checker of the engine's promises, for tests of your own policies and of the
//! engine itself.
//!
//! [`Checker::wrap`] puts a provider and its traffic behind wrappers that, on **every** call the
//! engine makes (reads included, so it runs as time passes, not only when the engine decides),
//! read the ground truth from a [`GroundTruth`] (for the simulator, its own state) and check:
//!
//! - the healthy floor: no engine action (detach, switch, terminate) brings the truly healthy
//!   serving instances below the floor, or below what served at the start if that was less;
//! - the surge ceiling: live instances never exceed it (or the fleet size at the start);
//! - nothing serving is terminated, and nothing unhealthy is attached;
//! - at the end ([`Checker::finish`]), nothing is orphaned: only the final release is left, all
//!   of it serving.
//!
//! It never reads the engine's events or view, so it cannot share the engine's mistakes. The
//! floor is checked strictly only until an out-of-band event (an instance killed or stopped
//! by someone else) has actually happened.
//!
//! ```
//! use std::time::Duration;
//! use immut_core::checker::Checker;
//! use immut_core::prelude::*;
//! use immut_core::sim::SimProvider;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> immut_core::Result<()> {
//! let sim = SimProvider::builder().launch_to_running(Duration::from_secs(20)).build()?;
//! let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
//! let v1 = Release::new("web", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img-1"), &base)?;
//! let v2 = Release::new("web", &ArtifactSpec::new("web", Version::new(2, 0, 0), "img-2"), &base)?;
//! sim.seed(&v1, 4, true);
//! let strategy = Rolling::new();
//! let checker = Checker::new(sim.clone(), "web", 4, strategy.limits(4));
//! let (provider, traffic) = checker.wrap(sim.clone(), sim.traffic());
//! let deployer = Deployer::builder()
//!     .provider(provider)
//!     .traffic(traffic)
//!     .health(sim.health())
//!     .strategy(strategy)
//!     .desired(4)
//!     .build()?;
//! let outcome = deployer.deploy(v2.clone()).with_previous(v1.clone()).run().await;
//! assert!(outcome.succeeded());
//! assert_eq!(checker.finish(&outcome, &v2, Some(&v1)), Vec::<String>::new());
//! # Ok(())
//! # }
//! # use immut_core::ReplacementStrategy;
//! ```

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{Instance, InstanceId, InstanceState, Release};
use crate::outcome::{Outcome, Phase};
use crate::provider::{Capabilities, LaunchRequest, PacingStats, Provider, Query};
use crate::sim::SimProvider;
use crate::strategy::Limits;
use crate::traffic::Traffic;

/// Where a [`Checker`] reads what is really there.
pub trait GroundTruth: Send + Sync + Debug {
    /// Every instance that exists (live, stopped or terminating, visible to describe or not),
    /// and the serving set.
    fn fleet(&self) -> (Vec<Instance>, Vec<InstanceId>);
    /// Whether the instance is really healthy now.
    fn healthy(&self, id: &InstanceId) -> bool;
    /// How many out-of-band events (kills, stops by someone else) have happened so far.
    fn out_of_band(&self) -> usize;
}

impl GroundTruth for SimProvider {
    fn fleet(&self) -> (Vec<Instance>, Vec<InstanceId>) {
        self.inspect()
    }

    fn healthy(&self, id: &InstanceId) -> bool {
        self.true_health(id).is_healthy()
    }

    fn out_of_band(&self) -> usize {
        self.out_of_band_applied()
    }
}

#[derive(Debug)]
struct State {
    floor: usize,
    ceiling: usize,
    violations: Vec<String>,
    calls: u64,
}

/// Checks the engine's invariants against the ground truth; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Checker {
    truth: Arc<dyn GroundTruth>,
    service: String,
    state: Arc<Mutex<State>>,
}

impl Checker {
    /// A checker of `service`, deployed to `desired` instances within `limits` (the strategy's
    /// [`limits`](crate::ReplacementStrategy::limits)). Call it before the deployment starts:
    /// it reads the starting fleet, which relaxes the floor (never above what served) and the
    /// ceiling (never below what ran, plus the surge a rollback may use).
    pub fn new(truth: impl GroundTruth + 'static, service: &str, desired: usize, limits: Limits) -> Self {
        let truth: Arc<dyn GroundTruth> = Arc::new(truth);
        let (fleet, serving) = truth.fleet();
        let serving: BTreeSet<InstanceId> = serving.into_iter().collect();
        let mine = |i: &&Instance| i.provenance.as_ref().is_some_and(|p| p.service == service);
        let live = fleet.iter().filter(mine).filter(|i| i.state.is_live()).count();
        let healthy = fleet.iter().filter(mine).filter(|i| serving.contains(&i.id) && truth.healthy(&i.id)).count();
        let surge = limits.ceiling.saturating_sub(desired);
        let state = State {
            floor: limits.floor.min(healthy),
            ceiling: limits.ceiling.max(live + surge),
            violations: Vec::new(),
            calls: 0,
        };
        Checker { truth, service: service.to_owned(), state: Arc::new(Mutex::new(state)) }
    }

    /// The provider and traffic to give the deployer: they delegate every call and check
    /// around it.
    pub fn wrap(
        &self,
        provider: impl Provider + 'static,
        traffic: impl Traffic + 'static,
    ) -> (CheckedProvider, CheckedTraffic) {
        (
            CheckedProvider { inner: Arc::new(provider), checker: self.clone() },
            CheckedTraffic { inner: Arc::new(traffic), checker: self.clone() },
        )
    }

    /// Every violation seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("checker lock poisoned").violations.clone()
    }

    /// How many calls were checked.
    pub fn calls(&self) -> u64 {
        self.state.lock().expect("checker lock poisoned").calls
    }

    /// Checks the end state, then returns every violation seen: on success only `release` is
    /// left, all of it serving; after a rollback only `previous` (nothing, if there was none).
    /// Terminating instances are on their way out and do not count; stopped ones do.
    pub fn finish(&self, outcome: &Outcome, release: &Release, previous: Option<&Release>) -> Vec<String> {
        let (fleet, serving) = self.truth.fleet();
        let serving: BTreeSet<InstanceId> = serving.into_iter().collect();
        let left: Vec<&Instance> =
            fleet.iter().filter(|i| self.mine(i) && i.state != InstanceState::Terminating).collect();
        let want = match &outcome.phase {
            Phase::Succeeded => Some(release.id()),
            Phase::RolledBack { .. } => previous.map(|p| p.id()),
            // Stopped before the point of no return: the previous release must still be there.
            Phase::NoWayBack { .. } => {
                let old = previous.map(|p| p.id());
                if !left.iter().any(|i| i.release() == old && i.state.is_live()) {
                    self.violate(format!("stopped with no way back, yet no instance of {old:?} is left"));
                }
                for i in left.iter().filter(|i| i.release() != old && i.release() != Some(release.id())) {
                    self.violate(format!("at the end, {} of release {:?} is left over (orphan)", i.id, i.release()));
                }
                return self.violations();
            }
            // A refused deployment changed nothing; a failed rollback promises nothing more.
            _ => return self.violations(),
        };
        for i in left {
            if i.release() != want {
                self.violate(format!("at the end, {} of release {:?} is left over (orphan)", i.id, i.release()));
            } else if !serving.contains(&i.id) {
                self.violate(format!("at the end, {} is live but not serving (orphan)", i.id));
            }
        }
        self.violations()
    }

    fn mine(&self, i: &Instance) -> bool {
        i.provenance.as_ref().is_some_and(|p| p.service == self.service)
    }

    fn violate(&self, what: String) {
        self.state.lock().expect("checker lock poisoned").violations.push(what);
    }

    /// Truly healthy serving instances of the service, and live ones.
    fn measure(&self) -> (usize, usize, BTreeSet<InstanceId>) {
        let (fleet, serving) = self.truth.fleet();
        let serving: BTreeSet<InstanceId> = serving.into_iter().collect();
        let mine: Vec<&Instance> = fleet.iter().filter(|i| self.mine(i)).collect();
        let healthy = mine.iter().filter(|i| serving.contains(&i.id) && self.truth.healthy(&i.id)).count();
        let live = mine.iter().filter(|i| i.state.is_live()).count();
        (healthy, live, serving)
    }

    fn check_ceiling(&self, live: usize, after: &str) {
        let ceiling = self.state.lock().expect("checker lock poisoned").ceiling;
        if live > ceiling {
            self.violate(format!("after {after}: {live} live instances, above the ceiling of {ceiling}"));
        }
    }

    /// Around a call that may lower the floor: it must not take the healthy serving count
    /// below the floor (unless it already was, and does not lower it further).
    async fn around<T>(&self, what: &str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let strict = self.truth.out_of_band() == 0;
        let (before, _, _) = self.measure();
        let result = call.await;
        let (after, live, _) = self.measure();
        let floor = {
            let mut s = self.state.lock().expect("checker lock poisoned");
            s.calls += 1;
            s.floor
        };
        if strict && self.truth.out_of_band() == 0 && after < floor && after < before {
            self.violate(format!(
                "{what} took healthy serving instances from {before} to {after}, below the floor of {floor}"
            ));
        }
        self.check_ceiling(live, what);
        result
    }
}

/// A provider behind a [`Checker`].
#[derive(Debug, Clone)]
pub struct CheckedProvider {
    inner: Arc<dyn Provider>,
    checker: Checker,
}

#[async_trait]
impl Provider for CheckedProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        self.checker.around("launch", self.inner.launch(request)).await
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        self.checker.around("describe", self.inner.describe(query)).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        let (_, _, serving) = self.checker.measure();
        // A serving instance is never terminated, whatever happened out of band: the engine
        // detaches first, and a balancer drops what someone else killed.
        if let Some(id) = ids.iter().find(|id| serving.contains(*id)) {
            self.checker.violate(format!("terminate was called on {id}, which serves"));
        }
        self.checker.around("terminate", self.inner.terminate(ids)).await
    }

    fn next_change(&self) -> Option<tokio::time::Instant> {
        self.inner.next_change()
    }

    async fn readiness(&self, release: &Release) -> Result<crate::provider::Readiness> {
        self.inner.readiness(release).await
    }

    fn pacing(&self) -> PacingStats {
        self.inner.pacing()
    }
}

/// Traffic behind a [`Checker`].
#[derive(Debug, Clone)]
pub struct CheckedTraffic {
    inner: Arc<dyn Traffic>,
    checker: Checker,
}

impl CheckedTraffic {
    /// Only while nothing happened out of band: an instance killed between the engine's
    /// observation and its attach is not the engine's mistake.
    fn check_proven(&self, instances: &[Instance]) {
        if self.checker.truth.out_of_band() > 0 {
            return;
        }
        for i in instances {
            if !self.checker.truth.healthy(&i.id) {
                self.checker.violate(format!("{} was given traffic while it was not healthy", i.id));
            }
        }
    }
}

#[async_trait]
impl Traffic for CheckedTraffic {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        self.checker.around("serving", self.inner.serving()).await
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        self.check_proven(instances);
        self.checker.around("attach", self.inner.attach(instances)).await
    }

    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        self.checker.around("prepare", self.inner.prepare(instances)).await
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        self.checker.around("detach", self.inner.detach(ids)).await
    }

    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        self.check_proven(attach);
        self.checker.around("switch", self.inner.switch(attach, detach)).await
    }
}
