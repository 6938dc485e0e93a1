//! The EC2/ELBv2 calls of deployments against moto, per wave and in total:
//!
//! - a rolling deployment of 50 instances in waves of 10, with the provider set as for AWS
//!   (EC2 honours ClientToken, so the engine looks nothing up before a fresh token's launch)
//!   and as for moto (which ignores ClientToken, so the engine looks up by token before every
//!   launch);
//! - a blue/green deployment of 3 instances through a listener.
//!
//! The measured deployment always runs from a provider built for it (nothing reused from the
//! deployment before), as a new CI job would. `cargo test --workspace --test figures_aws --
//! --show-output` prints the figures as JSON.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use immut_aws::{AwsProvider, stack};
use immut_core::{AllOf, BlueGreen, Count, Deployer, Outcome, ReplacementStrategy, Rolling};

fn difference(after: BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .into_iter()
        .map(|(op, n)| (op.clone(), n - before.get(&op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Prints the figures and answers the calls per wave. Rollback readiness (a DescribeImages of
/// the previous release at the start and before its last instances are terminated) is a cost
/// per deployment, not per wave: shown on its own line and left out of the per-wave figure.
fn report(what: &str, outcome: &Outcome, calls: &BTreeMap<String, u64>) -> f64 {
    let waves = u64::from(outcome.waves).max(1);
    let readiness = outcome.calls.readiness;
    let total: u64 = calls.values().sum::<u64>() - readiness;
    let per_wave: BTreeMap<&String, f64> = calls.iter().map(|(op, n)| (op, *n as f64 / waves as f64)).collect();
    let mutating: u64 =
        ["RunInstances", "TerminateInstances", "RegisterTargets", "DeregisterTargets", "ModifyListener"]
            .iter()
            .map(|op| calls.get(*op).copied().unwrap_or(0))
            .sum();
    println!(
        "{}",
        serde_json::json!({
            "deployment": what,
            "waves": waves,
            "engine_steps": outcome.steps,
            "calls_total": total,
            "readiness_calls": readiness,
            "calls_per_wave": total as f64 / waves as f64,
            "calls_by_operation": calls,
            "calls_by_operation_per_wave": per_wave,
            "mutating_calls_per_wave": mutating as f64 / waves as f64,
        })
    );
    total as f64 / waves as f64
}

/// Deploys 1.0.0 with one provider, then measures 2.0.0 with a fresh one built by `fresh`.
async fn measure(
    endpoint: &str,
    fresh: immut_aws::AwsBuilder,
    strategy: impl ReplacementStrategy + Clone + 'static,
    desired: usize,
    listener: bool,
) -> (Outcome, BTreeMap<String, u64>) {
    let deployer = |provider: &AwsProvider, stack: &stack::Stack| {
        let traffic = if listener {
            provider
                .listener_switch(
                    &stack.listener_arn,
                    &stack.blue_target_group_arn,
                    &stack.green_target_group_arn,
                    Duration::from_millis(100),
                )
                .unwrap()
        } else {
            provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(5)).unwrap()
        };
        Deployer::builder()
            .provider(provider.clone())
            .traffic(traffic.clone())
            .health(AllOf::default().and(provider.status_checks()).and(traffic))
            .strategy(strategy.clone())
            .desired(desired)
            .poll_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (v1, v2) =
        (support::release("web", (1, 0, 0), support::AMI), support::release("web", (2, 0, 0), support::AMI_2));
    let first = support::provider(endpoint).await;
    let stack = stack::create(&first, "figures").await.unwrap();
    let outcome = deployer(&first, &stack).deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());

    let provider = fresh.build().await.unwrap();
    let before = provider.calls();
    let outcome = deployer(&provider, &stack).deploy(v2).with_previous(v1).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(outcome.calls.retries, 0, "no call was retried, so every figure is a first attempt");
    (outcome, difference(provider.calls(), &before))
}

fn rolling() -> Rolling {
    Rolling::new().max_surge(Count::Count(10)).max_unavailable(Count::Count(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_rolling_deployment_of_50_in_waves_of_10() {
    // As on AWS: ClientToken honoured. moto ignores it, which cannot matter here: no launch is
    // retried (asserted in `measure`).
    let turn = support::turn().await;
    let aws = support::builder(&turn.endpoint).honours_client_token(true);
    let (outcome, calls) = measure(&turn.endpoint, aws, rolling(), 50, false).await;
    let waves = u64::from(outcome.waves);
    assert_eq!(waves, 5);
    assert_eq!(calls["RunInstances"], waves, "one RunInstances per wave, never one per instance");
    assert_eq!(calls["TerminateInstances"], waves, "one TerminateInstances per wave");
    assert_eq!(calls["RegisterTargets"], waves);
    assert_eq!(calls["DeregisterTargets"], waves);
    let per_wave = report(
        "rolling, 50 instances, waves of 10 (surge 10, unavailable 0), against moto, provider as for AWS",
        &outcome,
        &calls,
    );
    assert!(per_wave <= 10.0, "{per_wave} calls per wave, the target is at most 10: {calls:?}");
    drop(turn);

    // As on moto: the engine looks up by token before every launch.
    let turn = support::turn().await;
    let moto = support::builder(&turn.endpoint);
    let (outcome, calls) = measure(&turn.endpoint, moto, rolling(), 50, false).await;
    let per_wave = report(
        "rolling, 50 instances, waves of 10 (surge 10, unavailable 0), against moto, provider as for moto",
        &outcome,
        &calls,
    );
    assert!(per_wave <= 11.0, "{per_wave} calls per wave: one token look-up per wave more than on AWS: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_blue_green_deployment_of_3() {
    let turn = support::turn().await;
    let aws = support::builder(&turn.endpoint).honours_client_token(true);
    let (outcome, calls) = measure(&turn.endpoint, aws, BlueGreen::new(), 3, true).await;
    assert_eq!(calls["RunInstances"], 1);
    assert_eq!(calls["ModifyListener"], 1, "one switch, no other listener change: {calls:?}");
    assert_eq!(outcome.calls.readiness, 2, "the way back checked at the start and before the old release goes");
    let total: u64 = calls.values().sum::<u64>() - outcome.calls.readiness;
    report("blue/green, 3 instances, through a listener, against moto, provider as for AWS", &outcome, &calls);
    assert!(total <= 20, "{total} calls (besides readiness) for a 3-instance blue/green: {calls:?}");
}
