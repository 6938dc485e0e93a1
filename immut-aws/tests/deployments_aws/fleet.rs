//! Fleets past EC2's filter limit, and where unmanaged instances are looked for.

use std::time::{Duration, Instant};

use immut_aws::UnmanagedScope;
use immut_core::audit::Audit;
use immut_core::{BlueGreen, ErrorKind, Provider, Query};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_deployment_of_500_instances() {
    const FLEET: usize = 500;
    let turn = support::turn().await;
    // The proxy refuses, as EC2 does, a filter of more than 200 values.
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, "fleet").await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_millis(200),
        )
        .unwrap();
    let (v1, v2) = (support::release("web", (1, 0, 0), AMI), support::release("web", (2, 0, 0), AMI_2));
    let d = deployer(&provider, &traffic, BlueGreen::new())
        .desired(FLEET)
        .progress_deadline(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = Instant::now();
    let first = d.deploy(v1.clone()).run().await;
    assert!(first.succeeded(), "{}", first.summary());
    let before = provider.calls();
    let outcome = d.deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let calls: std::collections::BTreeMap<String, u64> =
        provider.calls().into_iter().map(|(op, n)| (op.clone(), n - before.get(&op).copied().unwrap_or(0))).collect();
    println!("500-instance blue/green in {:?}: {calls:?}", started.elapsed());

    let serving = traffic.serving().await.unwrap();
    assert_eq!(serving.len(), FLEET);
    let described = provider.describe(&Query::ids(serving.clone())).await.unwrap();
    assert_eq!(described.len(), FLEET, "describe by 500 ids");
    assert!(described.iter().all(|i| i.release() == Some(v2.id())), "only v2 serves");
    assert_eq!(live(&provider, &v1).await, 0, "the 500 old instances are gone");
    assert_eq!(live(&provider, &v2).await, FLEET);
    assert_eq!(calls["RunInstances"], 5, "launches of 100, EC2's batch here");
    assert!(calls["RegisterTargets"] >= 3, "500 targets in chunks of 200: {calls:?}");
    assert!(calls["DeregisterTargets"] >= 3, "500 old targets out in chunks of 200: {calls:?}");
    assert_eq!(calls["ModifyListener"], 1, "one switch for 500 instances");
    let over: Vec<(String, usize)> =
        proxy.injected().into_iter().filter(|(k, _)| k.ends_with(":too_many_filter_values")).collect();
    assert!(over.is_empty(), "every id list was chunked: {over:?}");
}

/// An untagged instance launched by hand into `subnet` (with the tags given).
async fn by_hand(provider: &AwsProvider, subnet: &str, tags: &[(&str, &str)]) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let mut call = provider
        .ec2()
        .run_instances()
        .image_id(AMI)
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet);
    if !tags.is_empty() {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()))
            .build();
        call = call.tag_specifications(spec);
    }
    call.send().await.unwrap().instances()[0].instance_id().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_instances_are_looked_for_in_the_scope_never_in_the_region() {
    let turn = support::turn().await;
    let setup = support::provider(&turn.endpoint).await;
    let (vpc, subnets) = support::default_vpc(&setup).await;
    // Another team's VPC in the same region, with an untagged instance of its own.
    let other_vpc = setup.ec2().create_vpc().cidr_block("10.20.0.0/16").send().await.unwrap();
    let other_vpc = other_vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let other_subnet = setup.ec2().create_subnet().vpc_id(&other_vpc).cidr_block("10.20.1.0/24").send().await.unwrap();
    let other_subnet = other_subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let theirs = by_hand(&setup, &other_subnet, &[("team", "payments")]).await;
    let ours_by_hand = by_hand(&setup, &subnets[0], &[]).await;
    let tagged_in_b = by_hand(&setup, &subnets[1], &[("team", "web")]).await;

    let release = support::release("web", (1, 0, 0), AMI);
    let scoped = |scope: Option<UnmanagedScope>| {
        let mut b = support::builder(&turn.endpoint);
        if let Some(scope) = scope {
            b = b.unmanaged_scope(scope);
        }
        b
    };
    let ids = |found: Vec<immut_core::Instance>| found.into_iter().map(|i| i.id.to_string()).collect::<Vec<_>>();
    let query = Query::service("web").with_unmanaged();

    let by_vpc = scoped(Some(UnmanagedScope::Vpc(vpc.clone()))).build().await.unwrap();
    let found = ids(by_vpc.describe(&query).await.unwrap());
    assert!(found.contains(&ours_by_hand) && found.contains(&tagged_in_b), "{found:?}");
    assert!(!found.contains(&theirs), "another VPC is out of scope: {found:?}");

    let by_subnet = scoped(Some(UnmanagedScope::Subnets(vec![subnets[0].clone()]))).build().await.unwrap();
    assert_eq!(ids(by_subnet.describe(&query).await.unwrap()), vec![ours_by_hand.clone()]);

    let by_tag = scoped(Some(UnmanagedScope::TagKey("team".into()))).build().await.unwrap();
    let found = ids(by_tag.describe(&query).await.unwrap());
    assert!(found.contains(&theirs) && found.contains(&tagged_in_b) && !found.contains(&ours_by_hand), "{found:?}");

    // The launch subnets are the scope when none is set.
    let launching = scoped(None).subnet(subnets[1].clone()).build().await.unwrap();
    assert_eq!(ids(launching.describe(&query).await.unwrap()), vec![tagged_in_b.clone()]);

    // Neither: refused, naming the setting, and nothing was listed.
    let unscoped = scoped(None).build().await.unwrap();
    let e = unscoped.describe(&query).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().starts_with("unmanaged_scope"), "{e}");
    assert!(!unscoped.calls().contains_key("DescribeInstances"), "{:?}", unscoped.calls());
    // Ids bound a query on their own.
    let by_id = unscoped.describe(&Query::ids([InstanceId::new(theirs.as_str())]).with_unmanaged()).await.unwrap();
    assert_eq!(ids(by_id), vec![theirs.clone()]);

    // The audit reports what is in scope as unmanaged, and nothing of the other team's.
    let stack = stack::create(&by_vpc, "scope").await.unwrap();
    let traffic = by_vpc.target_group(&stack.blue_target_group_arn, Duration::from_secs(1)).unwrap();
    let report = Audit::new(&by_vpc, &traffic).run(&release).await.unwrap();
    let unmanaged: Vec<String> =
        report.findings.iter().filter(|f| f.verdict.name() == "unmanaged").map(|f| f.id.to_string()).collect();
    assert!(unmanaged.contains(&ours_by_hand) && unmanaged.contains(&tagged_in_b), "{report:?}");
    assert!(!unmanaged.contains(&theirs), "the audit reached another VPC: {report:?}");
}
