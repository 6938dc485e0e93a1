//! The Azure guardrail documents, by the shape of the public references: a custom role
//! definition as `az role definition create` takes it (`Name`, `IsCustom`, `Description`,
//! `Actions`, `NotActions`, `DataActions`, `NotDataActions`, `AssignableScopes`, actions of
//! the form `Provider.Namespace/type/.../operation`), and a policy definition's `properties`
//! (`displayName`, `policyType`, `mode`, `parameters`, `policyRule` with `if` and `then`). Every
//! action of every call the provider makes is in the role.

use immut_azure::guardrails::{AzureGuardrailOptions, CALLS, deployer_role, guardrails, policy_definition};
use immut_core::guardrails::{PROVENANCE_KEYS, Principal};
use serde_json::Value;

const SCOPE: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/web";

fn action_shape(a: &str) -> bool {
    let parts: Vec<&str> = a.split('/').collect();
    parts.len() >= 3
        && parts[0].starts_with("Microsoft.")
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
        && ["read", "write", "delete", "action"].contains(parts.last().unwrap())
}

#[test]
fn the_role_definition_has_the_documented_shape_and_every_action_of_every_call() {
    let role =
        deployer_role(&AzureGuardrailOptions { scope: Some(SCOPE.into()), state: Some("az://state/team".into()) })
            .unwrap();
    let role: Value = serde_json::from_str(&serde_json::to_string(&role).unwrap()).unwrap();
    let mut keys: Vec<&str> = role.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Actions",
            "AssignableScopes",
            "DataActions",
            "Description",
            "IsCustom",
            "Name",
            "NotActions",
            "NotDataActions"
        ]
    );
    assert_eq!(role["IsCustom"], true);
    assert_eq!(role["AssignableScopes"], serde_json::json!([SCOPE]));
    let actions: Vec<&str> = role["Actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(actions.iter().all(|a| action_shape(a)), "{actions:?}");
    assert!(!actions.iter().any(|a| a.contains('*')), "no wildcards");
    for call in CALLS {
        for a in call.actions {
            assert!(actions.contains(a), "{} needs {a}", call.operation);
        }
    }
    for refused in
        ["Microsoft.Compute/virtualMachines/start/action", "Microsoft.Compute/virtualMachines/powerOff/action"]
    {
        assert!(!actions.contains(&refused), "the deployer never starts or stops: {refused}");
    }
    let data: Vec<&str> = role["DataActions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        data,
        [
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write"
        ]
    );

    let e = deployer_role(&AzureGuardrailOptions::default()).unwrap_err();
    assert!(e.to_string().contains("scope") && e.to_string().contains("/subscriptions/"), "{e}");
    let e = deployer_role(&AzureGuardrailOptions { scope: Some("web".into()), state: None }).unwrap_err();
    assert!(e.to_string().contains("scope"), "{e}");
}

#[test]
fn the_policy_definition_has_the_documented_shape_and_refuses_a_partial_provenance() {
    let p = policy_definition();
    assert_eq!(p["policyType"], "Custom");
    assert!(["All", "Indexed"].contains(&p["mode"].as_str().unwrap()));
    assert!(p["parameters"].is_object());
    assert_eq!(p["policyRule"]["then"]["effect"], "deny");
    let any = p["policyRule"]["if"]["anyOf"].as_array().unwrap();
    // A VM with some provenance tags but not all of them.
    let partial = any[0]["allOf"].as_array().unwrap();
    assert_eq!(partial[0], serde_json::json!({"field": "type", "equals": "Microsoft.Compute/virtualMachines"}));
    for (i, exists) in [(1, "true"), (2, "false")] {
        let fields: Vec<String> =
            partial[i]["anyOf"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap().to_owned()).collect();
        let expected: Vec<String> = PROVENANCE_KEYS.iter().map(|k| format!("tags['{k}']")).collect();
        assert_eq!(fields, expected);
        assert!(partial[i]["anyOf"].as_array().unwrap().iter().all(|c| c["exists"] == exists));
    }
    let types = any[1]["in"].as_array().unwrap();
    assert!(types.iter().any(|t| t == "Microsoft.Compute/virtualMachines/extensions"));
    assert!(types.iter().any(|t| t == "Microsoft.Compute/virtualMachines/runCommands"));

    let set = guardrails(Principal::Others, &AzureGuardrailOptions::default()).unwrap();
    assert_eq!(set.documents[0].kind, "azure-policy-definition");
    assert!(
        set.documents[0].cannot_refuse.iter().any(|c| c.contains("start") && c.contains("actions")),
        "it says it cannot refuse stop and start"
    );
}
