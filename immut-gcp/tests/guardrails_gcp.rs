//! The GCP guardrail documents, by the shape of the public references: a custom role is IAM's
//! `Role` resource (`title`, `description`, `stage`, `includedPermissions` of
//! `service.resource.verb` permissions), and a deny policy is IAM v2's `Policy` (`rules` of
//! `denyRule` with `deniedPrincipals`, `exceptionPrincipals`, `deniedPermissions` in the
//! `service.googleapis.com/resource.verb` form, and an optional `denialCondition` CEL
//! expression on resource tags). Every permission of every call the provider makes is in the
//! role.

use immut_core::guardrails::Principal;
use immut_gcp::guardrails::{CALLS, DENIED, GcpGuardrailOptions, deny_policy, deployer_role, guardrails};
use serde_json::Value;

const DEPLOYER: &str = "principal://iam.googleapis.com/projects/-/serviceAccounts/deployer@p.iam.gserviceaccount.com";

fn permission_shape(p: &str) -> bool {
    let parts: Vec<&str> = p.split('.').collect();
    parts.len() == 3 && parts.iter().all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[test]
fn the_custom_role_has_the_role_resource_shape_and_every_permission_of_every_call() {
    let role =
        deployer_role(&GcpGuardrailOptions { state: Some("gs://state/team".into()), ..Default::default() }).unwrap();
    // Round-trips through JSON text as a file for `gcloud iam roles create --file`.
    let role: Value = serde_json::from_str(&serde_json::to_string(&role).unwrap()).unwrap();
    let keys: Vec<&str> = role.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["description", "includedPermissions", "stage", "title"], "only Role fields");
    assert_eq!(role["stage"], "GA");
    assert!(role["title"].as_str().is_some_and(|t| !t.is_empty() && t.len() <= 100));
    let permissions: Vec<&str> =
        role["includedPermissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(permissions.iter().all(|p| permission_shape(p)), "{permissions:?}");
    let mut sorted = permissions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, permissions, "sorted, each once");
    for call in CALLS.iter().filter(|c| !c.stack) {
        for p in call.permissions {
            assert!(permissions.contains(p), "{} needs {p}", call.method);
        }
    }
    for p in ["storage.objects.create", "storage.objects.get", "storage.objects.list"] {
        assert!(permissions.contains(&p), "the state store needs {p}");
    }
    assert!(!permissions.contains(&"storage.objects.delete"), "state is append-only");
    assert!(!permissions.contains(&"compute.instanceGroups.create"), "the demo stack only with stack");
    let with_stack = deployer_role(&GcpGuardrailOptions { stack: true, ..Default::default() }).unwrap();
    assert!(with_stack["includedPermissions"].as_array().unwrap().iter().any(|p| p == "compute.instanceGroups.create"));
    let bad = deployer_role(&GcpGuardrailOptions { state: Some("s3://x".into()), ..Default::default() }).unwrap_err();
    assert!(bad.to_string().contains("state") && bad.to_string().contains("gs://"), "{bad}");
}

#[test]
fn the_deny_policy_has_the_v2_policy_shape_and_exempts_only_the_deployer() {
    let options = GcpGuardrailOptions { exempt_principals: vec![DEPLOYER.into()], ..Default::default() };
    let policy = deny_policy(&options).unwrap();
    assert!(policy["displayName"].as_str().is_some_and(|n| n.len() <= 63), "displayName is at most 63 characters");
    let rules = policy["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0]["denyRule"];
    assert_eq!(rule["deniedPrincipals"], serde_json::json!(["principalSet://goog/public:all"]));
    assert_eq!(rule["exceptionPrincipals"], serde_json::json!([DEPLOYER]));
    let denied: Vec<&str> = rule["deniedPermissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(denied, DENIED);
    for p in &denied {
        let (service, permission) = p.split_once('/').unwrap();
        assert_eq!(service, "compute.googleapis.com", "{p}");
        assert!(permission.starts_with("instances.") && !permission.contains('/'), "{p}");
    }
    for change in
        ["instances.stop", "instances.start", "instances.setLabels", "instances.setMetadata", "instances.create"]
    {
        assert!(denied.iter().any(|p| p.ends_with(change)), "{change} is refused");
    }
    assert!(!denied.iter().any(|p| p.ends_with("instances.delete")), "deletion stays the break-glass");
    assert!(rule.get("denialCondition").is_none(), "without a tag the deny covers the attachment point");

    let tagged =
        deny_policy(&GcpGuardrailOptions { managed_tag: Some("my-project/immut-managed/true".into()), ..options })
            .unwrap();
    let condition = &tagged["rules"][0]["denyRule"]["denialCondition"];
    assert_eq!(condition["expression"], "resource.matchTag('my-project/immut-managed', 'true')");

    let e = deny_policy(&GcpGuardrailOptions::default()).unwrap_err();
    assert!(e.to_string().contains("exempt_principals") && e.to_string().contains("principal://"), "{e}");
    let e =
        deny_policy(&GcpGuardrailOptions { exempt_principals: vec!["deployer@p.iam".into()], ..Default::default() })
            .unwrap_err();
    assert!(e.to_string().contains("IAM v2 principal"), "{e}");
    let e = deny_policy(&GcpGuardrailOptions {
        exempt_principals: vec![DEPLOYER.into()],
        managed_tag: Some("immut-managed".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("managed_tag"), "{e}");
}

#[test]
fn the_sets_say_what_labels_mean_for_the_deny_policy() {
    let others = guardrails(
        Principal::Others,
        &GcpGuardrailOptions { exempt_principals: vec![DEPLOYER.into()], ..Default::default() },
    )
    .unwrap();
    assert_eq!(others.documents[0].kind, "gcp-deny-policy");
    assert!(others.documents[0].cannot_refuse.iter().any(|c| c.contains("tags, not labels")));
    let deployer = guardrails(Principal::Deployer, &GcpGuardrailOptions::default()).unwrap();
    assert_eq!(deployer.documents[0].kind, "gcp-custom-role");
}
