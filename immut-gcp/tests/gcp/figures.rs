//! The Compute calls of a rolling deployment of 50 instances in waves of 10, against the fake,
//! per wave and in total. `cargo test -p immut-gcp --test gcp figures -- --nocapture` prints
//! them as a table (and as JSON).

use std::collections::BTreeMap;
use std::time::Duration;

use immut_core::{AllOf, Count, Deployer, ProviderStatus, Rolling};

use crate::support::{self, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_rolling_deployment_of_50_in_waves_of_10() {
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let stack = support::stack(&provider, Duration::from_secs(0)).await;
    let traffic = support::group(&provider, &stack);
    let d = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(ProviderStatus).and(traffic.clone()))
        .strategy(Rolling::new().max_surge(Count::Count(10)).max_unavailable(Count::Count(0)))
        .desired(50)
        .poll_interval(Duration::from_millis(200))
        .progress_deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    let (v1, v2) = (support::release("web", (1, 0, 0), &image(1)), support::release("web", (2, 0, 0), &image(2)));
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let before = provider.calls();
    let outcome = d.deploy(v2).with_previous(v1).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let calls: BTreeMap<String, u64> = provider
        .calls()
        .into_iter()
        .map(|(op, n)| (op.clone(), n - before.get(&op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let waves = u64::from(outcome.waves);
    assert_eq!(waves, 5);
    assert_eq!(calls["instances.bulkInsert"], waves, "one bulkInsert per wave, never one per instance");
    assert_eq!(calls["instances.delete"], 50, "one delete per instance (the API has no batch delete)");
    assert_eq!(calls["instanceGroups.addInstances"], waves, "a whole wave per addInstances");
    assert_eq!(calls["instanceGroups.removeInstances"], waves, "a whole wave per removeInstances");
    // Rollback readiness reads v1's image and the region's quotas at each check.
    let readiness = outcome.calls.readiness;
    assert!(readiness >= 2, "the way back was checked at the start and before v1's last instances went");
    assert_eq!(calls["regions.get"], readiness, "one regions.get per readiness check");
    assert_eq!(calls["images.get"], 1 + readiness, "v2's image is checked once, not per wave; v1's once per check");
    let total: u64 = calls.values().sum::<u64>() - 2 * readiness;
    println!(
        "rolling, 50 instances, waves of 10 (surge 10, unavailable 0), against the fake: engine polls every 200 ms, \
         operations (100 ms each) every 20 ms"
    );
    println!("| Operation | Total | Per wave |");
    println!("|---|---|---|");
    for (op, n) in &calls {
        println!("| {op} | {n} | {:.1} |", *n as f64 / waves as f64);
    }
    println!(
        "| **All** (besides {readiness} readiness checks, 2 calls each) | **{total}** | **{:.1}** |",
        total as f64 / waves as f64
    );
    println!(
        "{}",
        serde_json::json!({
            "deployment": "rolling, 50 instances, waves of 10 (surge 10, unavailable 0), against the fake",
            "waves": waves,
            "engine_steps": outcome.steps,
            "calls_total": total,
            "readiness_checks": readiness,
            "calls_by_operation": calls,
            "mutating_calls_per_wave": (calls["instances.bulkInsert"] + calls["instances.delete"]) as f64 / waves as f64,
        })
    );
}
