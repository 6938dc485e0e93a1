//! Reads reused instead of repeated: DescribeInstances answers, DescribeTargetHealth answers
//! per target group, passed status checks, the listener's forward and target group settings.
//!
//! Three rules keep reuse honest:
//! - an answer is reused only while it is younger than its TTL, counted from when it was
//!   asked;
//! - and only while no call of this provider has changed what it shows: every mutation drops
//!   the answers it affects (a launch, a termination or a tag change drops every
//!   DescribeInstances answer; a registration drops its group's target health), and a read
//!   that was in flight while a mutation happened is not kept (generations);
//! - and never across a wait of the engine: the engine asks `Provider::next_change` right
//!   before it sleeps, and the provider drops its answers there ([`Reads::before_wait`]), so
//!   the first step after a wait reads everything afresh. Reuse thus spans only steps that
//!   follow one another at once (the engine acted, and observes what it did).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::Instance as Ec2Instance;
use tokio::time::Instant;

/// One registered target as DescribeTargetHealth reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub id: String,
    /// `initial`, `healthy`, `unhealthy`, `unused`, `draining` or `unavailable`.
    pub state: String,
    /// ELB's reason code (`Elb.InitialHealthChecking`, `Target.Timeout`, ...), if any.
    pub reason: Option<String>,
    pub description: Option<String>,
}

impl Target {
    /// Registered and not on its way out: it counts as a member of the group.
    pub fn is_member(&self) -> bool {
        !matches!(self.state.as_str(), "draining" | "unused")
    }

    /// ELB has proven it: healthy, or health checks are disabled on the group (ELB then routes
    /// to it without checking).
    pub fn is_proven(&self) -> bool {
        self.state == "healthy"
            || (self.state == "unavailable" && self.reason.as_deref() == Some("Target.HealthCheckDisabled"))
    }
}

/// The weights of the listener's forward action, for the two groups of a blue/green pair.
/// `None`: the group is not in the forward action at all (so ELB does not probe it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Weights(pub [Option<i32>; 2]);

impl Weights {
    /// Whether group `i` receives traffic.
    pub fn serves(&self, i: usize) -> bool {
        self.0[i].is_some_and(|w| w > 0)
    }

    /// Whether both groups are in the forward action, so ELB probes both.
    pub fn probes_both(&self) -> bool {
        self.0.iter().all(Option::is_some)
    }
}

/// The listener as read: the two groups' weights, and what else the forward carried, so a
/// modification keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerState {
    pub weights: Weights,
    pub actions: Vec<aws_sdk_elasticloadbalancingv2::types::Action>,
}

struct Aged<T> {
    at: Instant,
    value: T,
}

#[derive(Default)]
struct State {
    ec2_generation: u64,
    instances: HashMap<String, Aged<Vec<Ec2Instance>>>,
    group_generation: HashMap<String, u64>,
    targets: HashMap<String, Aged<Vec<Target>>>,
    status_ok: HashMap<String, Instant>,
    listeners: HashMap<String, Aged<ListenerState>>,
    delays: HashMap<String, Aged<Duration>>,
}

/// The reuse rules and what is kept.
pub(crate) struct Reads {
    ttl: Duration,
    status_ttl: Duration,
    listener_ttl: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn fresh<T: Clone>(entry: Option<&Aged<T>>, ttl: Duration) -> Option<T> {
    entry.filter(|e| e.at.elapsed() < ttl).map(|e| e.value.clone())
}

impl Reads {
    pub fn new(ttl: Duration, status_ttl: Duration, listener_ttl: Duration) -> Self {
        Reads { ttl, status_ttl, listener_ttl, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("reads lock poisoned")
    }

    /// The generation to pass to [`Reads::keep_instances`]; read it before asking.
    pub fn ec2_generation(&self) -> u64 {
        self.lock().ec2_generation
    }

    /// A DescribeInstances answer for `key`, if one is reusable.
    pub fn instances(&self, key: &str) -> Option<Vec<Ec2Instance>> {
        fresh(self.lock().instances.get(key), self.ttl)
    }

    /// Keeps an answer asked at `asked`, at generation `generation`, unless a mutation happened
    /// since.
    pub fn keep_instances(&self, key: String, generation: u64, asked: Instant, value: Vec<Ec2Instance>) {
        let mut s = self.lock();
        if s.ec2_generation == generation && !self.ttl.is_zero() {
            s.instances.insert(key, Aged { at: asked, value });
        }
    }

    /// The instances among `ids` that a reusable answer shows, and the ids none shows.
    pub fn find_instances(&self, ids: &[String]) -> (Vec<Ec2Instance>, Vec<String>) {
        let s = self.lock();
        let mut found: HashMap<&str, &Ec2Instance> = HashMap::new();
        for answer in s.instances.values().filter(|a| a.at.elapsed() < self.ttl) {
            for i in &answer.value {
                if let Some(id) = i.instance_id() {
                    found.insert(id, i);
                }
            }
        }
        let mut hits = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match found.get(id.as_str()) {
                Some(i) => hits.push((*i).clone()),
                None => missing.push(id.clone()),
            }
        }
        (hits, missing)
    }

    /// A launch, termination or tag change: every DescribeInstances answer is stale.
    pub fn ec2_changed(&self) {
        let mut s = self.lock();
        s.ec2_generation += 1;
        s.instances.clear();
    }

    /// The generation of `group`'s target health; read it before asking.
    pub fn group_generation(&self, group: &str) -> u64 {
        self.lock().group_generation.get(group).copied().unwrap_or(0)
    }

    /// A reusable DescribeTargetHealth answer for `group`.
    pub fn targets(&self, group: &str) -> Option<Vec<Target>> {
        fresh(self.lock().targets.get(group), self.ttl)
    }

    /// Keeps `group`'s target health asked at `asked`, at `generation`, unless it changed since.
    pub fn keep_targets(&self, group: &str, generation: u64, asked: Instant, value: Vec<Target>) {
        let mut s = self.lock();
        if s.group_generation.get(group).copied().unwrap_or(0) == generation && !self.ttl.is_zero() {
            s.targets.insert(group.to_owned(), Aged { at: asked, value });
        }
    }

    /// The engine is about to wait: what was read before must be read again after it. Passed
    /// status checks, the listener and group settings keep their own, longer TTLs.
    pub fn before_wait(&self) {
        let mut s = self.lock();
        s.ec2_generation += 1;
        s.instances.clear();
        let groups: Vec<String> = s.targets.keys().cloned().collect();
        for group in groups {
            *s.group_generation.entry(group).or_default() += 1;
        }
        s.targets.clear();
    }

    /// A registration or deregistration in `group`.
    pub fn group_changed(&self, group: &str) {
        let mut s = self.lock();
        *s.group_generation.entry(group.to_owned()).or_default() += 1;
        s.targets.remove(group);
    }

    /// Whether `id` passed its status checks recently enough to skip asking.
    pub fn status_ok(&self, id: &str) -> bool {
        self.lock().status_ok.get(id).is_some_and(|at| at.elapsed() < self.status_ttl)
    }

    /// Records passed status checks.
    pub fn passed_status(&self, ids: impl IntoIterator<Item = String>) {
        if self.status_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        s.status_ok.retain(|_, at| at.elapsed() < self.status_ttl);
        s.status_ok.extend(ids.into_iter().map(|id| (id, now)));
    }

    /// Forgets passed status checks (an instance that failed them, or is gone).
    pub fn forget_status(&self, ids: &[String]) {
        let mut s = self.lock();
        for id in ids {
            s.status_ok.remove(id);
        }
    }

    /// The listener as last read or written, if reusable.
    pub fn listener(&self, listener: &str) -> Option<ListenerState> {
        fresh(self.lock().listeners.get(listener), self.listener_ttl)
    }

    /// Keeps the listener as read, or as this provider just set it.
    pub fn keep_listener(&self, listener: &str, value: ListenerState) {
        if !self.listener_ttl.is_zero() {
            self.lock().listeners.insert(listener.to_owned(), Aged { at: Instant::now(), value });
        }
    }

    /// Drops the listener (a modification whose outcome is unknown).
    pub fn forget_listener(&self, listener: &str) {
        self.lock().listeners.remove(listener);
    }

    /// A group's deregistration delay, if read recently.
    pub fn delay(&self, group: &str) -> Option<Duration> {
        fresh(self.lock().delays.get(group), self.listener_ttl)
    }

    /// Keeps a group's deregistration delay.
    pub fn keep_delay(&self, group: &str, delay: Duration) {
        if !self.listener_ttl.is_zero() {
            self.lock().delays.insert(group.to_owned(), Aged { at: Instant::now(), value: delay });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Ec2Instance {
        Ec2Instance::builder().instance_id(id).build()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_within_the_ttl_and_dropped_by_a_mutation() {
        let reads = Reads::new(Duration::from_secs(1), Duration::from_secs(60), Duration::from_secs(30));
        let g = reads.ec2_generation();
        reads.keep_instances("q".into(), g, Instant::now(), vec![instance("i-1")]);
        assert_eq!(reads.instances("q").map(|v| v.len()), Some(1));
        let (hits, missing) = reads.find_instances(&["i-1".into(), "i-2".into()]);
        assert_eq!((hits.len(), missing), (1, vec!["i-2".to_owned()]));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(reads.instances("q").is_none(), "older than the TTL");

        reads.keep_instances("q".into(), reads.ec2_generation(), Instant::now(), vec![instance("i-1")]);
        reads.ec2_changed();
        assert!(reads.instances("q").is_none(), "a launch or termination drops it");
        // A read that was in flight during the mutation is not kept.
        reads.keep_instances("q".into(), g, Instant::now(), vec![instance("i-1")]);
        assert!(reads.instances("q").is_none());
        // Age counts from the question, not the answer.
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(600)).await;
        reads.keep_instances("q".into(), reads.ec2_generation(), asked, vec![instance("i-1")]);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(reads.instances("q").is_none(), "asked 1.1 s ago");

        let t = reads.group_generation("tg");
        reads.group_changed("tg");
        reads.keep_targets("tg", t, Instant::now(), Vec::new());
        assert!(reads.targets("tg").is_none(), "asked before a registration: not kept");
        reads.keep_targets("tg", reads.group_generation("tg"), Instant::now(), Vec::new());
        assert!(reads.targets("tg").is_some());

        // A wait of the engine drops everything, and a read in flight across it is not kept.
        let (g, t) = (reads.ec2_generation(), reads.group_generation("tg"));
        reads.keep_instances("q".into(), g, Instant::now(), vec![instance("i-1")]);
        reads.before_wait();
        assert!(reads.instances("q").is_none() && reads.targets("tg").is_none());
        reads.keep_instances("q".into(), g, Instant::now(), vec![instance("i-1")]);
        reads.keep_targets("tg", t, Instant::now(), Vec::new());
        assert!(reads.instances("q").is_none() && reads.targets("tg").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn passed_status_checks_are_kept_for_their_own_ttl() {
        let reads = Reads::new(Duration::from_secs(1), Duration::from_secs(60), Duration::from_secs(30));
        reads.passed_status(["i-1".to_owned()]);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(reads.status_ok("i-1"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!reads.status_ok("i-1"));
        reads.passed_status(["i-2".to_owned()]);
        reads.forget_status(&["i-2".to_owned()]);
        assert!(!reads.status_ok("i-2"));
    }

    #[test]
    fn target_states_read_as_elb_means_them() {
        let t = |state: &str, reason: Option<&str>| Target {
            id: "i-1".into(),
            state: state.into(),
            reason: reason.map(str::to_owned),
            description: None,
        };
        assert!(t("healthy", None).is_proven() && t("healthy", None).is_member());
        assert!(!t("initial", Some("Elb.RegistrationInProgress")).is_proven());
        assert!(t("initial", None).is_member());
        assert!(t("unavailable", Some("Target.HealthCheckDisabled")).is_proven());
        assert!(!t("unavailable", Some("Elb.InternalError")).is_proven());
        assert!(!t("draining", None).is_member() && !t("unused", Some("Target.InvalidState")).is_member());
        assert!(t("unhealthy", Some("Target.Timeout")).is_member());
    }
}
