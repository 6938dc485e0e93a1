//! Launch options as RunInstances receives them and EC2 applies them, zones without
//! capacity, stalled calls, and credentials.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use immut_aws::Timeouts;
use immut_core::semver::Version;
use immut_core::{
    ArtifactSpec, BaselineSpec, DeploymentId, ErrorKind, LaunchRequest, LaunchSpec, LaunchToken, Provider,
};

use super::*;

fn release_with(params: &[(&str, &str)], machine_type: Option<&str>) -> Release {
    let spec = LaunchSpec {
        machine_type: machine_type.map(str::to_owned),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..LaunchSpec::default()
    };
    Release::new(
        "opts",
        &ArtifactSpec::new("web", Version::new(1, 0, 0), AMI),
        &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
    )
    .unwrap()
}

fn request(release: &Release, count: usize, token: &str) -> LaunchRequest {
    LaunchRequest::new(Arc::new(release.clone()), count, &DeploymentId::new("d-opts"), LaunchToken::new(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_options_reach_run_instances_and_ec2_applies_them() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let (vpc, _) = support::default_vpc(&provider).await;
    let ec2 = provider.ec2();
    let sg = ec2.create_security_group().group_name("web").description("web").vpc_id(&vpc).send().await.unwrap();
    let sg = sg.group_id().unwrap().to_owned();
    support::create_instance_profile(&turn.endpoint, "web-profile");
    use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
    ec2.create_launch_template()
        .launch_template_name("web-lt")
        .launch_template_data(
            RequestLaunchTemplateData::builder().image_id(AMI_2).instance_type(InstanceType::T3Small).build(),
        )
        .send()
        .await
        .unwrap();

    let release = release_with(
        &[
            ("launch_template", "web-lt"),
            ("launch_template_version", "1"),
            ("security_groups", &sg),
            ("instance_profile", "web-profile"),
            ("ebs_size_gib", "20"),
            ("ebs_type", "gp3"),
            ("ebs_encrypted", "true"),
            ("spot", "true"),
        ],
        None,
    );
    let launched = provider.launch(&request(&release, 2, "t-opts")).await.unwrap();
    assert_eq!(launched.len(), 2);
    let form = &proxy.requests("RunInstances").pop().unwrap().form;
    let want: BTreeMap<&str, &str> = [
        ("ImageId", AMI),
        ("LaunchTemplate.LaunchTemplateName", "web-lt"),
        ("LaunchTemplate.Version", "1"),
        ("SecurityGroupId.1", sg.as_str()),
        ("IamInstanceProfile.Name", "web-profile"),
        ("MetadataOptions.HttpTokens", "required"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "20"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.Encrypted", "true"),
        ("InstanceMarketOptions.MarketType", "spot"),
        ("MinCount", "2"),
        ("MaxCount", "2"),
    ]
    .into();
    for (key, value) in &want {
        assert_eq!(form.get(*key).map(String::as_str), Some(*value), "{key} in {form:#?}");
    }
    assert!(!form.contains_key("InstanceType"), "the template's instance type applies: {form:#?}");

    // As EC2 (moto) applied them.
    let ids: Vec<String> = launched.iter().map(|i| i.id.to_string()).collect();
    let described = ec2.describe_instances().set_instance_ids(Some(ids)).send().await.unwrap();
    let instances: Vec<_> = described.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert_eq!(i.image_id(), Some(AMI), "the artifact's AMI overrides the template's");
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"), "the template's type");
        assert!(i.security_groups().iter().any(|g| g.group_id() == Some(sg.as_str())));
        assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
        assert_eq!(i.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str()), Some("required"));
    }
    // moto 5.2.5 associates the profile with the first instance of a reservation only (its
    // run_instances handler); the request above carries it for every instance, as EC2 applies it.
    let profiled = instances
        .iter()
        .filter(|i| i.iam_instance_profile().and_then(|p| p.arn()).is_some_and(|a| a.ends_with("/web-profile")))
        .count();
    assert!(profiled >= 1, "the instance profile was applied: {instances:#?}");

    // IMDSv2 is required by default, and a baseline may opt out.
    provider.launch(&request(&release_with(&[], Some("t3.micro")), 1, "t-default")).await.unwrap();
    let form = &proxy.requests("RunInstances").pop().unwrap().form;
    assert_eq!(form.get("MetadataOptions.HttpTokens").map(String::as_str), Some("required"));
    assert_eq!(form.get("InstanceType").map(String::as_str), Some("t3.micro"));
    provider.launch(&request(&release_with(&[("imdsv2", "optional")], None), 1, "t-v1")).await.unwrap();
    let form = &proxy.requests("RunInstances").pop().unwrap().form;
    assert_eq!(form.get("MetadataOptions.HttpTokens").map(String::as_str), Some("optional"));

    // An unknown key fails before any call, naming it.
    let sent = proxy.requests("RunInstances").len();
    let typo = release_with(&[("security_group", &sg)], None);
    let e = provider.launch(&request(&typo, 1, "t-typo")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().starts_with("baseline.params.security_group:"), "{e}");
    assert_eq!(proxy.requests("RunInstances").len(), sent, "nothing was launched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_without_capacity_passes_its_share_to_the_next_subnet() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let setup = support::provider(&proxy.endpoint).await;
    let (_, subnets) = support::default_vpc(&setup).await;
    let (a, b, c) = (subnets[0].clone(), subnets[1].clone(), subnets[2].clone());
    let provider = support::builder(&proxy.endpoint).subnets([a.clone(), b.clone(), c.clone()]).build().await.unwrap();
    let release = support::release("spread", (1, 0, 0), AMI);
    let subnet_of = |provider: &AwsProvider, ids: Vec<String>| {
        let ec2 = provider.ec2().clone();
        async move {
            let out = ec2.describe_instances().set_instance_ids(Some(ids)).send().await.unwrap();
            let mut by_subnet: BTreeMap<String, usize> = BTreeMap::new();
            for i in out.reservations().iter().flat_map(|r| r.instances()) {
                *by_subnet.entry(i.subnet_id().unwrap().to_owned()).or_default() += 1;
            }
            by_subnet
        }
    };
    let ids = |launched: &[immut_core::Instance]| launched.iter().map(|i| i.id.to_string()).collect::<Vec<_>>();

    // Every zone has capacity: the wave is split evenly, one RunInstances per subnet.
    let launched = provider.launch(&request(&release, 6, "t-even")).await.unwrap();
    let spread = subnet_of(&provider, ids(&launched)).await;
    assert_eq!(spread, [(a.clone(), 2), (b.clone(), 2), (c.clone(), 2)].into());

    // Zone a has none: its share goes to the next subnet, and the launch succeeds whole.
    proxy.no_capacity_in(&a, "InsufficientInstanceCapacity");
    let launched = provider.launch(&request(&release, 6, "t-short")).await.unwrap();
    assert_eq!(launched.len(), 6);
    let spread = subnet_of(&provider, ids(&launched)).await;
    assert_eq!(spread.get(&a), None, "{spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 6);
    assert_eq!(proxy.injected()[&format!("RunInstances:no_capacity:{a}")], 1);

    // The next launch (a rollback's relaunch, say) leaves zone a out instead of hitting it again.
    let launched = provider.launch(&request(&release, 4, "t-again")).await.unwrap();
    assert_eq!(subnet_of(&provider, ids(&launched)).await, [(b.clone(), 2), (c.clone(), 2)].into());
    assert_eq!(proxy.injected()[&format!("RunInstances:no_capacity:{a}")], 1, "zone a was not asked again");

    // A subnet out of addresses counts the same; with no subnet left, the launch fails closed.
    proxy.no_capacity_in(&b, "InsufficientFreeAddressesInSubnet");
    proxy.no_capacity_in(&c, "InsufficientInstanceCapacity");
    let before = provider.describe(&Query::service("spread")).await.unwrap().len();
    let e = provider.launch(&request(&release, 3, "t-none")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
    assert!(!e.is_retryable());
    assert!(e.message().contains(&a) && e.message().contains(&b) && e.message().contains(&c), "{e}");
    assert!(e.message().contains("InsufficientFreeAddressesInSubnet"), "{e}");
    assert_eq!(provider.describe(&Query::service("spread")).await.unwrap().len(), before, "nothing launched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_times_out_and_is_retryable() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let timeouts =
        Timeouts { connect: None, attempt: Some(Duration::from_millis(300)), operation: Some(Duration::from_secs(1)) };
    let provider = support::builder(&proxy.endpoint).timeouts(timeouts).build().await.unwrap();
    proxy.plan("DescribeInstances", FaultPlan { stall: 1, stall_for: Duration::from_secs(5), ..FaultPlan::default() });
    let started = Instant::now();
    let e = provider.describe(&Query::service("web")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "the call waited {:?}", started.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable() && e.message().contains("timed out"), "{e}");
    // The next call goes through.
    assert!(provider.describe(&Query::service("web")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_process_profile_works_and_missing_credentials_are_named() {
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;

    // A profile whose credentials come from a command, as `credential_process` profiles do.
    let dir = std::env::temp_dir().join(format!("immut-aws-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (script, ran, config) = (dir.join("creds.sh"), dir.join("ran"), dir.join("config"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"testing\", \"SecretAccessKey\": \"testing\"}}'\n",
            ran.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&config, format!("[profile immut-proc]\ncredential_process = {}\n", script.display())).unwrap();
    let profile = ProfileFileCredentialsProvider::builder()
        .profile_files(EnvConfigFiles::builder().with_file(EnvConfigFileKind::Config, &config).build())
        .profile_name("immut-proc")
        .build();
    let provider = AwsProvider::builder()
        .region("us-east-1")
        .endpoint_url(&proxy.endpoint)
        .credentials_provider(profile)
        .check_credentials(true)
        .build()
        .await
        .unwrap();
    assert!(ran.exists(), "build() resolved the credentials by running the profile's command");
    assert!(provider.describe(&Query::service("web")).await.unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();

    /// Finds nothing, as the default chain does on a machine without credentials.
    #[derive(Debug)]
    struct Nothing;
    impl ProvideCredentials for Nothing {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )))
        }
    }
    let nothing = AwsProvider::builder()
        .region("us-east-1")
        .endpoint_url(&proxy.endpoint)
        .credentials_provider(Nothing)
        .build()
        .await
        .unwrap();
    let sent = proxy.requests("DescribeInstances").len();
    let e = nothing.describe(&Query::service("web")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "not a connection failure: {e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("no AWS credentials were found") && e.message().contains("AWS_PROFILE"), "{e}");
    assert_eq!(proxy.requests("DescribeInstances").len(), sent, "no unsigned request went out");
}
