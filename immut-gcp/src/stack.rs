//! A blue/green stack for demos and tests: per zone, two unmanaged instance groups
//! (`NAME-blue`, `NAME-green`), and a global backend service `NAME` with both as backends,
//! blue at `capacityScaler` 1 and green at 0. On a real project you keep these (with a health
//! check, a URL map and a forwarding rule) in your infrastructure code; against the fake the
//! example and the tests create them here. Find-or-create: a second run reuses what exists.

use std::time::Duration;

use google_cloud_compute_v1::model;
use immut_core::{ErrorKind, Result};

use crate::client::{Failure, Pace, Scope, map_error};
use crate::provider::GcpProvider;

/// The resources of a demo stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// The backend service.
    pub backend_service: String,
    /// The blue group's name (the same in every zone): serving at first.
    pub blue_group: String,
    /// The green group's name.
    pub green_group: String,
}

/// Creates (or finds) a stack named `name` in the provider's zones, with this connection
/// draining timeout.
pub async fn create(provider: &GcpProvider, name: &str, drain: Duration) -> Result<Stack> {
    let c = &provider.clients;
    let (blue, green) = (format!("{name}-blue"), format!("{name}-green"));
    for zone in provider.zones() {
        for group in [&blue, &green] {
            c.pace(Pace::Read, "instanceGroups.get").await;
            let found = c.groups.get().set_project(&c.project).set_zone(zone).set_instance_group(group).send().await;
            match found.map_err(|e| map_error(Failure::Call(e), "instanceGroups.get")) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            c.pace(Pace::Mutate, "instanceGroups.insert").await;
            let op = c
                .groups
                .insert()
                .set_project(&c.project)
                .set_zone(zone)
                .set_body(
                    model::InstanceGroup::new()
                        .set_name(group.clone())
                        .set_named_ports([model::NamedPort::new().set_name("http").set_port(80)]),
                )
                .send()
                .await
                .map_err(|e| map_error(Failure::Call(e), "instanceGroups.insert"))?;
            c.wait(op, Scope::Zone(zone.clone()), "instanceGroups.insert").await?;
        }
    }
    match c.backend_service(name).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let backends = provider.zones().iter().flat_map(|zone| {
                [(&blue, 1.0f32), (&green, 0.0f32)].map(|(group, scaler)| {
                    model::Backend::new()
                        .set_group(format!("{}/instanceGroups/{group}", c.zone_path(zone)))
                        .set_balancing_mode("UTILIZATION")
                        .set_capacity_scaler(scaler)
                })
            });
            let body = model::BackendService::new()
                .set_name(name)
                .set_protocol("HTTP")
                .set_port_name("http")
                .set_backends(backends)
                .set_connection_draining(
                    model::ConnectionDraining::new().set_draining_timeout_sec(drain.as_secs() as i32),
                );
            c.pace(Pace::Mutate, "backendServices.insert").await;
            let op = c
                .backends
                .insert()
                .set_project(&c.project)
                .set_body(body)
                .send()
                .await
                .map_err(|e| map_error(Failure::Call(e), "backendServices.insert"))?;
            c.wait(op, Scope::Global, "backendServices.insert").await?;
        }
        Err(e) => return Err(e),
    }
    Ok(Stack { backend_service: name.to_owned(), blue_group: blue, green_group: green })
}
