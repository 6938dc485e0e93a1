//! `[analysis]` as an operator uses it: on the local provider, under load, a canary whose
//! release fails 5 % of its requests is rolled back by the direct-scrape analysis with every
//! old process alive, and a good one is promoted; `plan` says where the analysis runs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use immut::Phase;
use immut::analysis::MeasurementPhase;
use immut::engine::Event;
use support::{Case, stderr, stdout};

const ANALYSIS: &str = r#"
[analysis]

[[analysis.metrics]]
name = "error-ratio"
provider = "scrape"
interval = "1s"
count = 2
success = "< 0.01"
"#;

fn measurements(events: &[Event]) -> Vec<MeasurementPhase> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some(measurement.phase),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_five_percent_is_rolled_back_by_its_metrics_and_a_good_one_is_promoted() {
    let case = Case::new("analysis", "web", 3, "blue-green");
    let first = case.run(&["deploy", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let old = support::processes_from(&case.local_dir());
    assert_eq!(old.len(), 3, "{old:?}");

    let spec = std::fs::read_to_string(case.dir.join("immut.toml")).unwrap();
    let spec = spec.replace(
        "[strategy]\nkind = \"blue_green\"",
        "[strategy]\nkind = \"canary\"\nsteps = [1]\npromotion = \"analysis\"",
    ) + ANALYSIS;
    std::fs::write(case.dir.join("immut.toml"), spec).unwrap();

    let info = immut::local::LocalBalancer::find(&case.local_dir(), "web").unwrap().expect("a balancer runs");
    let load = support::Load::start(info.address, 4, Arc::new(support::Live::default()));

    // The plan's latencies as this machine's processes have them, within the spec's deadlines.
    let plan = case.run(&[
        "plan",
        "--set",
        "artifact.version=2.0.0",
        "--set",
        "plan.launch_to_running=100ms",
        "--set",
        "plan.boot_to_healthy=500ms",
    ]);
    assert!(plan.status.success(), "{}{}", stdout(&plan), stderr(&plan));
    assert!(stdout(&plan).contains("analysis: at canary-step-1"), "{}", stdout(&plan));

    let bad = case.run(&[
        "deploy",
        "--json",
        "--set",
        "artifact.version=2.0.0",
        "--set",
        "baseline.env.SAMPLE_ERROR_SHARE=\"5%\"",
    ]);
    assert_eq!(bad.status.code(), Some(3), "{}{}", stdout(&bad), stderr(&bad));
    let outcome = support::finished(&bad).expect("the deployment finished");
    let Phase::RolledBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("analysis failed") && reason.contains("error-ratio"), "{reason}");
    assert!(measurements(&support::events(&bad)).contains(&MeasurementPhase::Failed), "{}", stdout(&bad));
    // Ground truth: every old process is alive, with the same pids.
    assert_eq!(support::processes_from(&case.local_dir()), old, "the failed canary cost no old instance");

    let good = case.run(&["deploy", "--json", "--set", "artifact.version=2.0.1"]);
    assert!(good.status.success(), "{}{}", stdout(&good), stderr(&good));
    let taken = measurements(&support::events(&good));
    assert_eq!(taken, [MeasurementPhase::Successful, MeasurementPhase::Successful], "{}", stdout(&good));
    let seen = load.stop().await;
    assert!(seen.sent > 100, "the load ran: {seen:?}");

    let provider = case.provider();
    let live = immut::ProviderExt::describe_service(&provider, "web").await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|i| i.provenance.as_ref().unwrap().artifact_version.to_string() == "2.0.1"));
    assert!(case.run(&["destroy", "--yes"]).status.success());
    support::eventually("every process stopped", Duration::from_secs(10), || {
        let gone = support::processes_from(&case.local_dir()).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
}

/// The error ratio of a release's instances, over Prometheus's scrapes of their `/metrics`.
const ERROR_RATIO: &str = r#"(sum(rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}",status=~"5.."}[4s])) or vector(0)) / sum(rate(sample_http_requests_total{release="{{release}}",instance=~"{{instances}}"}[4s]))"#;

/// `immut deploy` SIGKILLed just before its second measurement of a Prometheus analysis (a
/// real Prometheus, scraping the instances through file-based discovery that the test keeps
/// current), then `immut resume`: the resumed deployment continues the same run (measurement
/// 2 of 3 next, not a new run of 3) and promotes the canary; no request failed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_killed_during_its_analysis_resumes_the_same_run() {
    use immut::journal::JournalEntry;
    let prometheus = Arc::new(immut_core::test_tools::start_prometheus().unwrap_or_else(|e| panic!("{e}")));
    let case = Case::new("analysis-kill", "web", 2, "blue-green");
    let first = case.run(&["deploy", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let targets = immut_local::test_tools::track_targets(case.provider(), "web", prometheus.clone());
    let analysis = format!(
        r#"
[analysis]

[[analysis.metrics]]
name = "error-ratio"
provider = "prometheus"
url = "{url}"
query = '{ERROR_RATIO}'
interval = "2s"
count = 3
success = "< 0.01"
# While Prometheus first discovers and scrapes the canary (a rate needs two scrapes).
inconclusive_limit = 3
"#,
        url = prometheus.url()
    );
    let spec = std::fs::read_to_string(case.dir.join("immut.toml")).unwrap();
    let spec = spec.replace(
        "[strategy]\nkind = \"blue_green\"",
        "[strategy]\nkind = \"canary\"\nsteps = [1]\npromotion = \"analysis\"",
    ) + &analysis;
    std::fs::write(case.dir.join("immut.toml"), spec).unwrap();
    let info = immut::local::LocalBalancer::find(&case.local_dir(), "web").unwrap().expect("a balancer runs");
    let load = support::Load::start(info.address, 4, Arc::new(support::Live::default()));

    let killed = case.run(&["deploy", "--json", "--set", "artifact.version=2.0.0", "--kill-at-record", "measured:1"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(killed.status.signal(), Some(9), "SIGKILLed: {}{}", stdout(&killed), stderr(&killed));
    let measured = |case: &Case| -> Vec<(String, u32)> {
        case.journal()
            .into_iter()
            .filter_map(|r| match r.entry {
                JournalEntry::Measured(m) => Some((m.gate, m.index)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(measured(&case), [("canary-step-1".to_owned(), 1)], "one measurement was journaled before the kill");
    let during = support::processes_from(&case.local_dir());
    assert_eq!(during.len(), 3, "the canary and both old instances outlive the killed command: {during:?}");

    let resumed = case.run(&["resume", "--json"]);
    assert!(resumed.status.success(), "{}{}", stdout(&resumed), stderr(&resumed));
    let taken: Vec<u32> = support::events(&resumed)
        .iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } => Some(measurement.index),
            _ => None,
        })
        .collect();
    assert_eq!(taken, [2, 3], "the resumed run takes the measurements that were still due: {}", stdout(&resumed));
    let all = measured(&case);
    assert_eq!(all.iter().map(|(_, i)| *i).collect::<Vec<_>>(), [1, 2, 3], "one run of 3 in the journal: {all:?}");
    assert!(matches!(support::finished(&resumed).map(|o| o.phase), Some(Phase::Succeeded)), "{}", stdout(&resumed));
    let seen = load.stop().await;
    assert_eq!(seen.failed, 0, "no request failed across the kill and the resume: {seen:?}");
    targets.abort();
    assert!(case.run(&["destroy", "--yes"]).status.success());
}

/// `provider = "cloudwatch"` on moto: with the instances on the local provider, the alarms are
/// read through the standard AWS environment. An alarm in ALARM rolls the canary back (the
/// reason quotes it), all alarms OK let the next one through; a cloudwatch metric with a
/// condition, or without alarms, is refused before anything runs.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloudwatch_alarms_decide_a_canary_from_the_command_line() {
    let moto = immut_core::test_tools::start_moto().unwrap_or_else(|e| panic!("{e}"));
    let aws: Vec<(&str, String)> = moto.aws_env();
    // Alarms set as an operator (or CloudWatch itself) would, with boto3 from the test tools.
    let set_alarm = |state: &str| {
        let python = immut_core::test_tools::python_with("boto3").unwrap_or_else(|e| panic!("{e}"));
        let script = format!(
            r#"import boto3
cw = boto3.client("cloudwatch", endpoint_url="{url}", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
cw.put_metric_alarm(AlarmName="web-5xx", MetricName="HTTPCode_Target_5XX_Count", Namespace="AWS/ApplicationELB", Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold")
cw.set_alarm_state(AlarmName="web-5xx", StateValue="{state}", StateReason="the test set it {state}")
"#,
            url = moto.endpoint()
        );
        let out = std::process::Command::new(python).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let case = Case::new("cloudwatch", "web", 2, "blue-green");
    let first = case.run(&["deploy", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let spec = std::fs::read_to_string(case.dir.join("immut.toml")).unwrap().replace(
        "[strategy]\nkind = \"blue_green\"",
        "[strategy]\nkind = \"canary\"\nsteps = [1]\npromotion = \"analysis\"",
    );
    let metric = |extra: &str| {
        format!(
            "\n[analysis]\n\n[[analysis.metrics]]\nname = \"alarms\"\nprovider = \"cloudwatch\"\ninterval = \"500ms\"\ncount = 2\n{extra}\n"
        )
    };
    let run = |args: &[&str]| case.command(args).envs(aws.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();

    for (extra, says) in [
        ("alarms = [\"web-5xx\"]\nsuccess = \"< 1\"", "a cloudwatch metric takes no success or failure condition"),
        ("", "the cloudwatch provider needs the alarms' names"),
    ] {
        std::fs::write(case.dir.join("immut.toml"), spec.clone() + &metric(extra)).unwrap();
        let refused = run(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
        assert_eq!(refused.status.code(), Some(2), "{}{}", stdout(&refused), stderr(&refused));
        assert!(stderr(&refused).contains(says), "{}", stderr(&refused));
    }

    std::fs::write(case.dir.join("immut.toml"), spec + &metric("alarms = [\"web-5xx\"]")).unwrap();
    set_alarm("ALARM");
    let alarmed = run(&["deploy", "--json", "--set", "artifact.version=2.0.0"]);
    assert_eq!(alarmed.status.code(), Some(3), "{}{}", stdout(&alarmed), stderr(&alarmed));
    let outcome = support::finished(&alarmed).expect("the deployment finished");
    let Phase::RolledBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains("metric \"alarms\"") && reason.contains("failed"), "{reason}");
    let failed: Vec<String> = support::events(&alarmed)
        .into_iter()
        .filter_map(|e| match e {
            Event::Measured { measurement } if measurement.phase == MeasurementPhase::Failed => {
                Some(measurement.message)
            }
            _ => None,
        })
        .collect();
    assert!(failed.iter().any(|m| m.contains("in ALARM: web-5xx")), "{failed:?}");
    println!("an alarm in ALARM: {reason}; the measurement: {}", failed[0]);

    set_alarm("OK");
    let passed = run(&["deploy", "--json", "--set", "artifact.version=2.0.1"]);
    assert!(passed.status.success(), "{}{}", stdout(&passed), stderr(&passed));
    let taken = measurements(&support::events(&passed));
    assert_eq!(taken, [MeasurementPhase::Successful, MeasurementPhase::Successful], "{}", stdout(&passed));
    assert!(case.run(&["destroy", "--yes"]).status.success());
}
