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
//! A real difference between backends is a [`Capabilities`](crate::Capabilities) field or a
//! harness parameter, never a skipped case.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::model::{DeploymentId, Instance, InstanceId, InstanceState, LaunchToken, Observed, Release};
use crate::provider::{LaunchRequest, Provider, ProviderExt, Query};
use crate::traffic::Traffic;

/// What a provider gives the suite.
#[derive(Clone)]
pub struct Harness {
    /// The provider under test.
    pub provider: Arc<dyn Provider>,
    /// Its traffic side.
    pub traffic: Arc<dyn Traffic>,
    /// A valid release for this provider. Give each test its own service name so cases can
    /// run in parallel.
    pub release: Release,
    /// Releases this provider must refuse with `InvalidInput` before launching anything, with a
    /// description of each (an unknown image, a digest mismatch, ...).
    pub bad_releases: Vec<(String, Release)>,
    /// How long the backend may take to show a change (launch visible, termination visible).
    pub settle: Duration,
    /// Held for the duration of the case: a lock on a shared emulator, a server to keep up.
    pub keep_alive: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("provider", &self.provider)
            .field("release", &self.release)
            .field("bad_releases", &self.bad_releases.len())
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

type Outcome = Result<(), Failure>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($msg)+)));
        }
    };
}

/// Every case, by name, for providers that run them some other way than the macro.
pub const CASES: &[&str] = &[
    "launch_describe_terminate",
    "terminate_is_idempotent",
    "describe_by_label_and_token",
    "provenance_round_trips",
    "reused_token_adopts",
    "attach_detach_serving",
    "unknown_ids",
    "bad_requests_are_rejected",
];

fn request(h: &Harness, count: usize, token: &str) -> LaunchRequest {
    let deployment = DeploymentId::new("conformance");
    LaunchRequest::new(
        Arc::new(h.release.clone()),
        count,
        &deployment,
        LaunchToken::new(format!("{}-{token}", h.release.service())),
    )
}

async fn live_ids(h: &Harness, query: &Query) -> Result<Vec<InstanceId>, Failure> {
    let mut ids: Vec<InstanceId> = h.provider.describe(query).await?.into_iter().map(|i| i.id).collect();
    ids.sort();
    Ok(ids)
}

/// Polls `query` until its live ids are `want`, within the harness's settle time.
async fn settles_to(h: &Harness, query: &Query, want: &[InstanceId], what: &str) -> Outcome {
    let mut want = want.to_vec();
    want.sort();
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

async fn cleanup(h: &Harness) -> Outcome {
    let ids = live_ids(h, &Query::service(h.release.service())).await?;
    h.traffic.detach(&ids).await?;
    h.provider.terminate_all(&ids).await?;
    settles_to(h, &Query::service(h.release.service()), &[], "cleanup").await
}

fn ids_of(instances: &[Instance]) -> Vec<InstanceId> {
    instances.iter().map(|i| i.id.clone()).collect()
}

/// Launch two, see them in describe, terminate them, see them go.
pub async fn launch_describe_terminate(h: &Harness) -> Outcome {
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
pub async fn terminate_is_idempotent(h: &Harness) -> Outcome {
    let ids = ids_of(&h.provider.launch(&request(h, 1, "tti")).await?);
    h.provider.terminate(&ids).await?;
    h.provider.terminate(&ids).await.map_err(|e| Failure(format!("second terminate failed: {e}")))?;
    settles_to(h, &Query::ids(ids.clone()), &[], "after two terminates").await?;
    cleanup(h).await
}

/// Describe filters by service, deployment, release and token.
pub async fn describe_by_label_and_token(h: &Harness) -> Outcome {
    let a = ids_of(&h.provider.launch(&request(h, 1, "a")).await?);
    let b = ids_of(&h.provider.launch(&request(h, 2, "b")).await?);
    let all: Vec<InstanceId> = a.iter().chain(&b).cloned().collect();
    let service = Query::service(h.release.service());
    settles_to(h, &service, &all, "describe by service").await?;
    settles_to(h, &Query::token(request(h, 1, "a").token), &a, "describe by token a").await?;
    settles_to(h, &Query::token(request(h, 1, "b").token), &b, "describe by token b").await?;
    let by_release =
        service.clone().with_release(h.release.id().clone()).with_deployment(DeploymentId::new("conformance"));
    settles_to(h, &by_release, &all, "describe by service + release + deployment").await?;
    let other = Query::service(h.release.service()).with_deployment(DeploymentId::new("someone-else"));
    settles_to(h, &other, &[], "describe by another deployment").await?;
    cleanup(h).await
}

/// The provenance a launch writes is what describe reads back.
pub async fn provenance_round_trips(h: &Harness) -> Outcome {
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
pub async fn reused_token_adopts(h: &Harness) -> Outcome {
    let req = request(h, 2, "adopt");
    let (first, adopted) = h.provider.ensure_launched(&req).await?;
    ensure!(first.len() == 2 && adopted == 0, "first launch: {} instances, {adopted} adopted", first.len());
    settles_to(h, &Query::token(req.token.clone()), &ids_of(&first), "describe by token").await?;
    let (second, adopted) = h.provider.ensure_launched(&req).await?;
    ensure!(adopted == 2, "retried launch adopted {adopted} of 2");
    let (mut a, mut b) = (ids_of(&first), ids_of(&second));
    a.sort();
    b.sort();
    ensure!(a == b, "retried launch returned {b:?}, first launch {a:?}");
    settles_to(h, &Query::service(h.release.service()), &a, "no duplicates after retry").await?;
    cleanup(h).await
}

/// Attach adds to the serving set, detach removes, both are idempotent.
pub async fn attach_detach_serving(h: &Harness) -> Outcome {
    let launched = h.provider.launch(&request(h, 2, "traffic")).await?;
    let ids = ids_of(&launched);
    settles_to(h, &Query::ids(ids.clone()), &ids, "describe after launch").await?;
    let mut running = Vec::new();
    let deadline = tokio::time::Instant::now() + h.settle;
    while running.len() < 2 {
        running = h.provider.describe(&Query::ids(ids.clone())).await?;
        running.retain(|i| i.state == InstanceState::Running);
        ensure!(tokio::time::Instant::now() < deadline, "instances not running after {:?}", h.settle);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.traffic.attach(&running).await?;
    h.traffic.attach(&running).await.map_err(|e| Failure(format!("second attach failed: {e}")))?;
    let serving = h.traffic.serving().await?;
    ensure!(ids.iter().all(|id| serving.contains(id)), "serving {serving:?} lacks {ids:?}");
    h.traffic.detach(&ids[..1]).await?;
    h.traffic.detach(&ids[..1]).await.map_err(|e| Failure(format!("second detach failed: {e}")))?;
    let serving = h.traffic.serving().await?;
    ensure!(!serving.contains(&ids[0]) && serving.contains(&ids[1]), "after detaching {}: serving {serving:?}", ids[0]);
    cleanup(h).await?;
    let serving = h.traffic.serving().await?;
    ensure!(ids.iter().all(|id| !serving.contains(id)), "terminated instances still serve: {serving:?}");
    Ok(())
}

/// Unknown ids: describe omits them, terminate accepts them, attach refuses them with NotFound.
pub async fn unknown_ids(h: &Harness) -> Outcome {
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
pub async fn bad_requests_are_rejected(h: &Harness) -> Outcome {
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
#[macro_export]
macro_rules! conformance_tests {
    ($harness:path) => {
        $crate::conformance_tests!(@cases $harness;
            launch_describe_terminate, terminate_is_idempotent, describe_by_label_and_token,
            provenance_round_trips, reused_token_adopts, attach_detach_serving, unknown_ids,
            bad_requests_are_rejected);
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
