//! EC2 instances behind ELBv2: one target group (rolling, canary) or a listener switching
//! between two (blue/green). Settings left out of the spec come from `IMMUT_AWS_*` and the
//! SDK's default chain; credentials never appear in the spec.

use std::sync::Arc;

use immut::analysis::MetricProvider;
use immut::aws::{AwsBuilder, AwsConfig, AwsProvider};
use immut::{HealthCheck, Result};

use super::Backend;
use crate::spec::{AwsSettings, Spec};

pub(super) async fn connect(spec: &Spec, s: &AwsSettings) -> Result<Backend> {
    let mut builder = AwsBuilder::from_config(AwsConfig::from_env()?);
    if let Some(region) = &s.region {
        builder = builder.region(region);
    }
    if let Some(endpoint) = &s.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    if let Some(subnet) = &s.subnet {
        builder = builder.subnet(subnet);
    }
    let provider = builder.build().await?;
    let traffic = match (&s.listener, &s.target_group) {
        (Some((listener, blue, green)), _) => provider.listener_switch(listener, blue, green, s.drain_timeout)?,
        (None, Some(group)) => provider.target_group(group, s.drain_timeout)?,
        (None, None) => {
            return Err(immut::Error::invalid("provider.aws", "give target_group, or listener with its two groups"));
        }
    };
    let extra: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(provider.status_checks()), Arc::new(traffic.clone())];
    let mut health = spec.health.clone();
    // EC2's own status checks stand for the provider status here.
    let extra = if health.provider_status { extra } else { extra.into_iter().skip(1).collect() };
    health.provider_status = false;
    Ok(Backend {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(traffic),
        health: super::health(&health, extra),
        adopt: Some(Arc::new(provider.clone())),
        alarms: Some(alarms_of(provider)),
    })
}

/// The CloudWatch alarms of `cloudwatch` metrics, read with `provider`'s clients (its account,
/// region, credentials and pacing).
fn alarms_of(provider: AwsProvider) -> super::AlarmFactory {
    super::AlarmFactory(Arc::new(move |names: &[String]| {
        let alarms = provider.alarms(names.iter().cloned())?;
        Ok(Arc::new(alarms) as Arc<dyn MetricProvider>)
    }))
}

/// The CloudWatch alarms of `cloudwatch` metrics when the instances are not on AWS: the
/// standard AWS environment (region, credentials, `AWS_ENDPOINT_URL`) says where.
pub(super) async fn alarms_from_env() -> Result<super::AlarmFactory> {
    let provider = AwsBuilder::from_config(AwsConfig::from_env()?).build().await?;
    Ok(alarms_of(provider))
}
