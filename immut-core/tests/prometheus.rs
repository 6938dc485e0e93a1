//! The Prometheus provider and the comparative judge against a real Prometheus server
//! (`apt-get install -y prometheus`; the test fails, naming that step, when it is missing).
#![cfg(feature = "http")]

use std::time::Duration;

use immut_core::analysis::{
    AnalysisContext, ComparativeProvider, Judge, MeasurementPhase, Metric, MetricProvider, PrometheusProvider, Reading,
    Samples, Threshold, classify,
};
use immut_core::test_tools::{Prometheus, start_prometheus};

fn started() -> Prometheus {
    start_prometheus().unwrap_or_else(|e| panic!("{e}"))
}

fn ask(prometheus: &Prometheus, query: &str) -> PrometheusProvider {
    PrometheusProvider::builder(prometheus.url(), query).timeout(Duration::from_secs(5)).build().unwrap()
}

fn context(addresses: &[String]) -> AnalysisContext {
    AnalysisContext {
        gate: "canary-step-1".into(),
        service: "web".into(),
        addresses: addresses.to_vec(),
        ..AnalysisContext::default()
    }
}

#[tokio::test]
async fn values_empty_results_and_error_bodies_read_as_prometheus_answers_them() {
    let prometheus = started();
    let ctx = context(&[]);
    assert_eq!(ask(&prometheus, "vector(0.25)").measure(&ctx).await, Ok(Reading::Value(0.25)));
    assert_eq!(ask(&prometheus, "scalar(vector(3))").measure(&ctx).await, Ok(Reading::Value(3.0)));
    // No such series: empty, which is inconclusive and never successful.
    let empty = ask(&prometheus, "no_such_metric_total").measure(&ctx).await;
    assert_eq!(empty, Ok(Reading::Empty));
    let metric = Metric::new("errors", Duration::from_secs(1), 1).failure(Threshold::above(0.01));
    assert_eq!(classify(&metric, &empty).0, MeasurementPhase::Inconclusive);
    // 0/0, as an error ratio with no traffic reads: NaN, inconclusive.
    let nan = ask(&prometheus, "vector(0) / vector(0)").measure(&ctx).await;
    assert!(matches!(nan, Ok(Reading::Value(v)) if v.is_nan()), "{nan:?}");
    assert_eq!(classify(&metric, &nan).0, MeasurementPhase::Inconclusive);
    // A query Prometheus refuses: its errorType and error in the message.
    let refused = ask(&prometheus, "sum(rate(x[1m]").measure(&ctx).await.unwrap_err();
    assert!(refused.contains("bad_data") && refused.contains("refused the query"), "{refused}");
    // Two series: an error asking for an aggregation, never a guess.
    let two = r#"vector(1) or label_replace(vector(2), "side", "b", "", "")"#;
    let many = ask(&prometheus, two).measure(&ctx).await.unwrap_err();
    assert!(many.contains("2 series") && many.contains("aggregate"), "{many}");
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    // Bound and never listening: refused, and no server started meanwhile can take the port.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    let provider = PrometheusProvider::builder(format!("http://127.0.0.1:{port}"), "vector(1)").build().unwrap();
    let e = provider.measure(&context(&[])).await.unwrap_err();
    assert!(e.contains("unreachable"), "{e}");
}

#[tokio::test]
async fn the_instances_placeholder_matches_the_scraped_targets_by_address() {
    let prometheus = started();
    // Prometheus scrapes itself: a real target whose address has dots and a colon.
    let own = prometheus.url().trim_start_matches("http://").to_owned();
    let decoy = own.replace('.', "x");
    prometheus.set_targets(std::slice::from_ref(&own)).unwrap();
    let up = ask(&prometheus, r#"sum(up{job="immut",instance=~"{{instances}}"})"#);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match up.measure(&context(std::slice::from_ref(&own))).await {
            Ok(Reading::Value(v)) => {
                assert_eq!(v, 1.0);
                break;
            }
            other => assert!(std::time::Instant::now() < deadline, "never scraped itself: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The dots are escaped: an address that differs only where a dot stood matches nothing.
    assert_eq!(up.measure(&context(&[decoy])).await, Ok(Reading::Empty));
    // The rendered query, as sent.
    assert!(up.render(&context(std::slice::from_ref(&own))).unwrap().contains(r"127\\.0\\.0\\.1:"));
}

#[tokio::test]
async fn the_judge_compares_each_sides_own_query_over_a_range() {
    let prometheus = started();
    // Each side renders its own version into the query, so the two sides differ by design.
    let query = ask(&prometheus, "vector({{version}})");
    let samples = Samples::PerStep { window: Duration::from_secs(20), step: Duration::from_secs(1) };
    let judge = ComparativeProvider::new(query, Judge::new(), samples).unwrap();
    let mut ctx = context(&[]);
    ctx.version = Some("5".into());
    ctx.stable_version = Some("1".into());
    ctx.stable_release = Some(immut_core::ReleaseId::new("r-stable"));
    let worse = judge.measure(&ctx).await.unwrap();
    assert!(matches!(&worse, Reading::Refused(why) if why.contains("significantly higher")), "{worse:?}");
    ctx.stable_version = Some("5".into());
    assert_eq!(judge.measure(&ctx).await, Ok(Reading::Passed));
    ctx.stable_version = Some("9".into());
    assert_eq!(judge.measure(&ctx).await, Ok(Reading::Passed), "a canary lower than stable passes");
    // Fewer samples than the judge wants: inconclusive.
    let thin = Samples::PerStep { window: Duration::from_secs(4), step: Duration::from_secs(1) };
    let e = ComparativeProvider::new(ask(&prometheus, "vector(1)"), Judge::new(), thin).unwrap_err();
    assert!(e.to_string().contains("judge.samples") && e.to_string().contains("min_samples"), "{e}");
    let per_series = ComparativeProvider::new(ask(&prometheus, "vector(1)"), Judge::new(), Samples::PerSeries).unwrap();
    let thin = per_series.measure(&ctx).await;
    assert!(matches!(&thin, Ok(Reading::Undecided(why)) if why.contains("too few samples")), "{thin:?}");
    // Nothing to compare with (a first deployment): an error, not a pass.
    let alone = context(&[]);
    assert!(per_series.measure(&alone).await.unwrap_err().contains("nothing to compare"));
}
