//! The HTTP analysis providers against real HTTP servers on loopback: the direct scrape of an
//! instance's `/metrics` and the webhook.
#![cfg(feature = "http")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use immut_core::analysis::{
    Aggregation, AnalysisContext, MeasurementPhase, Metric, MetricProvider, Reading, ScrapeProvider, Threshold,
    WebhookProvider, classify,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers, and what it was sent.
#[derive(Debug, Default)]
struct Script {
    status: u16,
    body: String,
    delay: Duration,
    requests: Vec<String>,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request from its script.
async fn serve(script: Arc<Mutex<Script>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let script = script.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let (status, body, delay) = {
                    let mut s = script.lock().unwrap();
                    s.requests.push(String::from_utf8_lossy(&request).to_string());
                    (s.status, s.body.clone(), s.delay)
                };
                tokio::time::sleep(delay).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

fn metrics(ok: u64, errors: u64) -> String {
    format!(
        "# HELP sample_http_requests_total Requests.\n# TYPE sample_http_requests_total counter\n\
         sample_http_requests_total{{status=\"200\",version=\"1.1.0\",release=\"r1\"}} {ok}\n\
         sample_http_requests_total{{status=\"500\",version=\"1.1.0\",release=\"r1\"}} {errors}\n"
    )
}

fn context(addresses: &[&str]) -> AnalysisContext {
    AnalysisContext {
        gate: "canary-step-1".into(),
        service: "web".into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        ..AnalysisContext::default()
    }
}

fn set(script: &Arc<Mutex<Script>>, status: u16, body: impl Into<String>) {
    let mut s = script.lock().unwrap();
    s.status = status;
    s.body = body.into();
}

#[tokio::test]
async fn the_scrape_measures_the_error_ratio_between_two_scrapes() {
    let (a, b) = (Arc::new(Mutex::new(Script::default())), Arc::new(Mutex::new(Script::default())));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let summed = ScrapeProvider::new();
    let worst = ScrapeProvider::new().aggregation(Aggregation::WorstInstance);
    let ctx = context(&[&addr_a, &addr_b]);
    // First scrape: counted from each instance's start.
    set(&a, 200, metrics(95, 5));
    set(&b, 200, metrics(100, 0));
    assert_eq!(summed.measure(&ctx).await.unwrap(), Reading::Value(5.0 / 200.0));
    assert_eq!(worst.measure(&ctx).await.unwrap(), Reading::Value(0.05));
    // Between two scrapes, only the deltas count: a took 100 more with 10 errors, b none.
    set(&a, 200, metrics(185, 15));
    assert_eq!(summed.measure(&ctx).await.unwrap(), Reading::Value(0.1));
    assert_eq!(worst.measure(&ctx).await.unwrap(), Reading::Value(0.1));
    // No requests in between: nothing to judge, inconclusive (never successful).
    let reading = summed.measure(&ctx).await;
    assert_eq!(reading, Ok(Reading::Empty));
    let metric = Metric::new("error-ratio", Duration::from_secs(10), 3).success(Threshold::below(0.01));
    assert_eq!(classify(&metric, &reading).0, MeasurementPhase::Inconclusive);
    // A restarted instance's counters start again from zero.
    set(&a, 200, metrics(10, 0));
    assert_eq!(summed.measure(&ctx).await.unwrap(), Reading::Value(0.0));
}

#[tokio::test]
async fn an_unreachable_or_broken_instance_is_an_error_never_a_success() {
    let script = Arc::new(Mutex::new(Script::default()));
    let address = serve(script.clone()).await;
    let scrape = ScrapeProvider::new();
    set(&script, 503, "down");
    let e = scrape.measure(&context(&[&address])).await.unwrap_err();
    assert!(e.contains("HTTP 503"), "{e}");
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let e = scrape.measure(&context(&[&closed])).await.unwrap_err();
    assert!(e.contains(&closed), "{e}");
    let e = scrape.measure(&context(&[])).await.unwrap_err();
    assert!(e.contains("no address"), "{e}");
}

#[tokio::test]
async fn a_webhook_passes_refuses_or_errs() {
    let script = Arc::new(Mutex::new(Script::default()));
    let address = serve(script.clone()).await;
    let url = format!("http://{address}/confirm");
    let hook = WebhookProvider::with_timeout(&url, Duration::from_millis(500));
    let mut ctx = context(&["10.0.0.1:80"]);
    ctx.version = Some("1.1.0".into());
    set(&script, 200, "");
    assert_eq!(hook.measure(&ctx).await, Ok(Reading::Passed));
    let sent = script.lock().unwrap().requests[0].clone();
    assert!(sent.starts_with("POST /confirm "), "{sent}");
    let json = &sent[sent.find("\r\n\r\n").unwrap() + 4..];
    let body: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(body["service"], "web");
    assert_eq!(body["version"], "1.1.0");
    assert_eq!(body["addresses"][0], "10.0.0.1:80");
    // A clear refusal fails, with its reason.
    set(&script, 403, "change freeze until Monday");
    let refused = hook.measure(&ctx).await;
    assert_eq!(refused, Ok(Reading::Refused("HTTP 403 Forbidden: change freeze until Monday".into())));
    let metric = Metric::new("confirm", Duration::from_secs(10), 1).success(Threshold::at_least(1.0));
    assert_eq!(classify(&metric, &refused).0, MeasurementPhase::Failed);
    // A 5xx or a refusal without a reason is an error.
    set(&script, 500, "");
    assert!(hook.measure(&ctx).await.is_err());
    set(&script, 404, "");
    assert!(hook.measure(&ctx).await.is_err());
    // A timeout is an error, which counts against consecutive_error_limit.
    set(&script, 200, "");
    script.lock().unwrap().delay = Duration::from_secs(5);
    let timed_out = hook.measure(&ctx).await;
    assert!(timed_out.as_ref().is_err_and(|e| e.contains("timed out")), "{timed_out:?}");
    assert_eq!(classify(&metric, &timed_out).0, MeasurementPhase::Error);
}

#[tokio::test]
async fn pre_promotion_analysis_sends_its_smoke_load_to_the_idle_set_before_measuring() {
    use immut_core::analysis::{Analysis, AnalysisGate, SmokeLoad};
    use immut_core::engine::{Gate, GateContext, GateVerdict};
    use immut_core::model::InstanceId;
    use immut_core::strategy::FleetView;

    let script = Arc::new(Mutex::new(Script { status: 200, body: metrics(40, 0), ..Script::default() }));
    let address = serve(script.clone()).await;
    let metric = Metric::new("error-ratio", Duration::from_millis(300), 1).success(Threshold::below(0.01));
    let gate = AnalysisGate::new(Analysis::new([metric]))
        .provider("error-ratio", ScrapeProvider::new())
        .smoke_load(SmokeLoad::new(40, Duration::from_millis(250)).path("/work"));
    let id = InstanceId::new("i-idle");
    let view = FleetView { ready: vec![id.clone()], ..FleetView::default() };
    let context = GateContext { addresses: [(id, address)].into_iter().collect(), ..GateContext::default() };
    assert!(matches!(gate.evaluate_in("promote", &view, &context).await, GateVerdict::Hold(_)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gate.evaluate_in("promote", &view, &context).await, GateVerdict::Pass);
    let requests = script.lock().unwrap().requests.clone();
    let paths: Vec<&str> = requests.iter().map(|r| r.split(' ').nth(1).unwrap()).collect();
    assert_eq!(paths.len(), 11, "{paths:?}");
    assert!(paths[..10].iter().all(|p| *p == "/work"), "the load comes first: {paths:?}");
    assert_eq!(paths[10], "/metrics");
    let taken = gate.take_measurements();
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].phase, taken[0].value), (MeasurementPhase::Successful, Some(0.0)));
}
