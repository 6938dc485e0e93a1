//! A blue/green stack in the default VPC for demos and tests: an application load balancer,
//! two target groups and a listener whose default action is a weighted forward to both (blue at
//! full weight, green at 0, so ELB health-checks both). On a real account you would keep these
//! in your infrastructure code; against an emulator the example and the tests create them here.
//!
//! [`create`] is find-or-create: run again with the same name, it returns the same resources,
//! so a rerun against the same emulator does not trip over `DuplicateTargetGroupName`. Every
//! call is paced, counted and retried like the provider's own.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, LoadBalancerTypeEnum, ProtocolEnum, TargetGroupAttribute,
    TargetGroupTuple, TargetTypeEnum,
};
use immut_core::{Error, ErrorKind, Result};

use crate::client::{Pace, map_error, retried};
use crate::provider::AwsProvider;

/// The resources of a demo stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// The default VPC.
    pub vpc_id: String,
    /// Its subnets, one per availability zone.
    pub subnet_ids: Vec<String>,
    /// The load balancer.
    pub load_balancer_arn: String,
    /// The listener (HTTP :80).
    pub listener_arn: String,
    /// The target group that serves at first (weight 999).
    pub blue_target_group_arn: String,
    /// The other target group (weight 0: probed, no traffic).
    pub green_target_group_arn: String,
}

/// How the stack's target groups are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackOptions {
    /// The groups' deregistration delay (default 5 s; ELB's own default is 300 s).
    pub deregistration_delay: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions { deregistration_delay: Duration::from_secs(5) }
    }
}

/// Finds or creates a stack named `name` (at most 20 characters: ELBv2 names are short).
pub async fn create(provider: &AwsProvider, name: &str) -> Result<Stack> {
    create_with(provider, name, &StackOptions::default()).await
}

/// [`create`] with options.
pub async fn create_with(provider: &AwsProvider, name: &str, options: &StackOptions) -> Result<Stack> {
    if name.is_empty() || name.len() > 20 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::invalid("name", format!("{name:?}: use 1 to 20 letters, digits or '-'")));
    }
    let clients = &provider.clients;
    let (ec2, elb) = (&clients.ec2, &clients.elb);
    let vpc_id = retried("DescribeVpcs", || async {
        clients.pace(Pace::Describe, "DescribeVpcs").await;
        let out = ec2
            .describe_vpcs()
            .filters(Filter::builder().name("is-default").values("true").build())
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeVpcs"))?;
        Ok(out.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_owned))
    })
    .await?
    .ok_or_else(|| Error::invalid("vpc", "this region has no default VPC; create the stack with your own tooling"))?;
    let mut subnet_ids: Vec<(String, String)> = retried("DescribeSubnets", || async {
        clients.pace(Pace::Describe, "DescribeSubnets").await;
        let out = ec2
            .describe_subnets()
            .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeSubnets"))?;
        Ok(out
            .subnets()
            .iter()
            .filter_map(|s| Some((s.availability_zone()?.to_owned(), s.subnet_id()?.to_owned())))
            .collect())
    })
    .await?;
    subnet_ids.sort();
    let subnet_ids: Vec<String> = subnet_ids.into_iter().map(|(_, id)| id).collect();
    if subnet_ids.len() < 2 {
        return Err(Error::invalid("vpc", "the default VPC needs two subnets for a load balancer"));
    }

    let lb_name = format!("{name}-lb");
    let found = retried("DescribeLoadBalancers", || async {
        clients.pace(Pace::Describe, "DescribeLoadBalancers").await;
        match elb.describe_load_balancers().names(&lb_name).send().await {
            Ok(out) => Ok(out.load_balancers().first().and_then(|l| l.load_balancer_arn()).map(str::to_owned)),
            Err(e) => match map_error(e, "DescribeLoadBalancers") {
                e if e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    })
    .await?;
    let load_balancer_arn = match found {
        Some(arn) => arn,
        None => {
            retried("CreateLoadBalancer", || async {
                clients.pace(Pace::Mutate, "CreateLoadBalancer").await;
                let out = elb
                    .create_load_balancer()
                    .name(&lb_name)
                    .r#type(LoadBalancerTypeEnum::Application)
                    .set_subnets(Some(subnet_ids[..2].to_vec()))
                    .send()
                    .await
                    .map_err(|e| map_error(e, "CreateLoadBalancer"))?;
                Ok(out.load_balancers().first().and_then(|l| l.load_balancer_arn()).unwrap_or_default().to_owned())
            })
            .await?
        }
    };

    let mut groups = Vec::new();
    for color in ["blue", "green"] {
        let tg_name = format!("{name}-{color}");
        let found = retried("DescribeTargetGroups", || async {
            clients.pace(Pace::Describe, "DescribeTargetGroups").await;
            match elb.describe_target_groups().names(&tg_name).send().await {
                Ok(out) => Ok(out.target_groups().first().and_then(|t| t.target_group_arn()).map(str::to_owned)),
                Err(e) => match map_error(e, "DescribeTargetGroups") {
                    e if e.kind() == ErrorKind::NotFound => Ok(None),
                    e => Err(e),
                },
            }
        })
        .await?;
        let arn = match found {
            Some(arn) => arn,
            None => {
                retried("CreateTargetGroup", || async {
                    clients.pace(Pace::Mutate, "CreateTargetGroup").await;
                    let out = elb
                        .create_target_group()
                        .name(&tg_name)
                        .protocol(ProtocolEnum::Http)
                        .port(80)
                        .vpc_id(&vpc_id)
                        .target_type(TargetTypeEnum::Instance)
                        .health_check_path("/")
                        .health_check_interval_seconds(5)
                        .healthy_threshold_count(2)
                        .send()
                        .await
                        .map_err(|e| map_error(e, "CreateTargetGroup"))?;
                    Ok(out.target_groups().first().and_then(|t| t.target_group_arn()).unwrap_or_default().to_owned())
                })
                .await?
            }
        };
        retried("ModifyTargetGroupAttributes", || async {
            clients.pace(Pace::Mutate, "ModifyTargetGroupAttributes").await;
            elb.modify_target_group_attributes()
                .target_group_arn(&arn)
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.timeout_seconds")
                        .value(options.deregistration_delay.as_secs().to_string())
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_error(e, "ModifyTargetGroupAttributes"))
        })
        .await?;
        groups.push(arn);
    }

    let existing = retried("DescribeListeners", || async {
        clients.pace(Pace::Describe, "DescribeListeners").await;
        let out = elb
            .describe_listeners()
            .load_balancer_arn(&load_balancer_arn)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeListeners"))?;
        Ok(out.listeners().iter().find(|l| l.port() == Some(80)).and_then(|l| l.listener_arn()).map(str::to_owned))
    })
    .await?;
    let listener_arn = match existing {
        Some(arn) => arn,
        None => {
            retried("CreateListener", || async {
                clients.pace(Pace::Mutate, "CreateListener").await;
                let forward = ForwardActionConfig::builder()
                    .target_groups(TargetGroupTuple::builder().target_group_arn(&groups[0]).weight(999).build())
                    .target_groups(TargetGroupTuple::builder().target_group_arn(&groups[1]).weight(0).build())
                    .build();
                let out = elb
                    .create_listener()
                    .load_balancer_arn(&load_balancer_arn)
                    .protocol(ProtocolEnum::Http)
                    .port(80)
                    .default_actions(Action::builder().r#type(ActionTypeEnum::Forward).forward_config(forward).build())
                    .send()
                    .await
                    .map_err(|e| map_error(e, "CreateListener"))?;
                Ok(out.listeners().first().and_then(|l| l.listener_arn()).unwrap_or_default().to_owned())
            })
            .await?
        }
    };
    Ok(Stack {
        vpc_id,
        subnet_ids,
        load_balancer_arn,
        listener_arn,
        blue_target_group_arn: groups[0].clone(),
        green_target_group_arn: groups[1].clone(),
    })
}
