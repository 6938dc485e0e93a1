//! A demo stack for the example and the tests: one Standard Load Balancer with a private
//! frontend on the provider's subnet, an HTTP probe, two IP-based backend pools (`NAME-blue`,
//! `NAME-green`, with a drain period), the serving rule `http` (port 80, to blue) and the test
//! rule `test` (port 8080, to green, the same probe), so both pools are probed and only one
//! serves. On a real subscription you keep this in your infrastructure code; against the fake
//! the example and the tests create it here. Find-or-create: a second run reuses what exists.

use std::time::Duration;

use azure_core::Method;
use immut_core::{Error, ErrorKind, Result};
use serde_json::json;

use crate::client::NETWORK_API;
use crate::provider::AzureProvider;

/// The resources of a demo stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// The load balancer.
    pub load_balancer: String,
    /// The serving load-balancing rule.
    pub rule: String,
    /// The rule on the test port, over the idle pool.
    pub test_rule: String,
    /// The blue pool: serving at first.
    pub blue_pool: String,
    /// The green pool: idle at first.
    pub green_pool: String,
}

/// Creates (or finds) a stack named `name` in the provider's resource group, with this drain
/// period on both pools. Needs the provider's subnet.
pub async fn create(provider: &AzureProvider, name: &str, drain: Duration) -> Result<Stack> {
    let c = &provider.clients;
    let subnet = provider
        .defaults_subnet()
        .ok_or_else(|| Error::invalid("subnet", "the demo stack needs the provider's subnet for its frontend"))?;
    let stack = Stack {
        load_balancer: name.to_owned(),
        rule: "http".into(),
        test_rule: "test".into(),
        blue_pool: format!("{name}-blue"),
        green_pool: format!("{name}-green"),
    };
    let lb_path = format!("{}/Microsoft.Network/loadBalancers/{name}", c.group_path());
    let url = c.url(&format!("{lb_path}?api-version={NETWORK_API}"))?;
    match c.raw(Method::Get, url.clone(), None, &[], "LoadBalancers_Get").await {
        Ok(_) => return Ok(stack),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = |kind: &str, child: &str| json!({ "id": format!("{lb_path}/{kind}/{child}") });
    let rule = |rule: &str, port: u16, pool: &str| {
        json!({
            "name": rule,
            "properties": {
                "frontendIPConfiguration": id("frontendIPConfigurations", "frontend"),
                "backendAddressPool": id("backendAddressPools", pool),
                "probe": id("probes", "http"),
                "protocol": "Tcp",
                "frontendPort": port,
                "backendPort": 80,
                "idleTimeoutInMinutes": 4,
                "enableFloatingIP": false,
                "disableOutboundSnat": true,
                "loadDistribution": "Default",
            },
        })
    };
    let pool = |pool: &str| json!({ "name": pool, "properties": { "drainPeriodInSeconds": drain.as_secs(), "loadBalancerBackendAddresses": [] } });
    let body = json!({
        "location": c.location,
        "sku": { "name": "Standard", "tier": "Regional" },
        "tags": { "immut-demo": name },
        "properties": {
            "frontendIPConfigurations": [{ "name": "frontend", "properties": { "privateIPAllocationMethod": "Dynamic", "subnet": { "id": subnet } } }],
            "backendAddressPools": [pool(&stack.blue_pool), pool(&stack.green_pool)],
            "probes": [{ "name": "http", "properties": { "protocol": "Http", "port": 80, "requestPath": "/healthz", "intervalInSeconds": 5, "numberOfProbes": 1, "probeThreshold": 1 } }],
            "loadBalancingRules": [rule(&stack.rule, 80, &stack.blue_pool), rule(&stack.test_rule, 8080, &stack.green_pool)],
        },
    });
    let op = "LoadBalancers_CreateOrUpdate";
    match c.raw(Method::Put, url.clone(), Some(&body), &[("if-none-match", "*".into())], op).await {
        Ok(a) => c.wait_response(a.status, &a.headers, Some(url), op).await?,
        // Made by a concurrent run in between: use it.
        Err(e) if e.kind() == ErrorKind::Conflict => {}
        Err(e) => return Err(e),
    }
    Ok(stack)
}
