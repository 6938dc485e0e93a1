//! The shared conformance suite: every provider runs all of it.
//!
//! Each case is a public async function over a [`Harness`] that returns `Ok(())` or a
//! [`Failure`] saying what broke. [`conformance_tests!`](crate::conformance_tests) turns them
//! into one `#[tokio::test]` each, so a failing case is reported by name:
//!
//! ```text
//! async fn harness() -> immut_core::conformance::Harness { /* your provider */ }
//! immut_core::conformance_tests!(harness);
//! ```
//!
//! The macro holds the one list of cases; [`CASES`] and [`run`] are generated from the same
//! list, for runners other than `cargo test`.
//!
//! A real difference between backends is a [`Capabilities`](crate::Capabilities) field or a
//! harness parameter, never a skipped case: every case runs on every provider and checks what
//! the contract asks of that provider.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::engine::RetryPolicy;
use crate::error::ErrorKind;
use crate::health::{AllOf, HealthCheck};
use crate::model::{
    BaselineSpec, DeploymentId, Instance, InstanceId, InstanceState, LaunchToken, Observed, Provenance, Release,
    SigningKey,
};
use crate::provider::{Adopt, LaunchRequest, Provider, ProviderExt, Query};
use crate::strategy::BlueGreen;
use crate::traffic::Traffic;
use crate::{Deployer, Phase};

/// Launches one instance outside immut, the way an operator with console access would: without
/// provenance labels and not through [`Provider::launch`]. Returns its id as the provider's
/// describe reports it. Build one with [`hand_launch`].
///
/// Every backend can make one (the simulator's `launch_unmanaged`, a process started by hand
/// from a managed executable, a bare RunInstances); the `include_unmanaged` and adoption cases
/// need it. The cases launch a managed instance of the service first, because some backends
/// recognise hand-launched instances by the artifact a managed one runs (the local provider), and
/// terminate what they launched by hand through the provider. Anything a failing case leaves
/// behind is the harness's to stop when it is dropped.
pub type HandLaunch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = crate::Result<InstanceId>> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`HandLaunch`].
pub fn hand_launch<F, Fut>(launch: F) -> HandLaunch
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::Result<InstanceId>> + Send + 'static,
{
    Arc::new(move || Box::pin(launch()))
}

/// What a provider gives the suite.
#[derive(Clone)]
pub struct Harness {
    /// The provider under test.
    pub provider: Arc<dyn Provider>,
    /// Its traffic side.
    pub traffic: Arc<dyn Traffic>,
    /// The health check a deployment on this backend uses: it must find [`Harness::release`]
    /// and [`Harness::next_release`] healthy once running, and [`Harness::unhealthy_release`]
    /// never healthy.
    pub health: Arc<dyn HealthCheck>,
    /// A valid release for this provider (version 1.0.0 in the harnesses of this workspace).
    /// Give each test its own service name so cases can run in parallel.
    pub release: Release,
    /// A later, healthy release of the same service: the target of the successful deployment
    /// and the second release of describe-by-release.
    pub next_release: Release,
    /// A later release of the same service whose instances launch and run but never pass
    /// [`Harness::health`]: the deployment case rolls it back.
    pub unhealthy_release: Release,
    /// Releases this provider must refuse with `InvalidInput` before launching anything, with a
    /// description of each (an unknown image, a digest mismatch, ...).
    pub bad_releases: Vec<(String, Release)>,
    /// Starts an instance outside immut on this backend.
    pub launch_by_hand: HandLaunch,
    /// The provider again, as an [`Adopt`], when it implements that trait. A backend without it
    /// still runs the adoption case, which then checks that hand-launched instances stay out of
    /// every managed query.
    pub adopt: Option<Arc<dyn Adopt>>,
    /// How long the backend may take to show a change (launch visible, termination visible),
    /// and the progress deadline of the deployments the suite runs.
    pub settle: Duration,
    /// Held for the duration of the case: a lock on a shared emulator, a server to keep up.
    pub keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("provider", &self.provider)
            .field("release", &self.release)
            .field("next_release", &self.next_release.id())
            .field("unhealthy_release", &self.unhealthy_release.id())
            .field("bad_releases", &self.bad_releases.len())
            .field("adopt", &self.adopt.is_some())
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

/// Why a case failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        Failure(format!("unexpected error: {e}"))
    }
}

type Checked = Result<(), Failure>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($msg)+)));
        }
    };
}

/// Every case, by name, in the order the macro generates them; [`run`] runs one by name.
pub const CASES: &[&str] = crate::conformance_tests! { @each [@names] };

/// Runs the case named `case` (one of [`CASES`]); an unknown name is a [`Failure`].
pub async fn run(case: &str, harness: &Harness) -> Checked {
    crate::conformance_tests! { @each [@run case harness] }
}

/// The key the signed cases sign with.
fn signing_key() -> SigningKey {
    SigningKey::new("conformance-suite-signing-key").expect("the key is long enough")
}

fn deployment(h: &Harness, name: &str) -> DeploymentId {
    DeploymentId::new(format!("{}-{name}", h.release.service()))
}

fn token(h: &Harness, name: &str) -> LaunchToken {
    LaunchToken::new(format!("{}-{name}", h.release.service()))
}

fn request(h: &Harness, count: usize, name: &str) -> LaunchRequest {
    LaunchRequest::new(Arc::new(h.release.clone()), count, &DeploymentId::new("conformance"), token(h, name))
}

fn request_for(release: &Release, count: usize, deployment: &DeploymentId, token: LaunchToken) -> LaunchRequest {
    LaunchRequest::new(Arc::new(release.clone()), count, deployment, token)
}

fn sorted(mut ids: Vec<InstanceId>) -> Vec<InstanceId> {
    ids.sort();
    ids
}

async fn live_ids(h: &Harness, query: &Query) -> Result<Vec<InstanceId>, Failure> {
    Ok(sorted(h.provider.describe(query).await?.into_iter().map(|i| i.id).collect()))
}

/// Polls `query` until its ids are `want`, within the harness's settle time.
async fn settles_to(h: &Harness, query: &Query, want: &[InstanceId], what: &str) -> Checked {
    let want = sorted(want.to_vec());
    let deadline = tokio::time::Instant::now() + h.settle;
    loop {
        let got = live_ids(h, query).await?;
        if got == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure(format!("{what}: expected {want:?}, observed {got:?} after {:?}", h.settle)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `ids` is running; returns them described.
async fn running(h: &Harness, ids: &[InstanceId]) -> Result<Vec<Instance>, Failure> {
    let deadline = tokio::time::Instant::now() + h.settle;
    loop {
        let found = h.provider.describe(&Query::ids(ids.to_vec())).await?;
        if found.len() == ids.len() && found.iter().all(|i| i.state == InstanceState::Running) {
            return Ok(found);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "instances {ids:?} not all running after {:?}: {:?}",
            h.settle,
            found.iter().map(|i| (&i.id, i.state)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Launches `count` instances of the harness release and waits until they run.
async fn launch_running(h: &Harness, count: usize, name: &str) -> Result<Vec<Instance>, Failure> {
    let launched = h.provider.launch(&request(h, count, name)).await?;
    ensure!(launched.len() == count, "launch of {count} returned {} instances", launched.len());
    running(h, &ids_of(&launched)).await
}

/// Checks, without waiting, that every id of `serving` serves and none of `gone` does.
async fn serves(h: &Harness, serving: &[InstanceId], gone: &[InstanceId], when: &str) -> Checked {
    let now = h.traffic.serving().await?;
    let missing: Vec<&InstanceId> = serving.iter().filter(|id| !now.contains(id)).collect();
    let stale: Vec<&InstanceId> = gone.iter().filter(|id| now.contains(id)).collect();
    ensure!(missing.is_empty(), "{when}: {missing:?} should serve; serving is {now:?}");
    ensure!(stale.is_empty(), "{when}: {stale:?} should no longer serve; serving is {now:?}");
    Ok(())
}

async fn cleanup(h: &Harness) -> Checked {
    let ids = live_ids(h, &Query::service(h.release.service())).await?;
    h.traffic.detach(&ids).await?;
    h.provider.terminate_all(&ids).await?;
    settles_to(h, &Query::service(h.release.service()), &[], "cleanup").await
}

fn ids_of(instances: &[Instance]) -> Vec<InstanceId> {
    instances.iter().map(|i| i.id.clone()).collect()
}

fn same_service(h: &Harness) -> Checked {
    let service = h.release.service();
    for (what, release) in [("next_release", &h.next_release), ("unhealthy_release", &h.unhealthy_release)] {
        ensure!(
            release.service() == service && release.id() != h.release.id(),
            "harness: {what} must be another release of service {service}, got {release}"
        );
    }
    Ok(())
}

/// Launch two, see them in describe, terminate them, see them go.
pub async fn launch_describe_terminate(h: &Harness) -> Checked {
    let launched = h.provider.launch(&request(h, 2, "ldt")).await?;
    ensure!(launched.len() == 2, "launch of 2 returned {} instances", launched.len());
    let ids = ids_of(&launched);
    ensure!(ids[0] != ids[1], "launch returned the same id twice: {ids:?}");
    ensure!(launched.iter().all(|i| i.state.is_live()), "launched instances are not live: {launched:?}");
    settles_to(h, &Query::ids(ids.clone()), &ids, "describe by ids after launch").await?;
    h.provider.terminate(&ids).await?;
    settles_to(h, &Query::ids(ids.clone()), &[], "describe by ids after terminate").await?;
    let remembered = h.provider.describe(&Query::ids(ids.clone()).with_terminated()).await?;
    ensure!(
        remembered.iter().all(|i| matches!(i.state, InstanceState::Terminating | InstanceState::Terminated)),
        "terminated instances described as {:?}",
        remembered.iter().map(|i| i.state).collect::<Vec<_>>()
    );
    cleanup(h).await
}

/// Terminating twice, or terminating an unknown id, is `Ok`.
pub async fn terminate_is_idempotent(h: &Harness) -> Checked {
    let ids = ids_of(&h.provider.launch(&request(h, 1, "tti")).await?);
    h.provider.terminate(&ids).await?;
    h.provider.terminate(&ids).await.map_err(|e| Failure(format!("second terminate failed: {e}")))?;
    settles_to(h, &Query::ids(ids.clone()), &[], "after two terminates").await?;
    cleanup(h).await
}

/// Describe filters by each query field (service, deployment, token, release, ids,
/// include_terminated) and ANDs the fields that are set.
pub async fn describe_by_every_query_field(h: &Harness) -> Checked {
    same_service(h)?;
    let service = h.release.service().to_owned();
    let (d1, d2) = (deployment(h, "d1"), deployment(h, "d2"));
    let (ta, tb, tc) = (token(h, "qa"), token(h, "qb"), token(h, "qc"));
    let (r1, r2) = (h.release.id().clone(), h.next_release.id().clone());
    let a = ids_of(&h.provider.launch(&request_for(&h.release, 1, &d1, ta.clone())).await?);
    let b = ids_of(&h.provider.launch(&request_for(&h.release, 2, &d2, tb.clone())).await?);
    let c = ids_of(&h.provider.launch(&request_for(&h.next_release, 1, &d1, tc.clone())).await?);
    ensure!(a.len() == 1 && b.len() == 2 && c.len() == 1, "launches returned {a:?}, {b:?}, {c:?}");
    // One instance of b is terminated, so that the live filter and include_terminated both matter.
    let (gone, b) = (b[0].clone(), vec![b[1].clone()]);
    h.provider.terminate(std::slice::from_ref(&gone)).await?;
    settles_to(h, &Query::ids([gone.clone()]), &[], "a terminated id without include_terminated").await?;

    let all: Vec<InstanceId> = a.iter().chain(&b).chain(&c).cloned().collect();
    let union = |sets: &[&[InstanceId]]| sets.iter().flat_map(|s| s.iter().cloned()).collect::<Vec<_>>();
    let ghost = InstanceId::new(format!("{service}-no-such-instance"));
    let by_deployment = |d: &DeploymentId| Query { deployment: Some(d.clone()), ..Query::default() };
    let by_release = |r: &crate::ReleaseId| Query { release: Some(r.clone()), ..Query::default() };
    let checks: Vec<(&str, Query, Vec<InstanceId>)> = vec![
        ("service", Query::service(&service), all.clone()),
        ("another service", Query::service(format!("{service}-other")), Vec::new()),
        ("deployment d1", by_deployment(&d1), union(&[&a, &c])),
        ("deployment d2", by_deployment(&d2), b.clone()),
        ("token a", Query::token(ta.clone()), a.clone()),
        ("token b", Query::token(tb.clone()), b.clone()),
        ("token c", Query::token(tc.clone()), c.clone()),
        ("release 1", by_release(&r1), union(&[&a, &b])),
        ("release 2", by_release(&r2), c.clone()),
        ("ids (one unknown)", Query::ids(all.iter().cloned().chain([ghost])), all.clone()),
        ("service + deployment d1", Query::service(&service).with_deployment(d1.clone()), union(&[&a, &c])),
        (
            "service + deployment d1 + release 1",
            Query::service(&service).with_deployment(d1.clone()).with_release(r1.clone()),
            a.clone(),
        ),
        ("deployment d1 + release 2", by_deployment(&d1).with_release(r2.clone()), c.clone()),
        ("token b + deployment d1 (disjoint)", Query::token(tb.clone()).with_deployment(d1.clone()), Vec::new()),
        ("token a + release 2 (disjoint)", Query::token(ta.clone()).with_release(r2.clone()), Vec::new()),
        ("ids + release 1", Query::ids(all.iter().cloned()).with_release(r1.clone()), union(&[&a, &b])),
        ("ids + token c", Query::ids(all.iter().cloned()).with_token(tc.clone()), c.clone()),
        ("service + another deployment", Query::service(&service).with_deployment(deployment(h, "none")), Vec::new()),
    ];
    for (what, query, want) in &checks {
        settles_to(h, query, want, &format!("describe by {what}")).await?;
    }
    // Terminated instances are returned only when asked for, and only as long as the backend
    // remembers them: what comes back beyond the live set is the terminated one, not live.
    for (what, query) in [
        ("service + include_terminated", Query::service(&service).with_terminated()),
        ("token b + include_terminated", Query::token(tb.clone()).with_terminated()),
    ] {
        let found = h.provider.describe(&query).await?;
        let want_live: BTreeSet<&InstanceId> =
            if query.token.is_some() { b.iter().collect() } else { all.iter().collect() };
        let live: BTreeSet<&InstanceId> = found.iter().filter(|i| i.state.is_live()).map(|i| &i.id).collect();
        ensure!(live == want_live, "describe by {what}: live {live:?}, expected {want_live:?}");
        let extra: Vec<&Instance> = found.iter().filter(|i| !i.state.is_live()).collect();
        ensure!(
            extra.iter().all(|i| i.id == gone),
            "describe by {what} returned terminated instances other than {gone}: {extra:?}"
        );
    }
    let remembered = h.provider.describe(&Query::ids([gone.clone()]).with_terminated()).await?;
    ensure!(
        remembered.iter().all(|i| i.id == gone && !i.state.is_live()),
        "describe of a terminated id with include_terminated: {remembered:?}"
    );
    cleanup(h).await
}

/// The provenance a launch writes is what describe reads back.
pub async fn provenance_round_trips(h: &Harness) -> Checked {
    let req = request(h, 1, "prov");
    let ids = ids_of(&h.provider.launch(&req).await?);
    settles_to(h, &Query::ids(ids.clone()), &ids, "describe after launch").await?;
    let described = h.provider.describe(&Query::ids(ids)).await?;
    let got = described[0].provenance.as_deref();
    ensure!(got == Some(&req.provenance), "provenance read back as {got:?}, written as {:?}", req.provenance);
    for (key, value) in &h.release.baseline().spec.labels {
        ensure!(
            described[0].labels.get(key) == Some(value),
            "baseline label {key}={value} missing from {:?}",
            described[0].labels
        );
    }
    cleanup(h).await
}

/// A launch with a token that already launched adopts instead of duplicating.
pub async fn reused_token_adopts(h: &Harness) -> Checked {
    let req = request(h, 2, "adopt");
    let (first, adopted) = h.provider.ensure_launched(&req).await?;
    ensure!(first.len() == 2 && adopted == 0, "first launch: {} instances, {adopted} adopted", first.len());
    settles_to(h, &Query::token(req.token.clone()), &ids_of(&first), "describe by token").await?;
    let (second, adopted) = h.provider.ensure_launched(&req).await?;
    ensure!(adopted == 2, "retried launch adopted {adopted} of 2");
    let (a, b) = (sorted(ids_of(&first)), sorted(ids_of(&second)));
    ensure!(a == b, "retried launch returned {b:?}, first launch {a:?}");
    settles_to(h, &Query::service(h.release.service()), &a, "no duplicates after retry").await?;
    cleanup(h).await
}

/// [`Capabilities::honours_token`](crate::Capabilities::honours_token) is a promise the engine
/// acts on: it skips the describe-by-token before a fresh token's first launch. So a provider
/// that declares it must answer a second [`Provider::launch`] of the same request (a retry after
/// a lost answer) with the instances of the first, never new ones. A provider that does not
/// declare it relies on the look-up: [`ProviderExt::ensure_launched`] after a plain launch
/// adopts what that launch made.
pub async fn launch_token_idempotency(h: &Harness) -> Checked {
    let req = request(h, 2, "idem");
    let first = sorted(ids_of(&h.provider.launch(&req).await?));
    ensure!(first.len() == 2, "launch of 2 returned {first:?}");
    settles_to(h, &Query::token(req.token.clone()), &first, "describe by token after the first launch").await?;
    let second = if h.provider.capabilities().honours_token {
        sorted(ids_of(&h.provider.launch(&req).await?))
    } else {
        let (again, adopted) = h.provider.ensure_launched(&req).await?;
        ensure!(adopted == 2, "ensure_launched after a launch adopted {adopted} of 2");
        sorted(ids_of(&again))
    };
    ensure!(
        second == first,
        "the same launch again returned {second:?}, the first {first:?} (honours_token = {})",
        h.provider.capabilities().honours_token
    );
    settles_to(h, &Query::service(h.release.service()), &first, "no duplicates after the same launch again").await?;
    cleanup(h).await
}

/// Attach adds to the serving set, detach removes, both are idempotent.
pub async fn attach_detach_serving(h: &Harness) -> Checked {
    let running = launch_running(h, 2, "traffic").await?;
    let ids = ids_of(&running);
    h.traffic.attach(&running).await?;
    h.traffic.attach(&running).await.map_err(|e| Failure(format!("second attach failed: {e}")))?;
    serves(h, &ids, &[], "after attach").await?;
    h.traffic.detach(&ids[..1]).await?;
    h.traffic.detach(&ids[..1]).await.map_err(|e| Failure(format!("second detach failed: {e}")))?;
    serves(h, &ids[1..], &ids[..1], "after detaching one").await?;
    cleanup(h).await?;
    serves(h, &[], &ids, "after terminating them").await
}

/// Detach returns once the instances have drained: when it returns they no longer serve
/// (no polling), the others still do, and the detached instances are still live (detach never
/// terminates).
pub async fn detach_drains(h: &Harness) -> Checked {
    let running = launch_running(h, 3, "drain").await?;
    let ids = ids_of(&running);
    h.traffic.attach(&running).await?;
    serves(h, &ids, &[], "after attach").await?;
    h.traffic.detach(&ids[..2]).await?;
    serves(h, &ids[2..], &ids[..2], "as soon as detach returned").await?;
    let live = live_ids(h, &Query::ids(ids.clone())).await?;
    ensure!(live == sorted(ids.clone()), "detach terminated instances: live {live:?} of {ids:?}");
    cleanup(h).await
}

/// `switch` moves traffic and returns only once the detached set has drained, on every
/// backend: right after it returns the attached set serves and the detached set does not. The
/// same switch again is `Ok` and changes nothing; a switch back (a rollback) restores the first
/// set.
pub async fn switch_with_drain(h: &Harness) -> Checked {
    let blue = launch_running(h, 2, "blue").await?;
    let green = launch_running(h, 2, "green").await?;
    let (blue_ids, green_ids) = (ids_of(&blue), ids_of(&green));
    h.traffic.attach(&blue).await?;
    serves(h, &blue_ids, &green_ids, "before the switch").await?;
    h.traffic.switch(&green, &blue_ids).await?;
    serves(h, &green_ids, &blue_ids, "as soon as switch returned").await?;
    h.traffic.switch(&green, &blue_ids).await.map_err(|e| Failure(format!("the same switch again failed: {e}")))?;
    serves(h, &green_ids, &blue_ids, "after the same switch again").await?;
    h.traffic.switch(&blue, &green_ids).await?;
    serves(h, &blue_ids, &green_ids, "after switching back").await?;
    let live = live_ids(h, &Query::service(h.release.service())).await?;
    ensure!(
        live == sorted(blue_ids.iter().chain(&green_ids).cloned().collect()),
        "switch changed the fleet: live {live:?}"
    );
    cleanup(h).await
}

/// A query with `include_unmanaged` also returns instances launched outside immut, whatever its
/// other filters say, besides the managed instances that match; it never fails for them. A
/// query without it never returns them.
pub async fn include_unmanaged(h: &Harness) -> Checked {
    let service = h.release.service().to_owned();
    let managed = ids_of(&launch_running(h, 1, "managed").await?);
    let hand = (h.launch_by_hand)().await?;
    let both = vec![managed[0].clone(), hand.clone()];
    settles_to(h, &Query::ids(both.clone()).with_unmanaged(), &both, "describe by ids with include_unmanaged").await?;

    let found = h.provider.describe(&Query::service(&service).with_unmanaged()).await?;
    let ids: BTreeSet<&InstanceId> = found.iter().map(|i| &i.id).collect();
    ensure!(ids.contains(&managed[0]) && ids.contains(&hand), "service + include_unmanaged returned {ids:?}");
    let by_hand = found.iter().find(|i| i.id == hand).expect("checked above");
    ensure!(by_hand.provenance.is_none(), "the hand-launched instance has provenance: {by_hand:?}");
    let foreign: Vec<&Instance> =
        found.iter().filter(|i| i.provenance.as_ref().is_some_and(|p| p.service != service)).collect();
    ensure!(foreign.is_empty(), "service + include_unmanaged returned another service's instances: {foreign:?}");

    let other_deployment = Query::service(&service).with_deployment(deployment(h, "none")).with_unmanaged();
    let other: Vec<InstanceId> = h.provider.describe(&other_deployment).await?.into_iter().map(|i| i.id).collect();
    ensure!(
        other.contains(&hand) && !other.contains(&managed[0]),
        "another deployment + include_unmanaged must return the hand-launched instance only, returned {other:?}"
    );
    let everything: Vec<InstanceId> =
        h.provider.describe(&Query::default().with_unmanaged()).await?.into_iter().map(|i| i.id).collect();
    ensure!(
        everything.contains(&hand) && everything.contains(&managed[0]),
        "an empty query with include_unmanaged returned {everything:?}"
    );
    settles_to(h, &Query::service(&service), &managed, "describe by service without include_unmanaged").await?;

    h.provider.terminate(std::slice::from_ref(&hand)).await?;
    settles_to(h, &Query::ids([hand]).with_unmanaged(), &[], "the hand-launched instance after terminate").await?;
    cleanup(h).await
}

/// Adoption through [`Adopt`]: a hand-launched instance takes the given provenance (release
/// zero) and signature and is described as managed from then on; adopting an unknown id is
/// `NotFound`. Without `Adopt`, the hand-launched instance stays out of every managed query.
pub async fn adoption(h: &Harness) -> Checked {
    let service = h.release.service().to_owned();
    let managed = ids_of(&launch_running(h, 1, "adopt-seed").await?);
    let hand = (h.launch_by_hand)().await?;
    settles_to(
        h,
        &Query::ids([hand.clone()]).with_unmanaged(),
        std::slice::from_ref(&hand),
        "the hand-launched instance",
    )
    .await?;
    let Some(adopt) = &h.adopt else {
        settles_to(h, &Query::service(&service), &managed, "describe by service, without Adopt").await?;
        let seen = h.provider.describe(&Query::ids([hand.clone()]).with_unmanaged()).await?;
        ensure!(seen.iter().all(|i| i.provenance.is_none()), "a hand-launched instance gained provenance: {seen:?}");
        h.provider.terminate(std::slice::from_ref(&hand)).await?;
        settles_to(h, &Query::ids([hand]).with_unmanaged(), &[], "the hand-launched instance after terminate").await?;
        return cleanup(h).await;
    };
    let provenance = Provenance::adopted(&service, &deployment(h, "adoption"));
    let key = signing_key();
    let adopted = adopt.adopt(std::slice::from_ref(&hand), &provenance, Some(&key.sign(&provenance))).await?;
    ensure!(adopted.len() == 1, "adopting one instance returned {adopted:?}");
    ensure!(
        adopted[0].provenance.as_deref() == Some(&provenance),
        "adopt returned provenance {:?}, expected {provenance:?}",
        adopted[0].provenance
    );
    // The id may change on adoption (the local provider names its instances by service).
    let id = adopted[0].id.clone();
    let r0 = Query::service(&service).with_release(provenance.release.clone());
    settles_to(h, &r0, std::slice::from_ref(&id), "describe by service + release zero after adopt").await?;
    let all = sorted(vec![managed[0].clone(), id.clone()]);
    settles_to(h, &Query::service(&service), &all, "describe by service after adopt").await?;
    let described = h.provider.describe(&Query::ids([id.clone()])).await?;
    ensure!(described.len() == 1, "describe of the adopted instance returned {described:?}");
    let charset = h.provider.capabilities().label_charset;
    ensure!(
        described[0].provenance.as_deref() == Some(&provenance)
            && key.verify(&provenance, &described[0].labels, charset),
        "the adopted instance's labels do not carry the signed provenance: {:?}",
        described[0].labels
    );
    let ghost = InstanceId::new(format!("{service}-no-such-instance"));
    match adopt.adopt(std::slice::from_ref(&ghost), &provenance, None).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => return Err(Failure(format!("adopting an unknown id gave {other:?}, expected NotFound"))),
    }
    cleanup(h).await?;
    settles_to(h, &Query::ids([hand, id]).with_unmanaged(), &[], "the adopted instance after cleanup").await
}

/// The complete label set is checked against the provider's limits: a signed request whose
/// longest key and value are exactly at `max_label_key_len` and `max_label_value_len` launches
/// and reads back verbatim (the signature verifies); one character more in either, or one label
/// over `max_labels`, is `InvalidInput` from [`ProviderExt::ensure_launched`] and launches
/// nothing.
pub async fn labels_at_the_limits(h: &Harness) -> Checked {
    let caps = h.provider.capabilities();
    let service = h.release.service().to_owned();
    let key = signing_key();
    let with_labels = |extra: &[(String, String)]| -> Result<Release, Failure> {
        let base = h.release.baseline();
        let mut spec = base.spec.clone();
        spec.labels.extend(extra.iter().cloned());
        Release::new(&service, h.release.artifact(), &BaselineSpec::new(&base.name, base.version.clone(), spec))
            .map_err(|e| Failure(format!("harness release with extra labels: {e}")))
    };
    // Lowercase letters are valid in keys and values on every charset, and encode as themselves.
    let long_key = |len: usize| format!("k{}", "x".repeat(len.saturating_sub(1)));
    let long_value = |len: usize| "v".repeat(len);
    let d = deployment(h, "labels");

    let at_limit = with_labels(&[(long_key(caps.max_label_key_len), long_value(caps.max_label_value_len))])?;
    let req = request_for(&at_limit, 1, &d, token(h, "limit")).signed(&key);
    let longest = req.labels(caps.label_charset).values().map(String::len).max().unwrap_or(0);
    ensure!(longest == caps.max_label_value_len, "harness: the longest value is {longest} characters");
    let (launched, _) = h.provider.ensure_launched(&req).await?;
    let ids = ids_of(&launched);
    settles_to(h, &Query::ids(ids.clone()), &ids, "describe after a launch at the label limits").await?;
    let described = h.provider.describe(&Query::ids(ids.clone())).await?;
    ensure!(described.len() == 1, "describe returned {described:?}");
    let written = req.labels(caps.label_charset);
    for (k, v) in &written {
        ensure!(
            described[0].labels.get(k) == Some(v),
            "label {k} ({} characters) read back as {:?}",
            v.len(),
            described[0].labels.get(k).map(|v| v.len())
        );
    }
    ensure!(
        described[0].provenance.as_deref() == Some(&req.provenance)
            && key.verify(&req.provenance, &described[0].labels, caps.label_charset),
        "the signed provenance did not round-trip at the label limits"
    );

    let plain = request(h, 1, "count").signed(&key).labels(caps.label_charset).len();
    ensure!(plain <= caps.max_labels, "harness: the release alone carries {plain} labels, over max_labels");
    let many: Vec<(String, String)> =
        (0..caps.max_labels + 1 - plain).map(|i| (format!("extra-{i}"), "x".into())).collect();
    let rejected = [
        (
            "a value one character over max_label_value_len",
            with_labels(&[(long_key(8), long_value(caps.max_label_value_len + 1))])?,
        ),
        (
            "a key one character over max_label_key_len",
            with_labels(&[(long_key(caps.max_label_key_len + 1), long_value(8))])?,
        ),
        ("one label over max_labels", with_labels(&many)?),
    ];
    for (i, (what, release)) in rejected.iter().enumerate() {
        let req = request_for(release, 1, &d, token(h, &format!("over-{i}"))).signed(&key);
        match h.provider.ensure_launched(&req).await {
            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
            other => return Err(Failure(format!("a launch with {what} gave {other:?}, expected InvalidInput"))),
        }
    }
    settles_to(h, &Query::service(&service), &ids, "after the refused launches, only the one at the limits").await?;
    cleanup(h).await
}

/// [`ProviderExt::terminate_all`] terminates more ids than one terminate call takes
/// (`max_terminate_batch` + 1, launched in batches of `max_launch_batch`): all of them go.
pub async fn terminate_all_batches(h: &Harness) -> Checked {
    let caps = h.provider.capabilities();
    let total = caps.max_terminate_batch + 1;
    let mut ids = Vec::with_capacity(total);
    let mut wave = 0;
    while ids.len() < total {
        let count = (total - ids.len()).min(caps.max_launch_batch);
        let launched = h.provider.launch(&request(h, count, &format!("bulk-{wave}"))).await?;
        ensure!(launched.len() == count, "launch of {count} returned {} instances", launched.len());
        ids.extend(ids_of(&launched));
        wave += 1;
    }
    let distinct: BTreeSet<&InstanceId> = ids.iter().collect();
    ensure!(distinct.len() == total, "{total} launches returned {} distinct ids", distinct.len());
    settles_to(h, &Query::service(h.release.service()), &ids, "all launched instances").await?;
    h.provider.terminate_all(&ids).await?;
    settles_to(h, &Query::service(h.release.service()), &[], "after terminate_all").await?;
    let remembered = h.provider.describe(&Query::ids(ids).with_terminated()).await?;
    ensure!(
        remembered.iter().all(|i| !i.state.is_live()),
        "instances still live after terminate_all: {:?}",
        remembered.iter().filter(|i| i.state.is_live()).map(|i| &i.id).collect::<Vec<_>>()
    );
    Ok(())
}

/// Runs `deployment` while polling the serving set; returns its outcome and every serving set
/// seen (a failed read is kept as its error).
async fn watching(
    h: &Harness,
    deployment: impl Future<Output = crate::Outcome>,
) -> (crate::Outcome, Vec<Result<Vec<InstanceId>, String>>) {
    let done = AtomicBool::new(false);
    let run = async {
        let outcome = deployment.await;
        done.store(true, Ordering::SeqCst);
        outcome
    };
    let watch = async {
        let mut seen = Vec::new();
        while !done.load(Ordering::SeqCst) {
            seen.push(h.traffic.serving().await.map(sorted).map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    tokio::join!(run, watch)
}

/// One blue/green deployment end to end through the [`Deployer`], judged by describe and the
/// serving set: 1.0.0 deploys; a release that never passes health rolls back, with the old
/// release serving at every moment and nothing of the failed release left; then a good release
/// succeeds without the service going dark, and only it remains.
pub async fn blue_green_deployment(h: &Harness) -> Checked {
    same_service(h)?;
    const DESIRED: usize = 2;
    let service = h.release.service().to_owned();
    let deployer = |deadline: Duration| {
        Deployer::builder()
            .provider_arc(h.provider.clone())
            .traffic_arc(h.traffic.clone())
            .health(AllOf(vec![h.health.clone()]))
            .strategy(BlueGreen::new())
            .desired(DESIRED)
            .poll_interval(Duration::from_millis(100))
            // A deadline must hold the balancer's drain (build() refuses one that cannot).
            .progress_deadline(deadline.max(h.traffic.drain_timeout().map_or(Duration::ZERO, |d| d + d / 2)))
            .retry(RetryPolicy {
                max_retries: 10,
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(500),
            })
            .build()
            .map_err(|e| Failure(format!("the deployer does not build: {e}")))
    };
    let first = deployer(h.settle)?.deploy(h.release.clone()).run().await;
    ensure!(first.succeeded(), "the first deployment: {}", first.summary());
    let v1 = live_ids(h, &Query::service(&service).with_release(h.release.id().clone())).await?;
    ensure!(v1.len() == DESIRED, "the first deployment left {v1:?}, expected {DESIRED} instances");
    settles_to(h, &Query::service(&service), &v1, "after the first deployment").await?;
    let serving = sorted(h.traffic.serving().await?);
    ensure!(serving == v1, "after the first deployment serving is {serving:?}, expected {v1:?}");

    // The failing release gets a short deadline: it never becomes healthy, so waiting longer
    // proves nothing.
    let failing = deployer(h.settle.min(Duration::from_secs(3)))?;
    let run = failing.deploy(h.unhealthy_release.clone()).with_previous(h.release.clone()).run();
    let (outcome, seen) = watching(h, run).await;
    ensure!(
        matches!(outcome.phase, Phase::RolledBack { .. }),
        "a release that never passes health must roll back: {}",
        outcome.summary()
    );
    ensure!(!seen.is_empty(), "the serving set was never read during the rollback");
    for (i, observed) in seen.iter().enumerate() {
        let observed = observed.as_ref().map_err(|e| Failure(format!("reading the serving set failed: {e}")))?;
        ensure!(
            v1.iter().all(|id| observed.contains(id)),
            "during the failed deployment (read {i}) the old release did not serve: serving {observed:?}, old {v1:?}"
        );
    }
    settles_to(h, &Query::service(&service), &v1, "after the rollback (no orphan of the failed release)").await?;
    let serving = sorted(h.traffic.serving().await?);
    ensure!(serving == v1, "after the rollback serving is {serving:?}, expected {v1:?}");

    let run = deployer(h.settle)?.deploy(h.next_release.clone()).with_previous(h.release.clone()).run();
    let (outcome, seen) = watching(h, run).await;
    ensure!(outcome.succeeded(), "the good release: {}", outcome.summary());
    let v2 = live_ids(h, &Query::service(&service).with_release(h.next_release.id().clone())).await?;
    ensure!(v2.len() == DESIRED, "the good release left {v2:?}, expected {DESIRED} instances");
    settles_to(h, &Query::service(&service), &v2, "after the good release (the old one terminated)").await?;
    let serving = sorted(h.traffic.serving().await?);
    ensure!(serving == v2, "after the good release serving is {serving:?}, expected {v2:?}");
    for (i, observed) in seen.iter().enumerate() {
        let observed = observed.as_ref().map_err(|e| Failure(format!("reading the serving set failed: {e}")))?;
        ensure!(!observed.is_empty(), "the service went dark during the deployment (read {i})");
        ensure!(
            observed.iter().all(|id| v1.contains(id) || v2.contains(id)),
            "read {i} of the serving set holds an instance of neither release: {observed:?}"
        );
    }
    cleanup(h).await
}

/// Unknown ids: describe omits them, terminate accepts them, attach refuses them with NotFound.
pub async fn unknown_ids(h: &Harness) -> Checked {
    let ghost = InstanceId::new(format!("{}-no-such-instance", h.release.service()));
    let found = h.provider.describe(&Query::ids([ghost.clone()])).await?;
    ensure!(found.is_empty(), "describe of an unknown id returned {found:?}");
    h.provider
        .terminate(std::slice::from_ref(&ghost))
        .await
        .map_err(|e| Failure(format!("terminate of an unknown id failed: {e}")))?;
    let fake = Instance {
        id: ghost.clone(),
        state: InstanceState::Running,
        provenance: None,
        labels: Arc::default(),
        observed: Arc::new(Observed::default()),
        address: Some("127.0.0.1:9".into()),
    };
    match h.traffic.attach(&[fake]).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => return Err(Failure(format!("attach of an unknown instance gave {other:?}, expected NotFound"))),
    }
    h.traffic.detach(&[ghost]).await.map_err(|e| Failure(format!("detach of an unknown id failed: {e}")))?;
    Ok(())
}

/// Bad requests fail with InvalidInput and launch nothing.
pub async fn bad_requests_are_rejected(h: &Harness) -> Checked {
    let caps = h.provider.capabilities();
    let mut cases: Vec<(String, LaunchRequest)> = vec![
        ("a count of 0".into(), request(h, 0, "bad0")),
        (
            format!("a count over the batch limit of {}", caps.max_launch_batch),
            request(h, caps.max_launch_batch + 1, "bad1"),
        ),
    ];
    for (what, release) in &h.bad_releases {
        let deployment = DeploymentId::new("conformance");
        cases.push((
            what.clone(),
            LaunchRequest::new(Arc::new(release.clone()), 1, &deployment, LaunchToken::new("bad-release")),
        ));
    }
    for (what, req) in cases {
        match h.provider.launch(&req).await {
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                ensure!(e.message().len() > 10, "the error for {what} says too little: {e}");
            }
            other => return Err(Failure(format!("launch with {what} gave {other:?}, expected InvalidInput"))),
        }
        let services = [req.release.service().to_owned(), h.release.service().to_owned()];
        for service in services {
            let leaked = live_ids(h, &Query::service(service)).await?;
            ensure!(leaked.is_empty(), "launch with {what} was refused but left {leaked:?}");
        }
    }
    Ok(())
}

/// Generates one `#[tokio::test]` per conformance case, each calling `$harness().await` for a
/// fresh [`Harness`]. The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features as a dev-dependency.
///
/// The list of cases below is the only one: [`CASES`](crate::conformance::CASES) and
/// [`run`](crate::conformance::run) are generated from it too (the `@`-arms are internal).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:path) => {
        $crate::conformance_tests! { @each [@cases $harness] }
    };
    (@each [$($then:tt)*]) => {
        $crate::conformance_tests! { $($then)*;
            launch_describe_terminate, terminate_is_idempotent, describe_by_every_query_field,
            provenance_round_trips, reused_token_adopts, launch_token_idempotency,
            attach_detach_serving, detach_drains, switch_with_drain, include_unmanaged, adoption,
            labels_at_the_limits, terminate_all_batches, unknown_ids, bad_requests_are_rejected,
            blue_green_deployment
        }
    };
    (@names; $($case:ident),*) => {
        &[$(stringify!($case)),*]
    };
    (@run $name:ident $harness:ident; $($case:ident),*) => {
        match $name {
            $(stringify!($case) => $crate::conformance::$case($harness).await,)*
            other => Err($crate::conformance::Failure(format!(
                "no conformance case is named {other:?}; the cases are {:?}",
                $crate::conformance::CASES
            ))),
        }
    };
    (@cases $harness:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness().await;
                if let Err(failure) = $crate::conformance::$case(&harness).await {
                    panic!("conformance case {} failed on provider {}: {failure}", stringify!($case), harness.provider.name());
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_distinct_and_each_is_run_by_name() {
        let distinct: BTreeSet<&str> = CASES.iter().copied().collect();
        assert_eq!(distinct.len(), CASES.len(), "{CASES:?}");
        assert!(CASES.contains(&"blue_green_deployment") && CASES.contains(&"switch_with_drain"));
    }

    #[tokio::test]
    async fn run_finds_a_case_by_name_and_an_unknown_name_is_a_failure() {
        let sim = crate::sim::SimProvider::builder().build().unwrap();
        let release = |v: u64| {
            Release::new(
                "svc",
                &crate::ArtifactSpec::new("app", semver::Version::new(v, 0, 0), "image"),
                &BaselineSpec::new("base", semver::Version::new(1, 0, 0), crate::LaunchSpec::default()),
            )
            .unwrap()
        };
        let hand = sim.clone();
        let harness = Harness {
            provider: Arc::new(sim.clone()),
            traffic: Arc::new(sim.traffic()),
            health: Arc::new(sim.health()),
            release: release(1),
            next_release: release(2),
            unhealthy_release: release(3),
            bad_releases: Vec::new(),
            launch_by_hand: hand_launch(move || {
                let id = hand.launch_unmanaged(1, "by-hand", false)[0].id.clone();
                async move { Ok(id) }
            }),
            adopt: Some(Arc::new(sim)),
            settle: Duration::from_secs(1),
            keep_alive: Vec::new(),
        };
        let failure = run("no_such_case", &harness).await.unwrap_err();
        assert!(failure.0.contains("no_such_case") && failure.0.contains("unknown_ids"), "{failure}");
        run("unknown_ids", &harness).await.unwrap();
    }
}
