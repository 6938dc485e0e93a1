//! The immut-core conformance suite on EC2 + ELBv2, against a real moto server, with both kinds
//! of traffic: one target group (rolling, canary) and two behind a listener (blue/green). The
//! calls go through the fault proxy, which injects nothing here but refuses, as EC2 does, a
//! filter of more than 200 values. Unmanaged instances are looked for in the default VPC only.

mod support;

use std::sync::Arc;
use std::time::Duration;

use immut_aws::{AwsTraffic, UnmanagedScope, stack};
use immut_core::conformance::{Harness, hand_launch};
use immut_core::semver::Version;
use immut_core::{AllOf, BaselineSpec, Error, ErrorKind, FnCheck, Health, Instance, InstanceId, Release};

/// What TerminateInstances takes per call here: low, so that `terminate_all_batches` crosses the
/// batch boundary with 5 instances instead of 1001.
const TERMINATE_BATCH: usize = 4;

#[derive(Clone, Copy)]
enum Mode {
    TargetGroup,
    Listener,
}

async fn harness(mode: Mode) -> Harness {
    let turn = support::turn().await;
    let proxy = support::FaultProxy::start(&turn.endpoint).await;
    let setup = support::builder(&proxy.endpoint).build().await.unwrap();
    let (vpc, _) = support::default_vpc(&setup).await;
    let provider = support::builder(&proxy.endpoint)
        .max_terminate_batch(TERMINATE_BATCH)
        .unmanaged_scope(UnmanagedScope::Vpc(vpc))
        .build()
        .await
        .unwrap();
    let stack = stack::create(&provider, "conformance").await.unwrap();
    let traffic: AwsTraffic = match mode {
        Mode::TargetGroup => provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(10)).unwrap(),
        // A short drain: every switch waits it out before returning.
        Mode::Listener => provider
            .listener_switch(
                &stack.listener_arn,
                &stack.blue_target_group_arn,
                &stack.green_target_group_arn,
                Duration::from_millis(300),
            )
            .unwrap(),
    };
    let with_team = |release: Release| {
        let mut spec = release.baseline().spec.clone();
        spec.labels.insert("team".into(), "platform".into());
        Release::new("conf", release.artifact(), &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
    };
    let release = with_team(support::release("conf", (1, 0, 0), support::AMI));
    let next_release = with_team(support::release("conf", (2, 0, 1), support::AMI_2));
    let unhealthy_release = with_team(support::release("conf", (2, 0, 0), support::AMI_2));
    // moto runs no software on its instances and reports every target healthy, so the failing
    // application behind the unhealthy release is played by this check.
    let failing = unhealthy_release.id().clone();
    let application = FnCheck(move |i: &Instance| {
        if i.release() == Some(&failing) {
            Health::Unhealthy("GET /healthz answered 500 (the release's application is broken)".into())
        } else {
            Health::Healthy
        }
    });
    let health = AllOf::default().and(provider.status_checks()).and(traffic.clone()).and(application);
    let ec2 = provider.ec2().clone();
    Harness {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(traffic),
        health: Arc::new(health),
        release,
        next_release,
        unhealthy_release,
        bad_releases: vec![(
            "an AMI that does not exist".into(),
            support::release("conf", (1, 0, 0), "ami-0123456789abcdef0"),
        )],
        // A bare RunInstances without tags, as from the console.
        launch_by_hand: hand_launch(move || {
            let ec2 = ec2.clone();
            async move {
                let out = ec2
                    .run_instances()
                    .image_id(support::AMI)
                    .instance_type("t3.micro".into())
                    .min_count(1)
                    .max_count(1)
                    .send()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Unavailable, format!("RunInstances by hand: {e}")))?;
                let id = out.instances().first().and_then(|i| i.instance_id()).unwrap_or_default();
                Ok(InstanceId::new(id))
            }
        }),
        adopt: Some(Arc::new(provider)),
        settle: Duration::from_secs(15),
        keep_alive: vec![Arc::new(turn)],
    }
}

/// Traffic through one target group.
mod target_group {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::TargetGroup).await
    }
    immut_core::conformance_tests!(harness);
}

/// Blue/green traffic: two target groups behind a listener.
mod listener {
    async fn harness() -> immut_core::conformance::Harness {
        super::harness(super::Mode::Listener).await
    }
    immut_core::conformance_tests!(harness);
}
