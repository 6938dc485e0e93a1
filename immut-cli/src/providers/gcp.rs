//! Compute Engine instances behind a backend service: one unmanaged group per zone (rolling,
//! canary) or two colours (blue/green). Settings left out of the spec come from the
//! environment (`GOOGLE_CLOUD_PROJECT`, `IMMUT_GCP_ZONES`, `IMMUT_GCP_ENDPOINT`); credentials
//! are Application Default Credentials.

use std::sync::Arc;

use immut::gcp::{GcpBuilder, GcpConfig};
use immut::{HealthCheck, Result};

use super::Backend;
use crate::spec::{GcpSettings, Spec};

pub(super) async fn connect(spec: &Spec, s: &GcpSettings) -> Result<Backend> {
    let mut builder = GcpBuilder::from_config(GcpConfig::from_env()).zone_fallback(s.zone_fallback);
    if let Some(project) = &s.project {
        builder = builder.project(project);
    }
    if !s.zones.is_empty() {
        builder = builder.zones(s.zones.iter().cloned());
    }
    if let Some(endpoint) = &s.endpoint {
        builder = builder.endpoint(endpoint);
    }
    if s.anonymous {
        builder = builder.anonymous();
    }
    let provider = builder.build().await?;
    let traffic = match (&s.colours, &s.group) {
        (Some((blue, green)), _) => provider.backend_switch(&s.backend_service, blue, green)?,
        (None, Some(group)) => provider.backend_group(&s.backend_service, group)?,
        (None, None) => return Err(immut::Error::invalid("provider.gcp", "give group, or blue_group and green_group")),
    };
    let extra: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(traffic.clone())];
    Ok(Backend {
        provider: Arc::new(provider.clone()),
        traffic: Arc::new(traffic),
        health: super::health(&spec.health, extra),
        adopt: Some(Arc::new(provider)),
        alarms: None,
    })
}
