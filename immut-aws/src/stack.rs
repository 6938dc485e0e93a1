//! A blue/green stack in the default VPC for demos and tests: an application load balancer,
//! two target groups and a listener forwarding to the first. On a real account you would keep
//! these in your infrastructure code; against moto the example and the tests create them here.

use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancerTypeEnum, ProtocolEnum, TargetTypeEnum,
};
use immut_core::{Error, Result};

use crate::client::map_error;
use crate::provider::AwsProvider;

/// The resources of a demo stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// The default VPC.
    pub vpc_id: String,
    /// Its subnets.
    pub subnet_ids: Vec<String>,
    /// The load balancer.
    pub load_balancer_arn: String,
    /// The listener (HTTP :80).
    pub listener_arn: String,
    /// The target group the listener forwards to at first.
    pub blue_target_group_arn: String,
    /// The other target group.
    pub green_target_group_arn: String,
}

/// Creates a stack named `name` (at most 20 characters: ELBv2 names are short).
pub async fn create(provider: &AwsProvider, name: &str) -> Result<Stack> {
    if name.is_empty() || name.len() > 20 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::invalid("name", format!("{name:?}: use 1 to 20 letters, digits or '-'")));
    }
    let (ec2, elb) = (provider.ec2(), provider.elb());
    let vpcs = ec2
        .describe_vpcs()
        .filters(Filter::builder().name("is-default").values("true").build())
        .send()
        .await
        .map_err(|e| map_error(e, "DescribeVpcs"))?;
    let vpc_id = vpcs
        .vpcs()
        .first()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| Error::invalid("vpc", "this region has no default VPC; create the stack with your own tooling"))?
        .to_owned();
    let subnets = ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .send()
        .await
        .map_err(|e| map_error(e, "DescribeSubnets"))?;
    let subnet_ids: Vec<String> = subnets.subnets().iter().filter_map(|s| s.subnet_id().map(str::to_owned)).collect();
    if subnet_ids.len() < 2 {
        return Err(Error::invalid("vpc", "the default VPC needs two subnets for a load balancer"));
    }
    let lb = elb
        .create_load_balancer()
        .name(format!("{name}-lb"))
        .r#type(LoadBalancerTypeEnum::Application)
        .set_subnets(Some(subnet_ids[..2].to_vec()))
        .send()
        .await
        .map_err(|e| map_error(e, "CreateLoadBalancer"))?;
    let load_balancer_arn =
        lb.load_balancers().first().and_then(|l| l.load_balancer_arn()).unwrap_or_default().to_owned();
    let mut groups = Vec::new();
    for color in ["blue", "green"] {
        let tg = elb
            .create_target_group()
            .name(format!("{name}-{color}"))
            .protocol(ProtocolEnum::Http)
            .port(80)
            .vpc_id(&vpc_id)
            .target_type(TargetTypeEnum::Instance)
            .send()
            .await
            .map_err(|e| map_error(e, "CreateTargetGroup"))?;
        groups.push(tg.target_groups().first().and_then(|t| t.target_group_arn()).unwrap_or_default().to_owned());
    }
    let listener = elb
        .create_listener()
        .load_balancer_arn(&load_balancer_arn)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .default_actions(Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(&groups[0]).build())
        .send()
        .await
        .map_err(|e| map_error(e, "CreateListener"))?;
    let listener_arn = listener.listeners().first().and_then(|l| l.listener_arn()).unwrap_or_default().to_owned();
    Ok(Stack {
        vpc_id,
        subnet_ids,
        load_balancer_arn,
        listener_arn,
        blue_target_group_arn: groups[0].clone(),
        green_target_group_arn: groups[1].clone(),
    })
}
