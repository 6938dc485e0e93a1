//! Analysis on real processes: a canary that fails 5 % of its requests (its baseline's
//! `SAMPLE_ERROR_SHARE`) is rolled back by the direct scrape of its own `/metrics` under load
//! through the balancer, and a good release is promoted.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use immut_core::analysis::{Analysis, AnalysisGate, Measurement, MeasurementPhase, Metric, ScrapeProvider, Threshold};
use immut_core::engine::{Event, Outcome, Phase};
use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::{Canary, Count, Deployer, LaunchSpec, Provider, ProviderExt, Query, Release, Traffic};
use immut_local::{LocalBalancer, LocalProvider};

fn analysed(provider: &LocalProvider, balancer: &LocalBalancer) -> Deployer {
    let metric = Metric::new("error-ratio", Duration::from_millis(800), 3).success(Threshold::below(0.01));
    let gate = AnalysisGate::new(Analysis::new([metric])).provider("error-ratio", ScrapeProvider::new());
    Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(Canary::new([Count::Count(1)]))
        .gate(gate)
        .desired(3)
        .min_ready(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn measurements(events: &[Event]) -> Vec<Measurement> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some(measurement.clone()),
            _ => None,
        })
        .collect()
}

/// Deploys `release` over `previous` with [`analysed`]; prints every measurement taken, for the
/// log of a failure.
async fn deploy_analysed(
    provider: &LocalProvider,
    balancer: &LocalBalancer,
    release: &Release,
    previous: &Release,
) -> (Outcome, Vec<Event>, Vec<Measurement>) {
    let mut events = Vec::new();
    let outcome = analysed(provider, balancer)
        .deploy(release.clone())
        .with_previous(previous.clone())
        .run_with(|e| events.push(e.clone()))
        .await;
    let taken = measurements(&events);
    for m in &taken {
        println!("measured {} {} #{}: {} {:?} ({})", m.gate, m.metric, m.index, m.phase, m.value, m.message);
    }
    (outcome, events, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_five_percent_is_rolled_back_by_its_metrics_and_a_good_one_promoted() {
    let (provider, balancer) = support::local("analysis", "an").await;
    let _stop = support::stop_on_drop(provider.state_dir());
    let v1 = support::release("an", Version::new(1, 0, 0), LaunchSpec::default());
    let failing = LaunchSpec {
        env: BTreeMap::from([("SAMPLE_ERROR_SHARE".to_owned(), "5%".to_owned())]),
        ..LaunchSpec::default()
    };
    let bad = support::release("an", Version::new(2, 0, 0), failing);
    let good = support::release("an", Version::new(2, 0, 1), LaunchSpec::default());
    let load = support::serve_under_load(&provider, &balancer, &v1).await;

    // The bad release: healthy by /healthz, failing 5 % of what it serves.
    let (outcome, events, taken) = deploy_analysed(&provider, &balancer, &bad, &v1).await;
    match &outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("analysis failed"), "{reason}"),
        other => panic!("the bad release was not rolled back: {other:?}"),
    }
    let failed = taken.iter().find(|m| m.phase == MeasurementPhase::Failed).expect("a failed measurement");
    assert_eq!(failed.gate, "canary-step-1");
    assert!(failed.value.is_some_and(|v| v >= 0.01), "{failed:?}");
    // The canary never went past its first step: after its analysis began, no old instance
    // was terminated before the rollback.
    let began = events.iter().position(|e| matches!(e, Event::Measured { .. })).unwrap();
    let rollback = events.iter().position(|e| matches!(e, Event::RollbackStarted { .. })).unwrap();
    assert!(!events[began..rollback].iter().any(|e| matches!(e, Event::Terminated { .. })), "{events:?}");
    let fleet = provider.describe(&Query::service("an")).await.unwrap();
    assert_eq!(fleet.len(), 3);
    assert!(fleet.iter().all(|i| i.release() == Some(v1.id())), "back on 1.0.0: {fleet:?}");

    // The good release passes its measurements and is promoted.
    let (outcome, _, taken) = deploy_analysed(&provider, &balancer, &good, &v1).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(taken.len() >= 3 && taken.iter().all(|m| m.phase == MeasurementPhase::Successful), "{taken:?}");
    let seen = load.stop().await;
    assert!(seen.served_by("2.0.1") > 0, "{:?}", seen.by_version);
    let fleet = provider.describe(&Query::service("an")).await.unwrap();
    assert!(fleet.len() == 3 && fleet.iter().all(|i| i.release() == Some(good.id())), "{fleet:?}");
    let ids: Vec<_> = fleet.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    balancer.stop().await.unwrap();
}
