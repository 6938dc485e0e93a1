//! The immut-core conformance suite on EC2 + ELBv2, against a real moto server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use immut_aws::stack;
use immut_core::conformance::Harness;

async fn harness() -> Harness {
    let turn = support::turn().await;
    let provider = support::provider(&turn.endpoint).await;
    let stack = stack::create(&provider, "conformance").await.unwrap();
    let traffic = provider.target_group(&stack.blue_target_group_arn, Duration::from_secs(10)).unwrap();
    let mut release = support::release("conf", (1, 0, 0), support::AMI);
    let mut spec = release.baseline().spec.clone();
    spec.labels.insert("team".into(), "platform".into());
    release = immut_core::Release::new(
        "conf",
        release.artifact(),
        &immut_core::BaselineSpec::new("base", immut_core::semver::Version::new(1, 0, 0), spec),
    )
    .unwrap();
    Harness {
        provider: Arc::new(provider),
        traffic: Arc::new(traffic),
        release,
        bad_releases: vec![(
            "an AMI that does not exist".into(),
            support::release("conf", (1, 0, 0), "ami-0123456789abcdef0"),
        )],
        settle: Duration::from_secs(15),
        keep_alive: vec![Arc::new(turn)],
    }
}

immut_core::conformance_tests!(harness);
