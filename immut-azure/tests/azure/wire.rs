//! The fake's wire contract as any ARM client sees it: api-version and bearer token
//! required, ARM error bodies, 201 + Azure-AsyncOperation + Retry-After on a VM PUT, 202 +
//! Location on DELETE, absolute self-referencing nextLinks, etags, leaks visible.

use std::time::Duration;

use immut_azure::fake::Settings;
use serde_json::Value;

use crate::conformance::hand_vm;
use crate::support::{self, GROUP, SUB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_speaks_arm() {
    let fake = support::fake_with(Settings { page_size: 2, ..support::settings() }).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let vms = format!(
        "{}/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines",
        fake.url()
    );
    let auth = ("authorization", "Bearer fake-token");
    let r = http.get(&vms).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "MissingApiVersionParameter");
    let r = http.get(format!("{vms}?api-version=1999-01-01")).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "NoRegisteredProviderFound");
    let r = http.get(format!("{vms}?api-version=2024-07-01")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "AuthenticationFailed");

    for n in 0..5 {
        let name = format!("wire-{n}");
        let r = http
            .put(format!("{vms}/{name}?api-version=2024-07-01"))
            .header(auth.0, auth.1)
            .header("if-none-match", "*")
            .json(&hand_vm(&name, &support::image(1), "Standard_B2s", None))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers()["azure-asyncoperation"].to_str().unwrap().starts_with(fake.url()));
        assert!(r.headers().contains_key("retry-after"));
        assert!(r.headers().contains_key("x-ms-ratelimit-remaining-subscription-writes"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["properties"]["provisioningState"], "Creating");
    }
    // The same create again: 412, and the VM is untouched.
    let again = http
        .put(format!("{vms}/wire-0?api-version=2024-07-01"))
        .header(auth.0, auth.1)
        .header("if-none-match", "*")
        .json(&hand_vm("wire-0", &support::image(2), "Standard_B1s", None))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 412);
    assert_eq!(again.json::<Value>().await.unwrap()["error"]["code"], "PreconditionFailed");
    // Pages of 2 with absolute nextLinks, to the end.
    let mut next = Some(format!("{vms}?api-version=2024-07-01&$expand=instanceView"));
    let mut seen = Vec::new();
    while let Some(url) = next {
        assert!(url.starts_with(fake.url()), "{url}");
        let page: Value = http.get(&url).header(auth.0, auth.1).send().await.unwrap().json().await.unwrap();
        seen.extend(page["value"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_owned()));
        next = page["nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, (0..5).map(|n| format!("wire-{n}")).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let vm: Value = http
        .get(format!("{vms}/wire-0?api-version=2024-07-01&$expand=instanceView"))
        .header(auth.0, auth.1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vm["properties"]["provisioningState"], "Succeeded");
    assert_eq!(vm["properties"]["instanceView"]["statuses"][1]["code"], "PowerState/running");
    assert_eq!(vm["properties"]["hardwareProfile"]["vmSize"], "Standard_B2s", "the 412 changed nothing");
    // DELETE: 202 with Location, then gone with its NIC and disk; a second DELETE is 204.
    let del = http.delete(format!("{vms}/wire-0?api-version=2024-07-01")).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(del.status(), 202);
    let location = del.headers()["location"].to_str().unwrap().to_owned();
    let mut polls = 0;
    loop {
        let r = http.get(&location).header(auth.0, auth.1).send().await.unwrap();
        if r.status() != 202 {
            assert_eq!(r.status(), 204);
            break;
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(polls > 0, "the delete took a while");
    assert!(support::leftovers(&fake, "wire-0").is_empty());
    let gone = http.delete(format!("{vms}/wire-0?api-version=2024-07-01")).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(gone.status(), 204);
    let missing = http.get(format!("{vms}/wire-0?api-version=2024-07-01")).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "ResourceNotFound");
    // A NIC without deleteOption Delete outlives its VM, visibly.
    let mut leaky = hand_vm("leaky", &support::image(1), "Standard_B2s", None);
    leaky["properties"]["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]["deleteOption"] =
        "Detach".into();
    let r = http
        .put(format!("{vms}/leaky?api-version=2024-07-01"))
        .header(auth.0, auth.1)
        .json(&leaky)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    http.delete(format!("{vms}/leaky?api-version=2024-07-01")).header(auth.0, auth.1).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(support::leftovers(&fake, "leaky"), vec!["networkInterfaces/leaky-nic".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_are_chosen_through_the_control_endpoint() {
    let fake = support::fake().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let set = http
        .post(format!("{}/_fake/settings", fake.url()))
        .body(r#"{"async_operation_header": false, "rule_health_ms": 100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let vm = format!(
        "{}/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/fallback?api-version=2024-07-01",
        fake.url()
    );
    let auth = ("authorization", "Bearer fake-token");
    let put = http
        .put(&vm)
        .header(auth.0, auth.1)
        .json(&hand_vm("fallback", &support::image(1), "Standard_B2s", None))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert!(!put.headers().contains_key("azure-asyncoperation"), "{:?}", put.headers());
    assert!(!put.headers().contains_key("location"), "a PUT tells its progress by provisioningState");
    assert_eq!(put.json::<Value>().await.unwrap()["properties"]["provisioningState"], "Creating");
    let del = http.delete(&vm).header(auth.0, auth.1).send().await.unwrap();
    assert_eq!(del.status(), 202);
    assert!(!del.headers().contains_key("azure-asyncoperation"));
    assert!(del.headers()["location"].to_str().unwrap().contains("/operationResults/"));
}
