//! The EC2/ELBv2 calls of a rolling deployment of 50 instances in waves of 10, against moto,
//! per wave and in total. `cargo test --workspace --test figures_aws -- --show-output`
//! prints them as JSON.

mod support;

use std::time::Duration;

use immut_aws::stack;
use immut_core::{AllOf, Count, Deployer, Rolling};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_rolling_deployment_of_50_in_waves_of_10() {
    let turn = support::turn().await;
    let provider = support::provider(&turn.endpoint).await;
    let stack = stack::create(&provider, "figures").await.unwrap();
    let traffic = provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(5)).unwrap();
    let d = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(provider.status_checks()).and(traffic.clone()))
        .strategy(Rolling::new().max_surge(Count::Count(10)).max_unavailable(Count::Count(0)))
        .desired(50)
        .poll_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let (v1, v2) =
        (support::release("web", (1, 0, 0), support::AMI), support::release("web", (2, 0, 0), support::AMI_2));
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let before = provider.calls();
    let outcome = d.deploy(v2).with_previous(v1).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let calls: std::collections::BTreeMap<String, u64> =
        provider.calls().into_iter().map(|(op, n)| (op.clone(), n - before.get(&op).copied().unwrap_or(0))).collect();
    let waves = u64::from(outcome.waves);
    assert_eq!(waves, 5);
    assert_eq!(calls["RunInstances"], waves, "one RunInstances per wave, never one per instance");
    assert_eq!(calls["TerminateInstances"], waves, "one TerminateInstances per wave");
    let total: u64 = calls.values().sum();
    let per_wave: std::collections::BTreeMap<&String, f64> =
        calls.iter().map(|(op, n)| (op, *n as f64 / waves as f64)).collect();
    println!(
        "{}",
        serde_json::json!({
            "deployment": "rolling, 50 instances, waves of 10 (surge 10, unavailable 0), against moto",
            "waves": waves,
            "engine_steps": outcome.steps,
            "calls_total": total,
            "calls_by_operation": calls,
            "calls_per_wave": per_wave,
            "mutating_calls_per_wave": (calls["RunInstances"] + calls["TerminateInstances"]) as f64 / waves as f64,
        })
    );
}
