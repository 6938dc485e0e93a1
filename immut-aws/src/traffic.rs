//! ELBv2 traffic: one target group, or two behind a listener's weighted forward.
//!
//! Blue/green as an ALB works. Both groups are in the listener's forward action, the idle one
//! at weight 0, so ELB health-checks both while only one gets requests. New instances are
//! registered (staged) in the idle group by [`Traffic::prepare`], which the engine calls once
//! each runs, and are `Unknown` until ELB reports them `healthy` there, so the engine switches
//! only instances ELB has proven; the health check only reads. A switch states its end (the new
//! instances' group at full weight, the other at 0) and makes the listener so; a retry after a
//! lost answer finds it so and changes nothing. When both groups hold serving instances (a
//! canary or a rolling deployment through the listener), the weights follow the instance
//! counts, so each instance gets the same share and a canary's share of instances is its share
//! of requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use immut_core::{
    Error, ErrorKind, Health, HealthCheck, Instance, InstanceId, InstanceState, ReleaseId, Result, Traffic,
};

use crate::client::Clients;
use crate::provider::lookup;
use crate::reads::{ListenerState, Target, Weights};

/// The weight of a group that takes all traffic (ELB accepts 0 to 999).
const FULL: i32 = 999;

/// Which ELBv2 resources carry the traffic.
#[derive(Debug, Clone)]
enum Mode {
    TargetGroup { arn: String },
    Listener { listener: String, groups: [String; 2] },
}

/// ELBv2 traffic: a target group, or two behind a listener for blue/green. It is a
/// [`HealthCheck`] too: ELB's own target health (see the `HealthCheck` impl).
#[derive(Debug, Clone)]
pub struct AwsTraffic {
    clients: Arc<Clients>,
    mode: Mode,
    max_drain: Duration,
    health_timeout: Duration,
}

/// Waits until none of `ids` is draining in `group`: a fresh read right away, then with backoff,
/// at most the group's deregistration delay (read from the group only if a target is draining)
/// and never longer than `max_drain`. ELB completes a deregistration at once when the target has
/// no requests in flight, so a drained group costs one read.
pub(crate) async fn drained(clients: &Clients, group: &str, ids: &[String], max_drain: Duration) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut limit: Option<Duration> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        let draining =
            clients.targets(group, false).await?.iter().any(|t| t.state == "draining" && ids.contains(&t.id));
        if !draining {
            return Ok(());
        }
        let limit = match limit {
            Some(l) => l,
            None => *limit.insert(clients.deregistration_delay(group).await?.min(max_drain)),
        };
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            tracing::info!(group, "the deregistration delay has passed; ELB finishes the deregistration");
            return Ok(());
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// What ELB's target state means for an instance.
fn verdict(t: &Target) -> Health {
    let why = || {
        let reason = t.reason.as_deref().unwrap_or("no reason given");
        match &t.description {
            Some(d) => format!("{reason}: {d}"),
            None => reason.to_owned(),
        }
    };
    match t.state.as_str() {
        "healthy" => Health::Healthy,
        // Registered, ELB's first checks still running.
        "initial" => Health::Unknown,
        "unhealthy" => Health::Unhealthy(format!("ELB reports the target unhealthy ({})", why())),
        // Health checks disabled on the group: ELB routes to it unchecked.
        "unavailable" if t.is_proven() => Health::Healthy,
        // ELB could not say (Elb.InternalError).
        "unavailable" => Health::Unknown,
        // On its way out: no verdict on the instance itself.
        "draining" => Health::Unknown,
        // A stopped instance, or a group no load balancer uses: ELB will not send it requests.
        _ => Health::Unhealthy(format!("ELB reports the target {} ({})", t.state, why())),
    }
}

/// The weights that give group `t` all traffic and keep the other probed at 0.
fn full(t: usize) -> Weights {
    let mut w = Weights([Some(0), Some(0)]);
    w.0[t] = Some(FULL);
    w
}

/// Weights for two serving groups with `counts` members, so that every instance gets the same
/// share; a group without members gets none.
fn proportional(counts: [usize; 2]) -> Option<Weights> {
    match counts {
        [0, 0] => None,
        [_, 0] => Some(full(0)),
        [0, _] => Some(full(1)),
        [a, b] => {
            let top = a.max(b) as f64;
            let w = |c: usize| ((FULL as f64 * c as f64 / top).round() as i32).max(1);
            Some(Weights([Some(w(a)), Some(w(b))]))
        }
    }
}

impl AwsTraffic {
    pub(crate) fn target_group(clients: Arc<Clients>, arn: String, max_drain: Duration) -> Self {
        AwsTraffic { clients, mode: Mode::TargetGroup { arn }, max_drain, health_timeout: Duration::from_secs(60) }
    }

    pub(crate) fn listener(clients: Arc<Clients>, listener: String, groups: [String; 2], max_drain: Duration) -> Self {
        AwsTraffic {
            clients,
            mode: Mode::Listener { listener, groups },
            max_drain,
            health_timeout: Duration::from_secs(60),
        }
    }

    /// How long a switch waits for ELB to report the new targets `healthy` in their group
    /// before it refuses to move traffic to them (default 60 s). The engine's health gating
    /// normally proves them first, so the switch finds them healthy at once.
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Where the listener forwards, as (target group ARN, weight), for reports. A target group
    /// alone forwards everything to itself.
    pub async fn forwarding(&self) -> Result<Vec<(String, i32)>> {
        match &self.mode {
            Mode::TargetGroup { arn } => Ok(vec![(arn.clone(), FULL)]),
            Mode::Listener { listener, groups } => {
                let state = self.clients.listener(listener, groups, true).await?;
                Ok(groups.iter().zip(state.weights.0).filter_map(|(g, w)| Some((g.clone(), w?))).collect())
            }
        }
    }

    /// The members (registered, not draining) of `group`, from a reusable read if any.
    async fn members(&self, group: &str) -> Result<Vec<Target>> {
        Ok(self.clients.targets(group, true).await?.into_iter().filter(Target::is_member).collect())
    }

    /// Checks that the instances exist and are live, as ELBv2 requires of targets, from the
    /// reads of this step where they show them.
    async fn live_ids(&self, instances: &[Instance]) -> Result<Vec<String>> {
        let ids: Vec<String> = instances.iter().map(|i| i.id.to_string()).collect();
        let live: HashSet<String> = lookup(&self.clients, &ids)
            .await?
            .into_iter()
            .filter(|i| i.state.is_live())
            .map(|i| i.id.to_string())
            .collect();
        let unknown: Vec<InstanceId> =
            ids.iter().filter(|id| !live.contains(id.as_str())).map(|id| InstanceId::new(id.as_str())).collect();
        if !unknown.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "cannot register instances that do not exist or are not live")
                .with_provider("aws")
                .with_operation("RegisterTargets")
                .with_ids(unknown));
        }
        Ok(ids)
    }

    /// The releases of these instances, from this step's reads where they show them.
    async fn releases(&self, ids: &[String]) -> Result<HashMap<String, Option<ReleaseId>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(lookup(&self.clients, ids).await?.into_iter().map(|i| (i.id.to_string(), i.release().cloned())).collect())
    }

    /// Waits until ELB reports every one of `ids` healthy in `group`, at most the health
    /// timeout; after it, `Unhealthy` (not retried: the engine rolls back, and traffic stays).
    async fn proven(&self, group: &str, ids: &[String]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.health_timeout;
        let mut reuse = true;
        let mut pause = Duration::from_millis(250);
        loop {
            let targets: HashMap<String, Target> =
                self.clients.targets(group, reuse).await?.into_iter().map(|t| (t.id.clone(), t)).collect();
            reuse = false;
            let waiting: Vec<String> = ids
                .iter()
                .filter(|id| !targets.get(*id).is_some_and(Target::is_proven))
                .map(|id| match targets.get(id) {
                    Some(t) => format!("{id} {}", t.state),
                    None => format!("{id} not registered"),
                })
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unhealthy,
                    format!(
                        "ELB does not report the new targets healthy in {group} after {:?} ({}); traffic was not moved",
                        self.health_timeout,
                        waiting.join(", ")
                    ),
                )
                .with_provider("aws")
                .with_operation("ModifyListener"));
            }
            tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Makes sure both groups are in the listener's forward action, so ELB probes the idle one
    /// (a listener created with a plain forward to one group is rewritten once, traffic
    /// unchanged).
    async fn probe_both(&self, listener: &str, groups: &[String; 2], state: ListenerState) -> Result<ListenerState> {
        if state.weights.probes_both() {
            return Ok(state);
        }
        let mut w = state.weights;
        for slot in &mut w.0 {
            slot.get_or_insert(0);
        }
        self.clients.set_weights(listener, groups, &state, w).await
    }

    /// Moves the listener to `weights` unless it is there already.
    async fn set(&self, listener: &str, groups: &[String; 2], state: &ListenerState, weights: Weights) -> Result<bool> {
        if state.weights == weights {
            return Ok(false);
        }
        self.clients.set_weights(listener, groups, state, weights).await?;
        Ok(true)
    }

    /// Where new instances of `release` go behind the listener: the group that holds instances
    /// of the same release; otherwise the only serving group (attach) or the idle one (stage);
    /// otherwise the group with the lower weight.
    fn place(
        release: Option<&ReleaseId>,
        members: &[Vec<Target>; 2],
        releases: &HashMap<String, Option<ReleaseId>>,
        weights: Weights,
        stage: bool,
    ) -> usize {
        let holds = |i: usize| {
            release.is_some() && members[i].iter().any(|t| releases.get(&t.id).is_some_and(|r| r.as_ref() == release))
        };
        if let Some(i) = (0..2).find(|&i| holds(i)) {
            return i;
        }
        match (weights.serves(0), weights.serves(1)) {
            (true, false) => usize::from(stage),
            (false, true) => usize::from(!stage),
            _ => usize::from(weights.0[1].unwrap_or(0) < weights.0[0].unwrap_or(0)),
        }
    }

    async fn attach_listener(&self, listener: &str, groups: &[String; 2], instances: &[Instance]) -> Result<()> {
        let ids = self.live_ids(instances).await?;
        let state = self.clients.listener(listener, groups, false).await?;
        let members = [self.members(&groups[0]).await?, self.members(&groups[1]).await?];
        let in_group = |i: usize, id: &str| members[i].iter().any(|t| t.id == id);
        let unplaced = ids.iter().any(|id| !(0..2).any(|i| in_group(i, id)));
        let member_ids: Vec<String> =
            if unplaced { members.iter().flatten().map(|t| t.id.clone()).collect() } else { Vec::new() };
        let releases = self.releases(&member_ids).await?;
        let mut into: [Vec<String>; 2] = Default::default();
        let mut attached = [false; 2];
        for (instance, id) in instances.iter().zip(&ids) {
            match (0..2).find(|&i| in_group(i, id)) {
                Some(i) => attached[i] = true,
                None => {
                    let i = Self::place(instance.release(), &members, &releases, state.weights, false);
                    into[i].push(id.clone());
                    attached[i] = true;
                }
            }
        }
        for i in 0..2 {
            if !into[i].is_empty() {
                self.clients.register(&groups[i], &into[i]).await?;
            }
        }
        let counts = [0, 1].map(|i| members[i].len() + into[i].len());
        let serving = [0, 1].map(|i| state.weights.serves(i) || attached[i]);
        let weights = match serving {
            [true, true] => proportional(counts),
            [true, false] => Some(full(0)),
            [false, true] => Some(full(1)),
            [false, false] => None,
        };
        let Some(weights) = weights else { return Ok(()) };
        // A group that starts taking traffic takes it only once ELB has proven what is attached.
        for i in 0..2 {
            if attached[i] && !state.weights.serves(i) && weights.serves(i) {
                let mine: Vec<String> =
                    ids.iter().filter(|id| in_group(i, id) || into[i].contains(id)).cloned().collect();
                self.proven(&groups[i], &mine).await?;
            }
        }
        let state = self.probe_both(listener, groups, state).await?;
        self.set(listener, groups, &state, weights).await?;
        Ok(())
    }

    async fn detach_listener(&self, listener: &str, groups: &[String; 2], ids: &[String]) -> Result<()> {
        let state = self.clients.listener(listener, groups, false).await?;
        let members = [self.members(&groups[0]).await?, self.members(&groups[1]).await?];
        let leaving: [Vec<String>; 2] =
            [0, 1].map(|i| members[i].iter().filter(|t| ids.contains(&t.id)).map(|t| t.id.clone()).collect());
        if leaving.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let counts = [0, 1].map(|i| members[i].len() - leaving[i].len());
        // Traffic moves first (the weights), then the targets drain.
        let weights = match (state.weights.serves(0), state.weights.serves(1)) {
            (true, true) => proportional(counts),
            _ => None,
        };
        if let Some(weights) = weights {
            self.set(listener, groups, &state, weights).await?;
        }
        for i in 0..2 {
            if leaving[i].is_empty() {
                continue;
            }
            self.clients.deregister(&groups[i], &leaving[i]).await?;
            // A group at weight 0 sent them no requests: nothing to drain.
            if state.weights.serves(i) {
                drained(&self.clients, &groups[i], &leaving[i], self.max_drain).await?;
            }
        }
        Ok(())
    }

    /// The switch behind the listener, stated as its end: the group of the new instances at
    /// full weight and the other at 0, whatever the listener showed before; see
    /// [`Traffic::switch`] on [`AwsTraffic`].
    async fn switch_listener(
        &self,
        listener: &str,
        groups: &[String; 2],
        attach: &[Instance],
        detach: &[InstanceId],
    ) -> Result<()> {
        let state = self.clients.listener(listener, groups, false).await?;
        let members = [self.members(&groups[0]).await?, self.members(&groups[1]).await?];
        let attach_ids: Vec<String> = attach.iter().map(|i| i.id.to_string()).collect();
        let detach_ids: Vec<String> = detach.iter().map(|i| i.to_string()).collect();
        let count = |i: usize, ids: &[String]| members[i].iter().filter(|t| ids.contains(&t.id)).count();
        // The group that ends up serving: where the new instances are (staged); else the group
        // that holds none of the old ones; else the one with the lower weight.
        let score = |i: usize| {
            (
                count(i, &attach_ids),
                std::cmp::Reverse(count(i, &detach_ids)),
                std::cmp::Reverse(state.weights.0[i].unwrap_or(0)),
            )
        };
        let t = if score(1) > score(0) { 1 } else { 0 };
        let o = 1 - t;
        // What else sits in the new group (instances of an older release, or old instances) must
        // not get traffic after the switch; behind weight 0 it had none, so no drain is due.
        let stale: Vec<String> =
            members[t].iter().filter(|m| !attach_ids.contains(&m.id)).map(|m| m.id.clone()).collect();
        if !stale.is_empty() {
            self.clients.deregister(&groups[t], &stale).await?;
            if state.weights.serves(t) {
                drained(&self.clients, &groups[t], &stale, self.max_drain).await?;
            }
        }
        let missing: Vec<Instance> =
            attach.iter().filter(|i| !members[t].iter().any(|m| m.id == i.id.as_str())).cloned().collect();
        if !missing.is_empty() {
            let ids = self.live_ids(&missing).await?;
            self.clients.register(&groups[t], &ids).await?;
        }
        // Probe before the switch: ELB must have proven every new target in its group.
        self.proven(&groups[t], &attach_ids).await?;
        self.set(listener, groups, &state, full(t)).await?;
        // The old instances stay registered in the other group, at weight 0, for the switch
        // back; their requests in flight drain on their own time, which ELB cannot show, so the
        // switch waits the group's deregistration delay (at most max_drain). The same switch
        // again waits too, since the first call may have been cut short before its wait.
        let kept_old = count(o, &detach_ids) > 0;
        if kept_old {
            let delay = self.clients.deregistration_delay(&groups[o]).await?.min(self.max_drain);
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Traffic for AwsTraffic {
    /// The members of the groups that get requests: registered targets that are not draining,
    /// `initial` and `unhealthy` ones included (registered and routed to once ELB passes them).
    /// Behind a listener, only groups with a weight above 0 serve; the idle group's members are
    /// staged, not serving.
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let groups: Vec<String> = match &self.mode {
            Mode::TargetGroup { arn } => vec![arn.clone()],
            Mode::Listener { listener, groups } => {
                let state = self.clients.listener(listener, groups, false).await?;
                (0..2).filter(|&i| state.weights.serves(i)).map(|i| groups[i].clone()).collect()
            }
        };
        let mut serving = Vec::new();
        for group in groups {
            serving.extend(self.members(&group).await?.into_iter().map(|t| InstanceId::new(t.id)));
        }
        serving.sort();
        serving.dedup();
        Ok(serving)
    }

    /// Behind a listener with an idle group: registers the new instances that neither group
    /// knows in the idle group (weight 0), so ELB health-checks them without sending them
    /// requests, and writes the idle group into the forward first if the listener left it out.
    /// An instance of a release the serving group holds is left for attach, which puts it
    /// there. In a target group, or with both groups serving, there is nothing to stage: the
    /// attach registers, and ELB judges the instance in the group that serves it.
    async fn prepare(&self, instances: &[Instance]) -> Result<()> {
        let Mode::Listener { listener, groups } = &self.mode else { return Ok(()) };
        if instances.is_empty() {
            return Ok(());
        }
        let seen = self.sighting(listener, groups, instances).await?;
        let Some(idle) = seen.idle else { return Ok(()) };
        let stage: Vec<String> =
            instances.iter().map(|i| i.id.to_string()).filter(|id| seen.unstaged.contains(id)).collect();
        if stage.is_empty() {
            return Ok(());
        }
        let state = self.probe_both(listener, groups, seen.state).await?;
        debug_assert!(!state.weights.serves(idle));
        self.clients.register(&groups[idle], &stage).await
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        match &self.mode {
            Mode::TargetGroup { arn } => {
                let ids = self.live_ids(instances).await?;
                let members: HashSet<String> = self.members(arn).await?.into_iter().map(|t| t.id).collect();
                let missing: Vec<String> = ids.into_iter().filter(|id| !members.contains(id)).collect();
                if missing.is_empty() { Ok(()) } else { self.clients.register(arn, &missing).await }
            }
            Mode::Listener { listener, groups } => self.attach_listener(listener, groups, instances).await,
        }
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        match &self.mode {
            Mode::TargetGroup { arn } => {
                let present: Vec<String> =
                    self.members(arn).await?.into_iter().map(|t| t.id).filter(|id| ids.contains(id)).collect();
                if present.is_empty() {
                    return Ok(());
                }
                self.clients.deregister(arn, &present).await?;
                drained(&self.clients, arn, &present, self.max_drain).await
            }
            Mode::Listener { listener, groups } => self.detach_listener(listener, groups, &ids).await,
        }
    }

    /// In a target group: attach, then detach (which waits out the drain). Behind a listener:
    /// the new instances' group (where `prepare` staged them) gets full weight and the
    /// other 0, with one ModifyListener, once ELB reports every new target healthy (at most
    /// the health timeout). The switch states its end, so a retry after a lost answer, or the
    /// same switch again, finds the listener there and sends nothing; it still waits the drain.
    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        match &self.mode {
            Mode::TargetGroup { .. } => {
                self.attach(attach).await?;
                self.detach(detach).await
            }
            Mode::Listener { listener, groups } => self.switch_listener(listener, groups, attach, detach).await,
        }
    }
}

/// ELB's target health as a verdict: `healthy` is healthy; `initial` (ELB's first checks) and
/// `draining` are unknown; `unhealthy`, and `unused` for a stopped instance or a group no load
/// balancer uses, are unhealthy with ELB's reason; `unavailable` is healthy when the group's
/// health checks are disabled and unknown otherwise.
///
/// An instance registered in no group: behind a listener with an idle group (weight 0), a
/// running instance with immut's provenance, of a release the serving group does not hold,
/// belongs in the idle group for probing ([`Traffic::prepare`] registers it there), so it is
/// unknown until ELB has judged it. Otherwise (a target group, or both groups serving) it
/// passes, so that this check composes with checks that gate the attach (status checks, the
/// HTTP probe), and ELB judges it once attached. The check never changes anything.
///
/// One DescribeTargetHealth per group serves this check, `serving()` and `prepare()` in an
/// engine step: the answers are reused (see `AwsConfig::read_ttl`).
#[async_trait]
impl HealthCheck for AwsTraffic {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    /// A failed target-health read is an error for the engine to retry, never a verdict on
    /// the targets: one throttled call must not fail a bake.
    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let (listener, groups) = match &self.mode {
            Mode::TargetGroup { arn } => {
                let targets: HashMap<String, Target> =
                    self.clients.targets(arn, true).await?.into_iter().map(|t| (t.id.clone(), t)).collect();
                return Ok(instances
                    .iter()
                    .map(|i| targets.get(i.id.as_str()).map_or(Health::Healthy, verdict))
                    .collect());
            }
            Mode::Listener { listener, groups } => (listener, groups),
        };
        let seen = self.sighting(listener, groups, instances).await?;
        Ok(instances
            .iter()
            .map(|i| match seen.found.get(i.id.as_str()) {
                Some(t) => verdict(t),
                None if seen.unstaged.contains(i.id.as_str()) => Health::Unknown,
                None => Health::Healthy,
            })
            .collect())
    }
}

/// What the listener's two groups show of some instances.
struct Sighting {
    /// The listener as read.
    state: ListenerState,
    /// The group at weight 0 while the other serves, if one is.
    idle: Option<usize>,
    /// Each instance's target in the group that speaks for it.
    found: HashMap<String, Target>,
    /// Instances in neither group that belong in the idle one for probing.
    unstaged: HashSet<String>,
}

impl AwsTraffic {
    /// Reads the groups for `instances`, from this step's answers where it can: the serving
    /// groups first, the idle one only when an instance is not found there.
    async fn sighting(&self, listener: &str, groups: &[String; 2], instances: &[Instance]) -> Result<Sighting> {
        let state = self.clients.listener(listener, groups, false).await?;
        let mut order: Vec<usize> = (0..2).filter(|&i| state.weights.serves(i)).collect();
        order.extend((0..2).filter(|&i| !state.weights.serves(i)));
        let mut members: [Option<Vec<Target>>; 2] = [None, None];
        let mut found: HashMap<String, Target> = HashMap::new();
        for &i in &order {
            let missing = instances.iter().any(|inst| !found.contains_key(inst.id.as_str()));
            if !missing {
                break;
            }
            let targets = self.clients.targets(&groups[i], true).await?;
            // Any state counts as known (a draining target is never staged again); where an
            // instance shows in both groups, the group it is a member of speaks for it.
            for t in &targets {
                match found.get(&t.id) {
                    Some(known) if known.is_member() || !t.is_member() => {}
                    _ => {
                        found.insert(t.id.clone(), t.clone());
                    }
                }
            }
            members[i] = Some(targets.into_iter().filter(Target::is_member).collect());
        }
        let idle = match (state.weights.serves(0), state.weights.serves(1)) {
            (true, false) => Some(1),
            (false, true) => Some(0),
            _ => None,
        };
        let candidates: Vec<&Instance> = instances
            .iter()
            .filter(|i| {
                idle.is_some()
                    && !found.contains_key(i.id.as_str())
                    && i.provenance.is_some()
                    && i.state == InstanceState::Running
            })
            .collect();
        let mut unstaged = HashSet::new();
        if let (Some(idle), false) = (idle, candidates.is_empty()) {
            // An instance of a release the serving group holds joins that group on attach: it
            // needs no probing on the side.
            let serving_ids: Vec<String> = members[1 - idle].iter().flatten().map(|t| t.id.clone()).collect();
            let releases = self.releases(&serving_ids).await?;
            let held: HashSet<Option<&ReleaseId>> = releases.values().map(Option::as_ref).collect();
            unstaged.extend(candidates.iter().filter(|i| !held.contains(&i.release())).map(|i| i.id.to_string()));
        }
        Ok(Sighting { state, idle, found, unstaged })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(state: &str, reason: Option<&str>) -> Target {
        Target { id: "i-1".into(), state: state.into(), reason: reason.map(str::to_owned), description: None }
    }

    #[test]
    fn target_states_map_to_health() {
        assert_eq!(verdict(&target("healthy", None)), Health::Healthy);
        assert_eq!(verdict(&target("initial", Some("Elb.InitialHealthChecking"))), Health::Unknown);
        assert_eq!(verdict(&target("draining", Some("Target.DeregistrationInProgress"))), Health::Unknown);
        assert_eq!(verdict(&target("unavailable", Some("Target.HealthCheckDisabled"))), Health::Healthy);
        assert_eq!(verdict(&target("unavailable", Some("Elb.InternalError"))), Health::Unknown);
        let Health::Unhealthy(why) = verdict(&target("unhealthy", Some("Target.ResponseCodeMismatch"))) else {
            panic!("unhealthy is a verdict")
        };
        assert!(why.contains("Target.ResponseCodeMismatch"), "{why}");
        assert!(matches!(verdict(&target("unused", Some("Target.InvalidState"))), Health::Unhealthy(_)));
        assert!(matches!(verdict(&target("unused", Some("Target.NotInUse"))), Health::Unhealthy(_)));
    }

    #[test]
    fn new_instances_go_to_their_release_s_group_else_by_the_weights() {
        let member = |id: &str| Target { id: id.into(), state: "healthy".into(), reason: None, description: None };
        let (v1, v2) = (ReleaseId::new("r1"), ReleaseId::new("r2"));
        let releases: HashMap<String, Option<ReleaseId>> =
            [("old".to_owned(), Some(v1.clone())), ("new".to_owned(), Some(v2.clone()))].into();
        let blue_serves = Weights([Some(999), Some(0)]);
        let empty: [Vec<Target>; 2] = [Vec::new(), Vec::new()];
        // Staging goes to the idle group; an attach of unstaged instances to the serving one.
        assert_eq!(AwsTraffic::place(Some(&v2), &empty, &releases, blue_serves, true), 1);
        assert_eq!(AwsTraffic::place(Some(&v2), &empty, &releases, blue_serves, false), 0);
        assert_eq!(AwsTraffic::place(Some(&v2), &empty, &releases, Weights([Some(0), Some(999)]), true), 0);
        // With both serving (a canary), the group that holds the release wins.
        let mixed = [vec![member("old")], vec![member("new")]];
        let both = Weights([Some(999), Some(333)]);
        assert_eq!(AwsTraffic::place(Some(&v2), &mixed, &releases, both, false), 1);
        assert_eq!(AwsTraffic::place(Some(&v1), &mixed, &releases, both, false), 0);
        // Otherwise the group with the lower weight.
        assert_eq!(AwsTraffic::place(None, &mixed, &releases, both, false), 1);
    }

    #[test]
    fn weights_follow_the_instance_counts() {
        assert_eq!(proportional([10, 0]), Some(full(0)));
        assert_eq!(proportional([0, 3]), Some(full(1)));
        assert_eq!(proportional([0, 0]), None);
        assert_eq!(proportional([9, 1]), Some(Weights([Some(999), Some(111)])));
        assert_eq!(proportional([1, 1]), Some(Weights([Some(999), Some(999)])));
        assert_eq!(proportional([999, 1]), Some(Weights([Some(999), Some(1)])), "a lone canary still gets requests");
        assert!(full(1).serves(1) && !full(1).serves(0) && full(1).probes_both());
    }
}
