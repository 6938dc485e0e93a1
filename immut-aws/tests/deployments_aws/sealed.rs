//! Sealed instances: no key pair, IMDSv2 on one hop, as moto received and applied them; a key
//! pair with a sealed baseline is refused before any call; and an out-of-band
//! ModifyInstanceMetadataOptions that turns tokens off is what the audit names.

use aws_sdk_ec2::types::HttpTokensState;
use immut_core::audit::{Audit, Verdict};
use immut_core::{ArtifactSpec, BaselineSpec, LaunchSpec};

use super::*;

fn sealed(service: &str, params: &[(&str, &str)]) -> Release {
    let spec = LaunchSpec {
        machine_type: Some("t3.micro".into()),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        sealed: true,
        ..LaunchSpec::default()
    };
    Release::new(
        service,
        &ArtifactSpec::new("web", immut_core::semver::Version::new(1, 0, 0), AMI),
        &BaselineSpec::new("base", immut_core::semver::Version::new(1, 0, 0), spec),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_instances_launch_without_a_way_in_and_a_reopened_one_is_audited() {
    let (turn, provider, _stack, traffic) = listener_stack("sealed").await;
    let release = sealed("web", &[]);
    let d = deployer(&provider, &traffic, BlueGreen::new()).build().unwrap();
    let outcome = d.deploy(release.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());

    // What EC2 (moto) applied, read with DescribeInstances past the provider.
    let ids: Vec<String> =
        provider.describe(&Query::service("web")).await.unwrap().iter().map(|i| i.id.to_string()).collect();
    assert_eq!(ids.len(), N);
    let described = provider.ec2().describe_instances().set_instance_ids(Some(ids.clone())).send().await.unwrap();
    let instances: Vec<_> = described.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), N);
    for i in &instances {
        assert_eq!(i.key_name(), None, "no key pair: {i:#?}");
        let m = i.metadata_options().expect("EC2 reports the metadata options");
        assert_eq!(m.http_tokens(), Some(&HttpTokensState::Required));
        assert_eq!(m.http_put_response_hop_limit(), Some(1));
        assert_eq!(m.http_endpoint().map(|e| e.as_str()), Some("enabled"));
    }
    // The auditor reads EC2 afresh every time, so the change below shows at once, and looks
    // for unmanaged instances in the default VPC.
    let (vpc, _) = support::default_vpc(&provider).await;
    let auditor = support::builder(&turn.endpoint)
        .read_ttl(Duration::ZERO)
        .unmanaged_scope(immut_aws::UnmanagedScope::Vpc(vpc))
        .build()
        .await
        .unwrap();
    let audit = Audit::new(&auditor, &traffic);
    let report = audit.run(&release).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());

    // Someone turns IMDSv1 back on for one instance, as ModifyInstanceMetadataOptions does.
    provider
        .ec2()
        .modify_instance_metadata_options()
        .instance_id(&ids[0])
        .http_tokens(HttpTokensState::Optional)
        .send()
        .await
        .unwrap();
    let report = audit.run(&release).await.unwrap();
    let finding = report.findings.iter().find(|f| f.id.as_str() == ids[0]).unwrap();
    assert_eq!(
        finding.verdict,
        Verdict::Unsealed { opened: vec!["metadata without token (HttpTokens=optional)".to_owned()] },
        "{}",
        report.table()
    );
    assert_eq!(report.offenders().len(), 1, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pair_or_imdsv1_with_a_sealed_baseline_is_refused_before_any_call() {
    let turn = support::turn().await;
    let provider = support::provider(&turn.endpoint).await;
    for (params, field) in [
        (vec![("key_name", "ops")], "baseline.params.key_name"),
        (vec![("imdsv2", "optional")], "baseline.params.imdsv2"),
    ] {
        let release = sealed("web", &params);
        let request = immut_core::LaunchRequest::new(
            Arc::new(release),
            1,
            &immut_core::DeploymentId::new("d-sealed"),
            immut_core::LaunchToken::new("t-sealed"),
        );
        let e = provider.launch(&request).await.unwrap_err();
        assert_eq!(e.kind(), immut_core::ErrorKind::InvalidInput);
        assert!(e.to_string().contains(field) && e.to_string().contains("baseline.sealed"), "{e}");
    }
    let options = immut_aws::LaunchOptions { key_name: Some("ops".into()), ..Default::default() };
    let configured = support::builder(&turn.endpoint).launch_options(options).build().await.unwrap();
    let request = immut_core::LaunchRequest::new(
        Arc::new(sealed("web", &[])),
        1,
        &immut_core::DeploymentId::new("d-sealed"),
        immut_core::LaunchToken::new("t-sealed"),
    );
    let e = configured.launch(&request).await.unwrap_err();
    assert!(e.to_string().contains("launch.key_name") && e.to_string().contains("baseline.sealed"), "{e}");
    assert!(provider.calls().is_empty() && configured.calls().is_empty(), "no call was made");
}
