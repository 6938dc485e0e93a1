//! Web identity credentials (EKS service accounts, GitHub Actions OIDC) from the SDK's standard
//! environment, against moto's STS: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN` and
//! `AWS_ROLE_SESSION_NAME`, with `AWS_ENDPOINT_URL` pointing every service, STS included, at
//! the emulator. The environment of a process is its own, so the deployment runs in a child
//! process (this test binary again, running only this test) whose environment holds those
//! variables and no static keys, no profile files and no instance metadata.

use super::*;

/// Set in the child: run the deployment instead of starting one.
const CHILD: &str = "IMMUT_TEST_WEB_IDENTITY_CHILD";
const ROLE: &str = "arn:aws:iam::123456789012:role/immut-deployer";
const SESSION: &str = "immut-web-identity-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_from_the_standard_environment_run_a_deployment() {
    if std::env::var_os(CHILD).is_some() {
        return deploy_with_the_environment_s_credentials().await;
    }
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let dir = std::env::temp_dir().join(format!("immut-aws-web-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    // moto accepts any token; AWS would verify this JWT with the role's OIDC provider.
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6d2ViIn0.c2lnbmF0dXJl")
        .unwrap();
    let test = "web_identity::web_identity_credentials_from_the_standard_environment_run_a_deployment";
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // No ~/.aws of the machine: the profile files named here do not exist.
        .env("HOME", &dir)
        .env("AWS_CONFIG_FILE", dir.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .env("AWS_ROLE_ARN", ROLE)
        .env("AWS_ROLE_SESSION_NAME", SESSION)
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env(CHILD, "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The secrets are checked before anything of the child's output is shown.
    assert!(proxy.issued_secrets() >= 2, "STS issued no session through the endpoint");
    assert!(
        !proxy.shows_an_issued_secret(&stdout) && !proxy.shows_an_issued_secret(&stderr),
        "the child's output (Debug of the provider, events, outcome) shows a secret of the session"
    );
    assert!(out.status.success(), "the deployment with web identity credentials failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran the deployment: {stdout}");

    // The SDK traded the token for a session at STS (unsigned, as AssumeRoleWithWebIdentity is) ...
    let assumed = proxy.requests("AssumeRoleWithWebIdentity");
    assert!(!assumed.is_empty(), "no AssumeRoleWithWebIdentity reached the endpoint");
    let form = &assumed[0].form;
    assert_eq!(form.get("RoleArn").map(String::as_str), Some(ROLE));
    assert_eq!(form.get("RoleSessionName").map(String::as_str), Some(SESSION));
    assert!(form.get("WebIdentityToken").is_some_and(|t| t.starts_with("eyJ")), "the token file's content is sent");
    // ... and signed every EC2 and ELB call with that session (moto's temporary keys start
    // ASIA, as AWS's do), never with a static key.
    let signed: Vec<(String, support::Seen)> =
        proxy.all_requests().into_iter().filter(|(a, _)| a != "AssumeRoleWithWebIdentity").collect();
    for action in ["RunInstances", "DescribeInstances", "RegisterTargets", "ModifyListener", "DescribeTargetHealth"] {
        assert!(signed.iter().any(|(a, _)| a == action), "the deployment made no {action}");
    }
    for (action, seen) in &signed {
        let key = seen.access_key_id.as_deref().unwrap_or("none");
        assert!(key.starts_with("ASIA"), "{action} was signed with {key}, not the web identity session's key");
        assert!(seen.issued_session, "{action} did not carry the session token STS issued");
    }
}

/// In the child: the provider from the standard environment alone, a demo stack and a
/// blue/green deployment of two instances through it.
async fn deploy_with_the_environment_s_credentials() {
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"] {
        assert!(std::env::var_os(name).is_none(), "{name} is set in the child");
    }
    let config = immut_aws::AwsConfig::from_env().unwrap();
    assert!(config.credentials.is_none(), "no static credentials in the configuration");
    let provider = immut_aws::AwsBuilder::from_config(config)
        .honours_client_token(false)
        .consistency_window(Duration::ZERO)
        .check_credentials(true)
        .build()
        .await
        .unwrap_or_else(|e| panic!("build() with web identity credentials: {e}"));
    // Printed for the parent to search for the session's secrets.
    println!("provider: {provider:?}");

    let stack = stack::create(&provider, "web-identity").await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_millis(200),
        )
        .unwrap();
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new()).desired(2).build().unwrap();
    let first = d.deploy(v1.clone()).run_with(|e| println!("{e:?}")).await;
    assert!(first.succeeded(), "{}", first.summary());
    let second = d.deploy(v2.clone()).with_previous(v1).run_with(|e| println!("{e:?}")).await;
    println!("{second:?}");
    assert!(second.succeeded(), "{}", second.summary());
    assert_eq!(live(&provider, &v2).await, 2);
    println!("deployed with web identity credentials");
}
