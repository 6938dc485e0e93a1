//! CloudWatch alarms as the analysis of a canary, on moto (`PutMetricAlarm`, `SetAlarmState`):
//! an alarm in `ALARM` fails the canary's gate and the deployment rolls back; all `OK` passes
//! it; `INSUFFICIENT_DATA` is inconclusive; a name CloudWatch does not know is an error that
//! names it; bad names are refused before any call.

use std::time::Duration;

use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
use immut_core::analysis::{
    Analysis, AnalysisContext, AnalysisGate, MeasurementPhase, Metric, MetricProvider, Reading,
};
use immut_core::engine::Event;
use immut_core::{BlueGreen, Canary, Count, ErrorKind, Phase};

use super::{AwsProvider, deployer, listener_stack, live, support};
use support::{AMI, AMI_2};

async fn alarm(provider: &AwsProvider, name: &str) {
    provider
        .cloudwatch()
        .put_metric_alarm()
        .alarm_name(name)
        .namespace("immut/test")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
        .send()
        .await
        .unwrap();
}

async fn set(provider: &AwsProvider, name: &str, state: StateValue) {
    let reason = format!("the test set {}", state.as_str());
    provider
        .cloudwatch()
        .set_alarm_state()
        .alarm_name(name)
        .state_value(state)
        .state_reason(reason)
        .send()
        .await
        .unwrap();
}

fn gate(provider: &AwsProvider, names: &[&str]) -> AnalysisGate {
    // A pass or a refusal is the provider's own verdict: the metric needs no condition.
    let metric = Metric::new("alarms", Duration::from_millis(300), 2);
    AnalysisGate::new(Analysis::new([metric])).provider("alarms", provider.alarms(names.iter().copied()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_fail_pass_or_leave_a_measurement_inconclusive_and_a_missing_name_is_an_error() {
    let (_turn, provider, _stack, _traffic) = listener_stack("alarms-read").await;
    for name in ["web-5xx", "web-latency"] {
        alarm(&provider, name).await;
    }
    let alarms = provider.alarms(["web-latency", "web-5xx", "web-5xx"]).unwrap();
    assert_eq!(alarms.names(), ["web-5xx", "web-latency"], "sorted, each once");
    let ctx = AnalysisContext::default();

    set(&provider, "web-5xx", StateValue::Alarm).await;
    set(&provider, "web-latency", StateValue::Ok).await;
    match alarms.measure(&ctx).await {
        Ok(Reading::Refused(why)) => {
            assert!(
                why.contains("web-5xx") && why.contains("the test set ALARM") && !why.contains("web-latency"),
                "{why}"
            )
        }
        other => panic!("an alarm in ALARM fails the measurement: {other:?}"),
    }
    set(&provider, "web-5xx", StateValue::Ok).await;
    assert_eq!(alarms.measure(&ctx).await, Ok(Reading::Passed));
    set(&provider, "web-latency", StateValue::InsufficientData).await;
    assert_eq!(alarms.measure(&ctx).await, Ok(Reading::Empty), "no data never reads as a pass");

    let missing = provider.alarms(["web-5xx", "web-typo"]).unwrap().measure(&ctx).await;
    assert!(missing.as_ref().is_err_and(|e| e.contains("web-typo") && !e.contains("web-5xx,")), "{missing:?}");
    assert_eq!(provider.calls()["DescribeAlarms"], 4, "one DescribeAlarms per measurement");

    for bad in [vec![], vec![String::new()], vec!["x".repeat(256)]] {
        let e = provider.alarms(bad).unwrap_err();
        assert!(e.kind() == ErrorKind::InvalidInput && e.to_string().contains("alarms"), "{e}");
    }
    assert_eq!(provider.calls()["DescribeAlarms"], 4, "bad names are refused before any call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_in_alarm_rolls_the_canary_back_and_ok_alarms_let_it_through() {
    let (_turn, provider, _stack, traffic) = listener_stack("alarms").await;
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let first = deployer(&provider, &traffic, BlueGreen::new()).desired(3).build().unwrap();
    assert!(first.deploy(v1.clone()).run().await.succeeded());
    alarm(&provider, "web-5xx").await;
    set(&provider, "web-5xx", StateValue::Alarm).await;

    let canary = || Canary::new([Count::Count(1)]);
    let analysed =
        deployer(&provider, &traffic, canary()).desired(3).gate(gate(&provider, &["web-5xx"])).build().unwrap();
    let mut events = Vec::new();
    let outcome = analysed.deploy(v2.clone()).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    let Phase::RolledBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("analysis failed"), "{reason}");
    let failed = events.iter().find_map(|e| match e {
        Event::Measured { measurement } if measurement.phase == MeasurementPhase::Failed => Some(measurement.clone()),
        _ => None,
    });
    let failed = failed.expect("a failed measurement");
    assert!(failed.gate == "canary-step-1" && failed.message.contains("web-5xx"), "{failed:?}");
    assert_eq!(live(&provider, &v2).await, 0, "the canary was terminated");
    assert_eq!(live(&provider, &v1).await, 3, "the old release serves on");

    set(&provider, "web-5xx", StateValue::Ok).await;
    let analysed =
        deployer(&provider, &traffic, canary()).desired(3).gate(gate(&provider, &["web-5xx"])).build().unwrap();
    let mut events = Vec::new();
    let outcome = analysed.deploy(v2.clone()).with_previous(v1.clone()).run_with(|e| events.push(e.clone())).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let passed = events
        .iter()
        .filter(|e| matches!(e, Event::Measured { measurement } if measurement.phase == MeasurementPhase::Successful))
        .count();
    assert!(passed >= 2, "the canary step's measurements passed: {passed}");
    assert_eq!(live(&provider, &v2).await, 3);
    assert_eq!(live(&provider, &v1).await, 0);
}
