//! Rollback readiness on real processes: the previous release's executable deleted during a
//! deployment stops it before any old process is terminated; a later run that accepts the
//! loss finishes the clean-up.

mod support;

use std::time::Duration;

use immut_core::engine::{Event, Phase};
use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::{BaselineSpec, BlueGreen, Deployer, LaunchSpec, Provider, ProviderExt, Query, Release, Traffic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_executable_deleted_midway_keeps_the_old_processes() {
    let (provider, balancer) = support::local("readiness", "rd").await;
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    // 1.0.0 runs from a copy of the sample that the test can delete; 2.0.0 from the original.
    let copy = dir.join("sample-1.0.0");
    std::fs::copy(support::sample_path(), &copy).unwrap();
    let base = BaselineSpec::new("sample-base", Version::new(1, 0, 0), LaunchSpec::default());
    let v1 =
        Release::new("rd", &immut_local::artifact("sample", Version::new(1, 0, 0), &copy).unwrap(), &base).unwrap();
    let v2 = support::release("rd", Version::new(2, 0, 0), LaunchSpec::default());
    let deployer = |accept: bool| {
        Deployer::builder()
            .provider(provider.clone())
            .traffic(balancer.clone())
            .health(HttpProbe::new("/healthz"))
            .strategy(BlueGreen::new().bake(Duration::from_millis(300)))
            .desired(2)
            .min_ready(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100))
            .progress_deadline(Duration::from_secs(20))
            .accept_no_way_back(accept)
            .build()
            .unwrap()
    };
    assert!(deployer(false).deploy(v1.clone()).run().await.succeeded());
    assert!(provider.readiness(&v1).await.unwrap() == immut_core::Readiness::ready());
    let old: Vec<_> = provider.describe(&Query::service("rd")).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(old.len(), 2);

    let mut deleted = false;
    let outcome = deployer(false)
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .run_with(|e| {
            if matches!(e, Event::Switched { .. }) && !deleted {
                std::fs::remove_file(&copy).unwrap();
                deleted = true;
            }
        })
        .await;
    let Phase::NoWayBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("no executable at") && reason.contains("sample-1.0.0"), "{reason}");
    let live = provider.describe(&Query::service("rd")).await.unwrap();
    for id in &old {
        let i = live.iter().find(|i| &i.id == id).expect("the old process is still there");
        assert!(i.state.is_live(), "{id} is {:?}", i.state);
    }
    let serving = balancer.serving().await.unwrap();
    let new: Vec<_> = live.iter().filter(|i| i.release() == Some(v2.id())).map(|i| i.id.clone()).collect();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|id| serving.contains(id)) && old.iter().all(|id| !serving.contains(id)), "{serving:?}");

    // A copy with other content is no way back either: its digest differs.
    std::fs::write(&copy, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let changed = provider.readiness(&v1).await.unwrap();
    assert!(changed.blocking.as_deref().is_some_and(|b| b.contains("artifact.digest")), "{changed:?}");

    let outcome = deployer(true).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let live = provider.describe(&Query::service("rd")).await.unwrap();
    assert!(live.iter().all(|i| i.release() == Some(v2.id())) && live.len() == 2, "{live:?}");
    assert!(support::processes_from(&dir).keys().all(|id| !old.iter().any(|o| o.as_str() == id)));

    let ids: Vec<_> = live.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    balancer.stop().await.unwrap();
}
