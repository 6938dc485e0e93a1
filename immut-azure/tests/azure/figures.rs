//! The ARM calls of a rolling deployment of 50 VMs in waves of 10, against the fake, per wave
//! and in total. `cargo test -p immut-azure --test azure figures -- --nocapture` prints them
//! as a table (and as JSON).

use std::collections::BTreeMap;
use std::time::Duration;

use immut_core::{AllOf, Count, Deployer, ProviderStatus, Rolling};

use crate::support::{self, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_rolling_deployment_of_50_in_waves_of_10() {
    let fake = support::fake().await;
    let provider = support::provider(&fake);
    let stack = support::stack(&provider, Duration::ZERO).await;
    let traffic = support::pool(&provider, &stack);
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
    assert_eq!(calls["VirtualMachines_CreateOrUpdate"], 50, "one PUT per VM");
    assert_eq!(calls["VirtualMachines_Delete"], 50, "one DELETE per VM");
    assert!(calls["LoadBalancers_CreateOrUpdate"] >= 2 * waves, "a whole wave per pool update: {calls:?}");
    // Rollback readiness reads v1's version and the location's usages at each check.
    let readiness = outcome.calls.readiness;
    assert!(readiness >= 2, "the way back was checked at the start and before v1's last VMs went");
    assert_eq!(calls["Usage_List"], readiness, "one usages read per readiness check");
    assert_eq!(
        calls["GalleryImageVersions_Get"],
        1 + readiness,
        "v2's image is checked once, before its first wave, not per wave; v1's once per readiness check"
    );
    assert_eq!(provider.tokens_fetched(), 1, "one token for every call");
    let live: Vec<_> = immut_core::Provider::describe(&provider, &immut_core::Query::service("web"))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    immut_core::Traffic::detach(&traffic, &live).await.unwrap();
    immut_core::ProviderExt::terminate_all(&provider, &live).await.unwrap();
    support::assert_clean(&fake, "web-");
    let total: u64 = calls.values().sum::<u64>() - 2 * readiness;
    println!(
        "rolling, 50 VMs, waves of 10 (surge 10, unavailable 0), against the fake: engine polls every 200 ms, operations (60-100 ms) every 20 ms"
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
            "deployment": "rolling, 50 VMs, waves of 10 (surge 10, unavailable 0), against the fake",
            "waves": waves,
            "engine_steps": outcome.steps,
            "calls_total": total,
            "readiness_checks": readiness,
            "calls_by_operation": calls,
            "mutating_calls_per_wave": (calls["VirtualMachines_CreateOrUpdate"] + calls["VirtualMachines_Delete"]) as f64 / waves as f64,
        })
    );
}
