//! Analysis by a real Prometheus server on real processes: Prometheus scrapes every instance
//! of the service (file-based discovery that a task keeps current from the provider), and the
//! deployment's analysis asks it for the canary's error ratio while load runs through the
//! balancer. Needs `apt-get install -y prometheus`; fails, naming that step, without it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_core::analysis::{
    Analysis, AnalysisGate, ComparativeProvider, Judge, Measurement, MeasurementPhase, Metric, PrometheusProvider,
    Samples, SmokeLoad, Threshold,
};
use immut_core::engine::{Event, Outcome, Phase};
use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::strategy::Promotion;
use immut_core::test_tools::{Prometheus, start_prometheus};
use immut_core::{
    BlueGreen, Canary, Count, Deployer, LaunchSpec, Provider, ProviderExt, Query, Release, ReplacementStrategy, Traffic,
};
use immut_local::{LocalBalancer, LocalProvider};

/// The share of the analysed instances' served requests that answered 5xx over the last 4 s,
/// from the sample's own counter. The numerator falls back to 0 while no error series exists;
/// no traffic at all is `0/0`, which is inconclusive.
const ERROR_RATIO: &str = r#"(sum(rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}",status=~"5.."}[4s])) or vector(0)) / sum(rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}"}[4s]))"#;

/// A service on the local provider, a Prometheus scraping its instances, and a task that keeps
/// Prometheus's targets the live instances' addresses.
struct Setup {
    provider: LocalProvider,
    balancer: LocalBalancer,
    prometheus: Arc<Prometheus>,
    targets: tokio::task::JoinHandle<()>,
    _stop: support::StopOnDrop,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.targets.abort();
    }
}

async fn setup(tag: &str, service: &str) -> Setup {
    let prometheus = Arc::new(start_prometheus().unwrap_or_else(|e| panic!("{e}")));
    let (provider, balancer) = support::local(tag, service).await;
    let stop = support::stop_on_drop(provider.state_dir());
    let targets = immut_local::test_tools::track_targets(provider.clone(), service, prometheus.clone());
    Setup { provider, balancer, prometheus, targets, _stop: stop }
}

/// Deploys 3 instances of `release` as the stable release, and starts load through the
/// balancer once they serve it.
async fn stable(s: &Setup, release: &Release) -> support::Load {
    support::serve_under_load(&s.provider, &s.balancer, release).await
}

fn error_ratio(interval: Duration) -> Metric {
    // Inconclusive measurements are allowed while Prometheus first discovers and scrapes a new
    // instance (a rate needs two scrapes).
    Metric::new("error-ratio", interval, 3).success(Threshold::below(0.01)).inconclusive_limit(3)
}

fn deployer(s: &Setup, strategy: impl ReplacementStrategy + 'static, gate: AnalysisGate) -> Deployer {
    Deployer::builder()
        .provider(s.provider.clone())
        .traffic(s.balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(strategy)
        .gate(gate)
        .desired(3)
        .min_ready(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn prometheus_gate(url: &str, metric: Metric) -> AnalysisGate {
    let provider = PrometheusProvider::builder(url, ERROR_RATIO).timeout(Duration::from_secs(2)).build().unwrap();
    let name = metric.name.clone();
    AnalysisGate::new(Analysis::new([metric])).provider(name, provider)
}

/// What a deployment did, with the live processes of its state directory at the moment its
/// rollback began (ground truth from /proc), if it began.
struct Run {
    outcome: Outcome,
    events: Vec<Event>,
    taken: Vec<Measurement>,
    alive_at_rollback: Option<BTreeSet<String>>,
}

async fn deploy(s: &Setup, d: &Deployer, release: &Release, previous: &Release) -> Run {
    let events = Arc::new(Mutex::new(Vec::new()));
    let alive = Arc::new(Mutex::new(None));
    let (seen, snapshot, dir) = (events.clone(), alive.clone(), s.provider.state_dir().to_owned());
    let outcome = d
        .deploy(release.clone())
        .with_previous(previous.clone())
        .run_with(move |e| {
            if matches!(e, Event::RollbackStarted { .. }) {
                let ids: BTreeSet<String> = support::processes_from(&dir).into_keys().collect();
                *snapshot.lock().unwrap() = Some(ids);
            }
            seen.lock().unwrap().push(e.clone());
        })
        .await;
    let events = std::mem::take(&mut *events.lock().unwrap());
    let taken: Vec<Measurement> = events
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some(measurement.clone()),
            _ => None,
        })
        .collect();
    for m in &taken {
        println!("measured {} {} #{}: {} {:?} ({})", m.gate, m.metric, m.index, m.phase, m.value, m.message);
    }
    let alive_at_rollback = alive.lock().unwrap().take();
    Run { outcome, events, taken, alive_at_rollback }
}

fn release_with(service: &str, version: Version, env: &[(&str, &str)]) -> Release {
    let spec = LaunchSpec {
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ..LaunchSpec::default()
    };
    support::release(service, version, spec)
}

async fn ids_of(provider: &LocalProvider, service: &str) -> Vec<immut_core::InstanceId> {
    provider.describe(&Query::service(service)).await.unwrap().into_iter().map(|i| i.id).collect()
}

async fn all_on(provider: &LocalProvider, service: &str, release: &Release) {
    let fleet = provider.describe(&Query::service(service)).await.unwrap();
    assert!(fleet.len() == 3 && fleet.iter().all(|i| i.release() == Some(release.id())), "{fleet:?}");
}

async fn tear_down(s: &Setup, service: &str) {
    let ids = ids_of(&s.provider, service).await;
    s.balancer.detach(&ids).await.unwrap();
    s.provider.terminate_all(&ids).await.unwrap();
    s.balancer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_canary_passes_every_step_of_the_prometheus_analysis_and_is_promoted() {
    let s = setup("prom-good", "pg").await;
    let v1 = release_with("pg", Version::new(1, 0, 0), &[]);
    let v2 = release_with("pg", Version::new(2, 0, 0), &[]);
    let load = stable(&s, &v1).await;
    let gate = prometheus_gate(s.prometheus.url(), error_ratio(Duration::from_secs(3)));
    // The pause lets Prometheus discover and scrape each step's new instances before the gate.
    let d = deployer(&s, Canary::new([Count::Count(1), Count::Count(2)]).pause(Duration::from_secs(2)), gate);
    let run = deploy(&s, &d, &v2, &v1).await;
    assert!(run.outcome.succeeded(), "{}", run.outcome.summary());
    for gate in ["canary-step-1", "canary-step-2"] {
        let at: Vec<&Measurement> = run.taken.iter().filter(|m| m.gate == gate).collect();
        // The first may find the new instance not yet scraped twice (inconclusive), not more.
        let good = at.iter().filter(|m| m.phase == MeasurementPhase::Successful).count();
        assert!(at.len() == 3 && good >= 2, "{gate}: three measurements, at least two successful: {at:?}");
        assert!(at.iter().all(|m| matches!(m.phase, MeasurementPhase::Successful | MeasurementPhase::Inconclusive)));
        assert!(run.events.iter().any(|e| matches!(e, Event::GatePassed { gate: g } if g == gate)), "{gate} passed");
    }
    let seen = load.stop().await;
    assert!(seen.served_by("2.0.0") > 0, "{:?}", seen.by_version);
    all_on(&s.provider, "pg", &v2).await;
    tear_down(&s, "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_five_percent_is_rolled_back_by_the_prometheus_analysis() {
    let s = setup("prom-bad", "pb").await;
    let v1 = release_with("pb", Version::new(1, 0, 0), &[]);
    let bad = release_with("pb", Version::new(2, 0, 0), &[("SAMPLE_ERROR_SHARE", "5%")]);
    let load = stable(&s, &v1).await;
    let old = ids_of(&s.provider, "pb").await;
    let gate = prometheus_gate(s.prometheus.url(), error_ratio(Duration::from_secs(2)));
    let d = deployer(&s, Canary::new([Count::Count(1)]), gate);
    let run = deploy(&s, &d, &bad, &v1).await;
    match &run.outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("analysis failed"), "{reason}"),
        other => panic!("the bad release was not rolled back: {other:?}"),
    }
    let failed: Vec<&Measurement> = run.taken.iter().filter(|m| m.phase == MeasurementPhase::Failed).collect();
    assert_eq!(failed.len(), 1, "the first failure crosses failure_limit 0: {:?}", run.taken);
    assert_eq!(failed[0].gate, "canary-step-1");
    // Prometheus's rate of the canary's own counter: about the 5 % it fails.
    assert!(failed[0].value.is_some_and(|v| (0.02..=0.1).contains(&v)), "{:?}", failed[0]);
    assert!(!run.events.iter().any(|e| matches!(e, Event::GatePassed { .. })), "no gate passed");
    let seen = load.stop().await;
    assert!(seen.served_by("2.0.0") > 0, "the canary served: {:?}", seen.by_version);
    all_on(&s.provider, "pb", &v1).await;
    // Ground truth: every old instance's process was still alive when the rollback began.
    let alive = run.alive_at_rollback.expect("the rollback began");
    let gone: Vec<_> = old.iter().filter(|id| !alive.contains(id.as_str())).collect();
    tear_down(&s, "pb").await;
    assert!(
        gone.is_empty(),
        "old instances were terminated before the canary's analysis passed (their processes were gone when the \
         rollback began): {gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_regression_after_the_switch_is_rolled_back_during_the_bake() {
    let s = setup("prom-bake", "pk").await;
    let v1 = release_with("pk", Version::new(1, 0, 0), &[]);
    // Good under the smoke load (a few dozen requests an instance), failing 10 % under traffic.
    let late =
        release_with("pk", Version::new(2, 0, 0), &[("SAMPLE_ERROR_SHARE", "10%"), ("SAMPLE_ERRORS_AFTER", "150")]);
    let load = stable(&s, &v1).await;
    let gate = prometheus_gate(s.prometheus.url(), error_ratio(Duration::from_secs(2)))
        .smoke_load(SmokeLoad::new(30, Duration::from_secs(1)));
    let strategy = BlueGreen::new().bake(Duration::from_secs(1)).promotion(Promotion::Analysis);
    let d = deployer(&s, strategy, gate);
    let run = deploy(&s, &d, &late, &v1).await;
    match &run.outcome.phase {
        Phase::RolledBack { reason } => {
            assert!(reason.contains("gate \"bake\"") || reason.contains("analysis failed"), "{reason}")
        }
        other => panic!("the late regression was not rolled back: {other:?}"),
    }
    // Pre-promotion passed on the idle set; post-promotion failed.
    assert!(run.events.iter().any(|e| matches!(e, Event::GatePassed { gate } if gate == "promote")), "promote passed");
    assert!(run.events.iter().any(|e| matches!(e, Event::Switched { .. })), "traffic was switched");
    let failed: Vec<&Measurement> = run.taken.iter().filter(|m| m.phase == MeasurementPhase::Failed).collect();
    assert!(failed.len() == 1 && failed[0].gate == "bake", "{:?}", run.taken);
    assert!(failed[0].value.is_some_and(|v| v >= 0.01), "{:?}", failed[0]);
    assert!(run.taken.iter().filter(|m| m.gate == "promote").all(|m| m.phase != MeasurementPhase::Failed));
    let seen = load.stop().await;
    assert!(seen.served_by("2.0.0") > 0, "the new release served users: {:?}", seen.by_version);
    all_on(&s.provider, "pk", &v1).await;
    tear_down(&s, "pk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_prometheus_holds_the_canary_then_rolls_it_back_at_the_error_limit() {
    let s = setup("prom-down", "pd").await;
    let v1 = release_with("pd", Version::new(1, 0, 0), &[]);
    let v2 = release_with("pd", Version::new(2, 0, 0), &[]);
    let load = stable(&s, &v1).await;
    // A port bound and never listening: refused, and no instance launched meanwhile can take it.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    let metric = error_ratio(Duration::from_millis(500)).consecutive_error_limit(2);
    let gate = prometheus_gate(&format!("http://127.0.0.1:{port}"), metric);
    let d = deployer(&s, Canary::new([Count::Count(1)]), gate);
    let run = deploy(&s, &d, &v2, &v1).await;
    match &run.outcome.phase {
        Phase::RolledBack { reason } => assert!(reason.contains("consecutive_error_limit 2"), "{reason}"),
        other => panic!("not rolled back: {other:?}"),
    }
    // It held through two errors and rolled back at the third; every one an error.
    assert_eq!(run.taken.len(), 3, "{:?}", run.taken);
    assert!(run.taken.iter().all(|m| m.phase == MeasurementPhase::Error && m.message.contains("unreachable")));
    assert!(!run.events.iter().any(|e| matches!(e, Event::GatePassed { .. })), "never promoted");
    let _ = load.stop().await;
    all_on(&s.provider, "pd", &v1).await;
    tear_down(&s, "pd").await;
}

/// Per instance and per second, the share of served requests that answered 5xx (0 where no
/// error series exists yet).
const ERROR_RATIO_BY_INSTANCE: &str = r#"(sum by (instance) (rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}",status=~"5.."}[2s])) or 0 * sum by (instance) (rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}"}[2s]))) / sum by (instance) (rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}"}[2s]))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_comparative_judge_fails_a_canary_worse_than_the_stable_release_and_passes_an_equal_one() {
    let s = setup("prom-judge", "pj").await;
    let v1 = release_with("pj", Version::new(1, 0, 0), &[]);
    let bad = release_with("pj", Version::new(2, 0, 0), &[("SAMPLE_ERROR_SHARE", "5%")]);
    let good = release_with("pj", Version::new(2, 0, 1), &[]);
    let load = stable(&s, &v1).await;
    let judged = || {
        let query = PrometheusProvider::builder(s.prometheus.url(), ERROR_RATIO_BY_INSTANCE).build().unwrap();
        let samples = Samples::PerStep { window: Duration::from_secs(15), step: Duration::from_secs(1) };
        let judge = ComparativeProvider::new(query, Judge::new().min_samples(5), samples).unwrap();
        // The canary's samples begin once it serves and Prometheus has scraped it twice (before,
        // its ratio is 0/0 or absent, and left out): the pause gives it history to judge.
        let metric = Metric::new("versus-stable", Duration::from_secs(2), 2)
            .success(Threshold::at_least(0.0))
            .inconclusive_limit(1);
        let gate = AnalysisGate::new(Analysis::new([metric])).provider("versus-stable", judge);
        deployer(&s, Canary::new([Count::Count(1)]).pause(Duration::from_secs(8)), gate)
    };
    let run = deploy(&s, &judged(), &bad, &v1).await;
    assert!(matches!(&run.outcome.phase, Phase::RolledBack { .. }), "{}", run.outcome.summary());
    let failed = run.taken.iter().find(|m| m.phase == MeasurementPhase::Failed).expect("a failed judgement");
    assert!(failed.message.contains("significantly higher") && failed.message.contains("Mann-Whitney"), "{failed:?}");
    all_on(&s.provider, "pj", &v1).await;
    let run = deploy(&s, &judged(), &good, &v1).await;
    assert!(run.outcome.succeeded(), "{}", run.outcome.summary());
    assert!(run.taken.iter().all(|m| m.phase != MeasurementPhase::Failed), "{:?}", run.taken);
    assert!(run.taken.iter().any(|m| m.phase == MeasurementPhase::Successful), "{:?}", run.taken);
    let _ = load.stop().await;
    all_on(&s.provider, "pj", &good).await;
    tear_down(&s, "pj").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_stopped_during_its_prometheus_analysis_resumes_the_same_run() {
    let s = setup("prom-resume", "pr").await;
    let v1 = release_with("pr", Version::new(1, 0, 0), &[]);
    let v2 = release_with("pr", Version::new(2, 0, 0), &[]);
    let load = stable(&s, &v1).await;
    let journal_dir = s.provider.state_dir().join("journal");
    let analysed = || {
        let metric = Metric { count: 4, ..error_ratio(Duration::from_secs(2)) };
        let gate = prometheus_gate(s.prometheus.url(), metric);
        Deployer::builder()
            .provider(s.provider.clone())
            .traffic(s.balancer.clone())
            .health(HttpProbe::new("/healthz"))
            .strategy(Canary::new([Count::Count(1)]).pause(Duration::from_secs(2)))
            .gate(gate)
            .desired(3)
            .min_ready(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100))
            .progress_deadline(Duration::from_secs(30))
            .journal(immut_core::journal::FileJournal::open(&journal_dir).unwrap())
            .build()
            .unwrap()
    };
    // The deployment's task is dropped (as its process would die) once two measurements are
    // journaled: events are emitted after their journal records are written.
    let (two, taken) = (Arc::new(tokio::sync::Notify::new()), Arc::new(Mutex::new(Vec::new())));
    let deployment = analysed().deploy(v2.clone()).with_previous(v1.clone());
    let task = tokio::spawn({
        let (two, taken) = (two.clone(), taken.clone());
        async move {
            deployment
                .run_with(move |e| {
                    if let Event::Measured { measurement } = e {
                        let mut taken = taken.lock().unwrap();
                        taken.push(measurement.clone());
                        if taken.len() == 2 {
                            two.notify_one();
                        }
                    }
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(60), two.notified()).await.expect("two measurements");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let before: Vec<u32> = taken.lock().unwrap().iter().map(|m| m.index).collect();
    assert_eq!(before, [1, 2]);

    let resumed = analysed().resume("pr").unwrap().expect("an interrupted deployment");
    let mut events = Vec::new();
    let outcome = resumed.run_with(|e| events.push(e.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let after: Vec<(String, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some((measurement.gate.clone(), measurement.index)),
            _ => None,
        })
        .collect();
    assert_eq!(
        after,
        [("canary-step-1".to_owned(), 3), ("canary-step-1".to_owned(), 4)],
        "the run continues at its third measurement"
    );
    let _ = load.stop().await;
    all_on(&s.provider, "pr", &v2).await;
    tear_down(&s, "pr").await;
}
