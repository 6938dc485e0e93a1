//! Rollback readiness on moto: the previous release's AMI is deregistered once traffic has
//! moved, and the deployment stops before it terminates any old instance (checked on the
//! TerminateInstances requests moto received, and on moto's instance states). A second run
//! with `accept_no_way_back` finishes the clean-up.

mod support;

use std::time::Duration;

use immut_aws::{AwsProvider, AwsTraffic, stack};
use immut_core::engine::{Event, RetryPolicy};
use immut_core::{AllOf, BlueGreen, Deployer, Phase, Provider, Query, Readiness, Release, Traffic};
use support::{AMI, AMI_2, FaultProxy};

const N: usize = 3;

fn deployer(provider: &AwsProvider, traffic: &AwsTraffic, accept: bool) -> Deployer {
    Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .health(AllOf::default().and(provider.status_checks()).and(traffic.clone()))
        .strategy(BlueGreen::new())
        .desired(N)
        .poll_interval(Duration::from_millis(200))
        .progress_deadline(Duration::from_secs(20))
        .retry(RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        })
        .accept_no_way_back(accept)
        .build()
        .unwrap()
}

async fn ids_of(provider: &AwsProvider, release: &Release) -> Vec<String> {
    let q = Query::service("web").with_release(release.id().clone());
    let mut ids: Vec<String> = provider.describe(&q).await.unwrap().into_iter().map(|i| i.id.to_string()).collect();
    ids.sort();
    ids
}

/// Every instance id that moto was asked to terminate, through the proxy.
fn terminate_requested(proxy: &FaultProxy) -> Vec<String> {
    let requests = proxy.requests("TerminateInstances");
    requests
        .iter()
        .flat_map(|r| r.form.iter().filter(|(k, _)| k.starts_with("InstanceId.")).map(|(_, v)| v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_ami_deregistered_midway_keeps_the_old_instances_until_accepted() {
    let turn = support::turn().await;
    let proxy = FaultProxy::start(&turn.endpoint).await;
    let provider = support::provider(&proxy.endpoint).await;
    let stack = stack::create(&provider, "ready").await.unwrap();
    let traffic = provider
        .listener_switch(
            &stack.listener_arn,
            &stack.blue_target_group_arn,
            &stack.green_target_group_arn,
            Duration::from_secs(5),
        )
        .unwrap();
    // An AMI of this test's own, made from a throw-away instance, so deregistering it touches nothing else.
    let ec2 = provider.ec2().clone();
    let run = ec2.run_instances().image_id(AMI).min_count(1).max_count(1).send().await.unwrap();
    let seed = run.instances()[0].instance_id().unwrap().to_owned();
    let made = ec2.create_image().instance_id(&seed).name("immut-readiness-1-0-0").send().await.unwrap();
    let image = made.image_id().unwrap().to_owned();
    ec2.terminate_instances().instance_ids(&seed).send().await.unwrap();

    let (v1, v2) = (support::release("web", (1, 0, 0), &image), support::release("web", (2, 0, 0), AMI_2));
    assert!(deployer(&provider, &traffic, false).deploy(v1.clone()).run().await.succeeded());
    assert_eq!(provider.readiness(&v1).await.unwrap(), Readiness::ready());
    let old = ids_of(&provider, &v1).await;
    assert_eq!(old.len(), N);

    let mut d = deployer(&provider, &traffic, false).deploy(v2.clone()).with_previous(v1.clone());
    let (mut deregistered, mut events) = (false, Vec::new());
    let outcome = loop {
        let done = d.step().await;
        for e in d.take_events() {
            // Someone deregisters the old AMI once traffic has moved to the new release.
            if matches!(e, Event::Switched { .. }) && !deregistered {
                ec2.deregister_image().image_id(&image).send().await.unwrap();
                deregistered = true;
            }
            events.push(e);
        }
        if let Some(outcome) = done {
            break outcome;
        }
    };
    assert!(deregistered, "the deployment switched traffic");
    let Phase::NoWayBack { reason } = &outcome.phase else { panic!("{}", outcome.summary()) };
    assert!(reason.contains(&image) && reason.contains("accept_no_way_back"), "{reason}");
    let asked = terminate_requested(&proxy);
    assert!(old.iter().all(|id| !asked.contains(id)), "no TerminateInstances named an old instance: {asked:?}");
    let states = ec2.describe_instances().set_instance_ids(Some(old.clone())).send().await.unwrap();
    let running: Vec<_> = states
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
        .collect();
    assert_eq!(running.len(), N, "moto still runs every old instance");
    let serving = traffic.serving().await.unwrap();
    let new = ids_of(&provider, &v2).await;
    assert_eq!(new.len(), N);
    assert!(new.iter().all(|id| serving.iter().any(|s| s.as_str() == id)), "the new release keeps its traffic");
    let gone = provider.readiness(&v1).await.unwrap();
    assert!(gone.is_blocked(), "{gone:?}");

    let outcome = deployer(&provider, &traffic, true).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(ids_of(&provider, &v1).await.is_empty(), "the accepted run terminated the old release");
    let asked = terminate_requested(&proxy);
    assert!(old.iter().all(|id| asked.contains(id)), "{asked:?}");
}
