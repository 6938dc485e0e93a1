//! The AWS guardrail documents, checked by tools that know nothing of how they were made:
//!
//! - `parliament` (an IAM policy linter) finds no unknown action, prefix or condition key,
//!   nothing malformed, and nothing of MEDIUM severity or above;
//! - `@cloud-copilot/iam-simulate` (an IAM policy simulator that evaluates conditions) shows
//!   what the "others" policy refuses and that the deployer can still do its work;
//! - moto, with IAM enforcement on (`INITIAL_NO_AUTH_ACTION_COUNT`), runs a rolling and a
//!   blue/green deployment as a user that holds only the deployer policy, then fails one when a
//!   single action is taken out of it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use immut_aws::guardrails::{AwsGuardrailOptions, deployer_policy, guardrails, others_policy};
use immut_aws::{AwsProvider, stack};
use immut_core::engine::RetryPolicy;
use immut_core::guardrails::{IamPolicy, PROVENANCE_KEYS, Principal};
use immut_core::semver::Version;
use immut_core::{
    AllOf, ArtifactSpec, BaselineSpec, BlueGreen, Count, Deployer, LaunchSpec, Phase, Provider, Query, Release, Rolling,
};
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";
const DEPLOYER_ROLE: &str = "arn:aws:iam::123456789012:role/immut-deployer";

fn python() -> PathBuf {
    immut_core::test_tools::python_with("parliament").unwrap_or_else(|e| panic!("{e}"))
}

/// Every finding parliament reports for `policy`, at any severity.
fn parliament(policy: &Value) -> Vec<Value> {
    let out = Command::new(python())
        .args(["-c", "import sys; from parliament.cli import cli; sys.exit(cli())"])
        .args(["--string", &policy.to_string(), "--json", "--minimum_severity", "INFO"])
        .stdin(Stdio::null())
        .output()
        .expect("parliament runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("parliament printed {l:?}: {e}")))
        .collect();
    // It exits 1 when it has findings; anything else is a crash.
    assert!(
        out.status.success() || (out.status.code() == Some(1) && !findings.is_empty()),
        "parliament failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    findings
}

/// The findings that fail a document: unknown actions, prefixes or condition keys, anything
/// malformed, and anything of MEDIUM severity or above.
fn failing(findings: &[Value]) -> Vec<&Value> {
    findings
        .iter()
        .filter(|f| {
            let issue = f["issue"].as_str().unwrap_or_default();
            let severity = f["severity"].as_str().unwrap_or_default();
            issue.starts_with("UNKNOWN")
                || issue.contains("MALFORMED")
                || issue.contains("INVALID")
                || ["MEDIUM", "HIGH", "CRITICAL"].contains(&severity)
        })
        .collect()
}

fn every_document() -> Vec<(&'static str, Value)> {
    let full = AwsGuardrailOptions {
        region: "us-east-1".into(),
        account: ACCOUNT.into(),
        state: Some("s3://immut-state/team/web".into()),
        pass_roles: vec!["arn:aws:iam::123456789012:role/web-instance".into()],
        stack: true,
        ..AwsGuardrailOptions::default()
    };
    let scp = AwsGuardrailOptions { exempt_principals: vec![DEPLOYER_ROLE.into()], ..AwsGuardrailOptions::default() };
    let doc = |p: Principal, o: &AwsGuardrailOptions| guardrails(p, o).unwrap().documents[0].document.clone();
    vec![
        ("deployer (defaults)", doc(Principal::Deployer, &AwsGuardrailOptions::default())),
        ("deployer (state, roles, stack)", doc(Principal::Deployer, &full)),
        ("others (identity policy)", doc(Principal::Others, &AwsGuardrailOptions::default())),
        ("others (SCP, deployer exempt)", doc(Principal::Others, &scp)),
    ]
}

#[test]
fn the_documents_pass_parliament() {
    for (name, document) in every_document() {
        let findings = parliament(&document);
        let bad = failing(&findings);
        assert!(bad.is_empty(), "parliament on the {name} policy: {bad:#?}\n{document:#}");
        // LOW findings that are not about unknown names are printed, not failed on.
        for f in &findings {
            eprintln!("{name}: {} {}: {}", f["severity"], f["issue"], f["detail"]);
        }
    }
    // The check can fail: a misspelt action and a condition key the action does not have.
    let broken = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ec2:RunInstance"], "Resource": "*"},
        {"Effect": "Deny", "Action": ["ec2:StopInstances"], "Resource": "*",
         "Condition": {"StringEquals": {"s3:prefix": "x"}}}]});
    let issues: Vec<String> = failing(&parliament(&broken)).iter().map(|f| f["issue"].to_string()).collect();
    assert!(issues.iter().any(|i| i.contains("UNKNOWN_ACTION")), "{issues:?}");
    assert!(issues.iter().any(|i| i.contains("UNKNOWN_CONDITION_FOR_ACTION")), "{issues:?}");
}

/// The simulator's node_modules: `npm ci` of scripts/node into target/test-node.
fn node_modules() -> PathBuf {
    let dir = std::env::var_os("IMMUT_TEST_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-node")))
        .join("node_modules");
    assert!(
        dir.join("@cloud-copilot/iam-simulate").is_dir(),
        "the IAM simulator is not installed in {}: run `mkdir -p target/test-node && cp scripts/node/package.json scripts/node/package-lock.json target/test-node/ && (cd target/test-node && npm ci --ignore-scripts)`, or set IMMUT_TEST_NODE",
        dir.display()
    );
    dir
}

struct Case {
    name: &'static str,
    principal: &'static str,
    action: &'static str,
    resource: String,
    context: Value,
    identity: Vec<Value>,
    scps: Vec<Value>,
    expect: &'static str,
}

fn simulate(cases: &[Case]) -> BTreeMap<String, String> {
    // AWS sets aws:PrincipalArn on every request; the simulator takes it from the context.
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            let mut context = c.context.clone();
            context["aws:PrincipalArn"] = json!(c.principal);
            json!({"name": c.name, "principal": c.principal, "action": c.action, "resource": c.resource,
                   "accountId": ACCOUNT, "context": context, "identityPolicies": c.identity, "scps": c.scps})
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/node/simulate.cjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node 18 or newer)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the simulator failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    results.iter().map(|r| (r["name"].as_str().unwrap().to_owned(), r["result"].as_str().unwrap().to_owned())).collect()
}

#[test]
fn the_simulator_refuses_other_principals_changes_and_lets_the_deployer_work() {
    let options = AwsGuardrailOptions { region: "us-east-1".into(), account: ACCOUNT.into(), ..Default::default() };
    let deployer = serde_json::to_value(deployer_policy(&options).unwrap()).unwrap();
    let others = serde_json::to_value(others_policy(&options).unwrap()).unwrap();
    let scp = serde_json::to_value(
        others_policy(&AwsGuardrailOptions { exempt_principals: vec![DEPLOYER_ROLE.into()], ..options.clone() })
            .unwrap(),
    )
    .unwrap();
    let admin = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
    let instance = format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0");
    let subnet = format!("arn:aws:ec2:us-east-1:{ACCOUNT}:subnet/subnet-0123456789abcdef0");
    let listener = format!(
        "arn:aws:elasticloadbalancing:us-east-1:{ACCOUNT}:listener/app/web-lb/50dc6c495c0c9188/f2f7dc8efc522ab2"
    );
    let ops = "arn:aws:iam::123456789012:user/ops";
    let managed = |extra: Value| {
        let mut c = json!({"aws:ResourceTag/immut-service": "web", "aws:ResourceTag/immut-release": "r1"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    // Session Manager reads an instance's tags as ssm:resourceTag/<key>.
    let ssm_managed = json!({"ssm:resourceTag/immut-service": "web"});
    let provenance: Vec<&str> = PROVENANCE_KEYS.to_vec();
    let launch_tags = json!({"aws:RequestTag/immut-service": "web", "aws:TagKeys": provenance});
    let case =
        |name, principal, action, resource: &str, context: Value, identity: &[&Value], scps: &[&Value], expect| Case {
            name,
            principal,
            action,
            resource: resource.to_owned(),
            context,
            identity: identity.iter().map(|v| (*v).clone()).collect(),
            scps: scps.iter().map(|v| (*v).clone()).collect(),
            expect,
        };
    let denied = "ExplicitlyDenied";
    let cases = vec![
        // Another principal, admin otherwise, with the "others" policy attached.
        case(
            "ops edits a provenance tag of a managed instance",
            ops,
            "ec2:CreateTags",
            &instance,
            managed(json!({"aws:TagKeys": ["immut-release"]})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops deletes the signature tag",
            ops,
            "ec2:DeleteTags",
            &instance,
            managed(json!({"aws:TagKeys": ["immut-signature"]})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops deletes every tag of a managed instance",
            ops,
            "ec2:DeleteTags",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops labels an unmanaged instance as managed",
            ops,
            "ec2:CreateTags",
            &instance,
            json!({"aws:TagKeys": ["immut-service"]}),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops stops a managed instance",
            ops,
            "ec2:StopInstances",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops starts a managed instance",
            ops,
            "ec2:StartInstances",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops changes a managed instance's attributes",
            ops,
            "ec2:ModifyInstanceAttribute",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops opens an Instance Connect session",
            ops,
            "ec2-instance-connect:SendSSHPublicKey",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops opens a serial console session on a managed instance",
            ops,
            "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops starts an SSM session on a managed instance",
            ops,
            "ssm:StartSession",
            &instance,
            ssm_managed.clone(),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops sends an SSM command to a managed instance",
            ops,
            "ssm:SendCommand",
            &instance,
            ssm_managed.clone(),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops starts an SSM session on an unmanaged instance",
            ops,
            "ssm:StartSession",
            &instance,
            json!({}),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        case(
            "ops opens an Instance Connect session on an unmanaged instance",
            ops,
            "ec2-instance-connect:SendSSHPublicKey",
            &instance,
            json!({}),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        case(
            "SCP: an admin starts an SSM session on a managed instance",
            ops,
            "ssm:StartSession",
            &instance,
            ssm_managed.clone(),
            &[&admin],
            &[&scp],
            denied,
        ),
        case(
            "ops launches with the managed tags",
            ops,
            "ec2:RunInstances",
            &instance,
            launch_tags.clone(),
            &[&admin, &others],
            &[],
            denied,
        ),
        case(
            "ops edits another tag of a managed instance",
            ops,
            "ec2:CreateTags",
            &instance,
            managed(json!({"aws:TagKeys": ["owner"]})),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        case(
            "ops stops an unmanaged instance",
            ops,
            "ec2:StopInstances",
            &instance,
            json!({}),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        case(
            "ops launches an unmanaged instance",
            ops,
            "ec2:RunInstances",
            &instance,
            json!({"aws:TagKeys": ["owner"]}),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        case(
            "ops terminates a managed instance (break-glass)",
            ops,
            "ec2:TerminateInstances",
            &instance,
            managed(json!({})),
            &[&admin, &others],
            &[],
            "Allowed",
        ),
        // The deployer with its own policy only.
        case(
            "the deployer launches a managed instance",
            DEPLOYER_ROLE,
            "ec2:RunInstances",
            &instance,
            launch_tags.clone(),
            &[&deployer],
            &[],
            "Allowed",
        ),
        case(
            "the deployer launches into a subnet",
            DEPLOYER_ROLE,
            "ec2:RunInstances",
            &subnet,
            json!({}),
            &[&deployer],
            &[],
            "Allowed",
        ),
        case(
            "the deployer tags at launch",
            DEPLOYER_ROLE,
            "ec2:CreateTags",
            &instance,
            json!({"ec2:CreateAction": "RunInstances", "aws:TagKeys": provenance}),
            &[&deployer],
            &[],
            "Allowed",
        ),
        case(
            "the deployer terminates a managed instance",
            DEPLOYER_ROLE,
            "ec2:TerminateInstances",
            &instance,
            managed(json!({})),
            &[&deployer],
            &[],
            "Allowed",
        ),
        case(
            "the deployer moves the listener",
            DEPLOYER_ROLE,
            "elasticloadbalancing:ModifyListener",
            &listener,
            json!({}),
            &[&deployer],
            &[],
            "Allowed",
        ),
        case(
            "the deployer cannot launch an untagged instance",
            DEPLOYER_ROLE,
            "ec2:RunInstances",
            &instance,
            json!({}),
            &[&deployer],
            &[],
            denied,
        ),
        case(
            "the deployer cannot terminate an unmanaged instance",
            DEPLOYER_ROLE,
            "ec2:TerminateInstances",
            &instance,
            json!({}),
            &[&deployer],
            &[],
            "ImplicitlyDenied",
        ),
        case(
            "the deployer cannot send an SSH key to a managed instance",
            DEPLOYER_ROLE,
            "ec2-instance-connect:SendSSHPublicKey",
            &instance,
            managed(json!({})),
            &[&deployer],
            &[],
            "ImplicitlyDenied",
        ),
        case(
            "the deployer cannot start an SSM session on a managed instance",
            DEPLOYER_ROLE,
            "ssm:StartSession",
            &instance,
            ssm_managed.clone(),
            &[&deployer],
            &[],
            "ImplicitlyDenied",
        ),
        case(
            "the deployer cannot stop a managed instance",
            DEPLOYER_ROLE,
            "ec2:StopInstances",
            &instance,
            managed(json!({})),
            &[&deployer],
            &[],
            "ImplicitlyDenied",
        ),
        // The same "others" statements as an SCP over the account, the deployer's role exempt.
        case(
            "SCP: the deployer launches a managed instance",
            DEPLOYER_ROLE,
            "ec2:RunInstances",
            &instance,
            launch_tags.clone(),
            &[&deployer],
            &[&scp],
            "Allowed",
        ),
        case(
            "SCP: the deployer tags at launch",
            DEPLOYER_ROLE,
            "ec2:CreateTags",
            &instance,
            json!({"ec2:CreateAction": "RunInstances", "aws:TagKeys": provenance}),
            &[&deployer],
            &[&scp],
            "Allowed",
        ),
        case(
            "SCP: the deployer terminates",
            DEPLOYER_ROLE,
            "ec2:TerminateInstances",
            &instance,
            managed(json!({})),
            &[&deployer],
            &[&scp],
            "Allowed",
        ),
        case(
            "SCP: an admin edits a provenance tag",
            ops,
            "ec2:CreateTags",
            &instance,
            managed(json!({"aws:TagKeys": ["immut-service"]})),
            &[&admin],
            &[&scp],
            denied,
        ),
        case(
            "SCP: an admin stops a managed instance",
            ops,
            "ec2:StopInstances",
            &instance,
            managed(json!({})),
            &[&admin],
            &[&scp],
            denied,
        ),
        case(
            "SCP: an admin launches with the managed tags",
            ops,
            "ec2:RunInstances",
            &instance,
            launch_tags,
            &[&admin],
            &[&scp],
            denied,
        ),
    ];
    let results = simulate(&cases);
    let wrong: Vec<String> = cases
        .iter()
        .filter(|c| results.get(c.name).map(String::as_str) != Some(c.expect))
        .map(|c| format!("{}: expected {}, the simulator said {:?}", c.name, c.expect, results.get(c.name)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A moto of this test's own, with IAM enforcement after `free` unchecked calls, stopped by
/// its pid when the test process ends.
struct Moto {
    endpoint: String,
    _watchdog: Mutex<std::process::Child>,
}

fn start_moto(free: usize) -> Moto {
    let python = immut_core::test_tools::python_with("moto.server").unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = format!(
        "\"$IMMUT_MOTO_PYTHON\" -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         trap 'kill $m 2>/dev/null' EXIT; \
         while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done",
        parent = std::process::id()
    );
    let watchdog = Command::new("sh")
        .args(["-c", &script])
        .env("MOTO_ENABLE_AMI_VALIDATION", "true")
        .env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string())
        .env("IMMUT_MOTO_PYTHON", &python)
        .stdin(Stdio::null())
        .spawn()
        .expect("sh starts");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start on {endpoint} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { endpoint, _watchdog: Mutex::new(watchdog) }
}

/// Runs boto3 IAM calls in moto; `script` sees `iam` (a client with `key`) and `args` as
/// `sys.argv[1:]`, and prints JSON.
fn iam(endpoint: &str, key: (&str, &str), script: &str, args: &[&str]) -> Value {
    let python = immut_core::test_tools::python_with("boto3").unwrap_or_else(|e| panic!("{e}"));
    let program = format!(
        "import boto3, json, sys\niam = boto3.client('iam', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\n{script}",
        key.0, key.1
    );
    let out =
        Command::new(python).args(["-c", &program]).args(args).stdin(Stdio::null()).output().expect("python runs");
    assert!(out.status.success(), "boto3 in moto failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// moto matches a statement's Resource against `*` (it does not resolve the request's
/// resource) and skips the condition operators the policy uses, so it can only check the
/// actions: the same Allow statements and actions with `*` resources. The Deny, which only
/// applies under its condition, would refuse every launch without it, so it is left out.
/// Resources and conditions are the simulator's part (the test above).
fn as_moto_evaluates_it(policy: &IamPolicy) -> String {
    let mut policy = policy.clone();
    policy.statements.retain(|s| s.effect == immut_core::guardrails::Effect::Allow);
    for s in &mut policy.statements {
        s.resources = vec!["*".into()];
        s.condition.clear();
    }
    serde_json::to_string(&policy).unwrap()
}

fn provider(endpoint: &str, key: &(String, String)) -> immut_aws::AwsBuilder {
    AwsProvider::builder()
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials(&key.0, &key.1)
        .honours_client_token(false)
        .consistency_window(Duration::ZERO)
}

fn release(service: &str, major: u64, ami: &str) -> Release {
    let artifact = ArtifactSpec::new("web", Version::new(major, 0, 0), ami);
    let spec = LaunchSpec { machine_type: Some("t3.micro".into()), ..LaunchSpec::default() };
    Release::new(service, &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
}

const AMI: &str = "ami-1e749f67";
const AMI_2: &str = "ami-03cf127a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_run_as_a_user_holding_only_the_deployer_policy_and_fail_without_one_action() {
    // Six unchecked calls: two users, their keys and their policies. Everything after is
    // checked against IAM.
    let moto = start_moto(6);
    let policy = deployer_policy(&AwsGuardrailOptions::default()).unwrap();
    let created = iam(
        &moto.endpoint,
        ("bootstrap", "bootstrap"),
        "out = {}\nfor user, doc in [('admin', sys.argv[1]), ('deployer', sys.argv[2])]:\n    iam.create_user(UserName=user)\n    k = iam.create_access_key(UserName=user)['AccessKey']\n    iam.put_user_policy(UserName=user, PolicyName='immut', PolicyDocument=doc)\n    out[user] = [k['AccessKeyId'], k['SecretAccessKey']]\nprint(json.dumps(out))",
        &[
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}"#,
            &as_moto_evaluates_it(&policy),
        ],
    );
    let key =
        |user: &str| (created[user][0].as_str().unwrap().to_owned(), created[user][1].as_str().unwrap().to_owned());
    let (admin_key, deployer_key) = (key("admin"), key("deployer"));

    // The stack is infrastructure code's job: the admin makes it.
    let admin = provider(&moto.endpoint, &admin_key).build().await.unwrap();
    let s = stack::create(&admin, "guard").await.unwrap();
    // Enforcement is on: a user nobody created is refused.
    let stranger = provider(&moto.endpoint, &("AKIAUNKNOWN000000000".into(), "x".into())).build().await.unwrap();
    let refused = stranger.describe(&Query::service("web")).await.unwrap_err();
    assert_eq!(refused.kind(), immut_core::ErrorKind::PermissionDenied, "{refused}");

    let deployer = provider(&moto.endpoint, &deployer_key).build().await.unwrap();
    let retry =
        RetryPolicy { max_retries: 5, min_delay: Duration::from_millis(50), max_delay: Duration::from_millis(300) };

    // Rolling through the blue group.
    let group = deployer.target_group(&s.blue_target_group_arn, Duration::from_secs(1)).unwrap();
    let rolling = Deployer::builder()
        .provider(deployer.clone())
        .traffic(group.clone())
        .health(AllOf::default().and(deployer.status_checks()).and(group.clone()))
        .strategy(Rolling::new().max_surge(Count::Count(1)))
        .desired(2)
        .poll_interval(Duration::from_millis(200))
        .progress_deadline(Duration::from_secs(20))
        .retry(retry)
        .build()
        .unwrap();
    let (v1, v2) = (release("web", 1, AMI), release("web", 2, AMI_2));
    let outcome = rolling.deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let outcome = rolling.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let live = deployer.describe(&Query::service("web")).await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.release() == Some(v2.id())), "v2 replaced v1");

    // Blue/green through the listener of a second stack, on another service.
    let s2 = stack::create(&admin, "guard-bg").await.unwrap();
    let switch = deployer
        .listener_switch(
            &s2.listener_arn,
            &s2.blue_target_group_arn,
            &s2.green_target_group_arn,
            Duration::from_secs(1),
        )
        .unwrap();
    let blue_green = Deployer::builder()
        .provider(deployer.clone())
        .traffic(switch.clone())
        .health(AllOf::default().and(deployer.status_checks()).and(switch.clone()))
        .strategy(BlueGreen::new())
        .desired(2)
        .poll_interval(Duration::from_millis(200))
        .progress_deadline(Duration::from_secs(20))
        .retry(retry)
        .build()
        .unwrap();
    let (a1, a2) = (release("api", 1, AMI), release("api", 2, AMI_2));
    for (v, previous) in [(&a1, None), (&a2, Some(&a1))] {
        let mut d = blue_green.deploy(v.clone());
        if let Some(p) = previous {
            d = d.with_previous(p.clone());
        }
        let outcome = d.run().await;
        assert!(outcome.succeeded(), "{}", outcome.summary());
    }
    let live = deployer.describe(&Query::service("api")).await.unwrap();
    assert!(live.len() == 2 && live.iter().all(|i| i.release() == Some(a2.id())), "{live:?}");
    assert!(deployer.calls().get("ModifyListener").copied().unwrap_or(0) >= 1, "the listener switched");

    // The counterfactual: the same policy without one action. The deployment cannot register
    // its new instances, fails with AccessDenied, and rolls back.
    let mut cut = policy.clone();
    for s in &mut cut.statements {
        s.actions.retain(|a| a != "elasticloadbalancing:RegisterTargets");
    }
    cut.statements.retain(|s| !s.actions.is_empty());
    assert_eq!(cut.actions().len() + 1, policy.actions().len(), "exactly one action is gone");
    iam(
        &moto.endpoint,
        (&admin_key.0, &admin_key.1),
        "iam.put_user_policy(UserName='deployer', PolicyName='immut', PolicyDocument=sys.argv[1])\nprint('{}')",
        &[&as_moto_evaluates_it(&cut)],
    );
    let v3 = release("web", 3, AMI);
    let outcome = rolling.deploy(v3.clone()).with_previous(v2.clone()).run().await;
    let reason = match &outcome.phase {
        Phase::RolledBack { reason } | Phase::Refused { reason } => reason.clone(),
        Phase::RollbackFailed { reason, .. } => reason.clone(),
        other => panic!("the deployment without RegisterTargets must fail: {other:?}"),
    };
    // moto answers ELBv2's AccessDenied in EC2's error format, which the Rust SDK does not
    // parse (boto3 does): the refusal arrives as a bare 403 here, as AccessDenied on AWS.
    assert!(
        reason.contains("RegisterTargets") && (reason.contains("AccessDenied") || reason.contains("HTTP 403")),
        "the failure is the refused action: {reason}"
    );
    let left = deployer.describe(&Query::service("web").with_release(v3.id().clone())).await.unwrap();
    assert!(left.is_empty(), "the rollback terminated v3's instances: {left:?}");
}
