use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance, InstanceStateName, SummaryStatus};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use immut_core::model::{LabelCharset, Observed, label_keys};
use immut_core::{
    Adopt, Capabilities, Error, ErrorKind, Health, HealthCheck, Instance, InstanceId, InstanceState, LaunchRequest,
    Provenance, Provider, Query, Result, Traffic,
};
use sha2::{Digest, Sha256};

use crate::client::{Clients, ID_CHUNK};
use crate::config::AwsConfig;

/// EC2 instances, launched a wave per RunInstances call and tagged with their provenance.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    clients: Arc<Clients>,
    subnet: Option<String>,
    default_type: String,
    /// AMIs DescribeImages has confirmed, so a deployment checks each image once, not per wave.
    known_images: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Whether EC2 (or the emulator in its place) honours ClientToken.
    honours_token: bool,
    terminate_batch: usize,
    consistency_window: Duration,
}

impl AwsProvider {
    pub(crate) fn new(clients: Arc<Clients>, config: &AwsConfig) -> Self {
        AwsProvider {
            clients,
            subnet: config.subnet_id.clone(),
            default_type: config.default_instance_type.clone().unwrap_or_else(|| "t3.micro".to_owned()),
            known_images: Arc::default(),
            honours_token: config.honours_client_token.unwrap_or(true),
            terminate_batch: config.max_terminate_batch.unwrap_or(1000),
            consistency_window: config.consistency_window.unwrap_or(Duration::from_secs(30)),
        }
    }

    /// A builder.
    pub fn builder() -> crate::AwsBuilder {
        crate::AwsBuilder::new()
    }

    /// Every EC2 and ELBv2 call made through this provider and its traffic, by operation.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.clients.calls()
    }

    /// The EC2 client, for setup the provider does not cover.
    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.clients.ec2
    }

    /// The ELBv2 client, for setup the provider does not cover.
    pub fn elb(&self) -> &aws_sdk_elasticloadbalancingv2::Client {
        &self.clients.elb
    }

    /// Traffic through one target group (rolling, canary): attach registers, detach deregisters
    /// and waits until the targets have drained (at most `drain_timeout`).
    pub fn target_group(&self, target_group_arn: impl Into<String>, drain_timeout: Duration) -> Result<AwsTraffic> {
        let arn = target_group_arn.into();
        check_arn("target_group_arn", &arn)?;
        Ok(AwsTraffic {
            clients: self.clients.clone(),
            mode: TrafficMode::TargetGroup { arn },
            drain_timeout,
            active: Arc::default(),
        })
    }

    /// Blue/green traffic: two target groups behind one listener. A switch registers the new
    /// instances in the idle group and points the listener at it with one ModifyListener, and
    /// leaves the old instances registered in their group, so a rollback is one switch back.
    ///
    /// `drain_timeout` is the drain of a switch: the requests in flight to the old group's
    /// targets finish on their own time, and ELBv2 reports no state for them while the targets
    /// stay registered (they are kept for the switch back), so `switch` waits this long after
    /// ModifyListener before it returns, as the [`Traffic::switch`] contract asks. Set it to the
    /// old group's deregistration delay, or to your longest request. Detach deregisters, and
    /// waits while the targets show `draining`, at most `drain_timeout`.
    pub fn listener_switch(
        &self,
        listener_arn: impl Into<String>,
        blue_target_group_arn: impl Into<String>,
        green_target_group_arn: impl Into<String>,
        drain_timeout: Duration,
    ) -> Result<AwsTraffic> {
        let (listener, blue, green) =
            (listener_arn.into(), blue_target_group_arn.into(), green_target_group_arn.into());
        check_arn("listener_arn", &listener)?;
        check_arn("blue_target_group_arn", &blue)?;
        check_arn("green_target_group_arn", &green)?;
        if blue == green {
            return Err(Error::invalid(
                "green_target_group_arn",
                "is the blue target group; give two different groups",
            ));
        }
        Ok(AwsTraffic {
            clients: self.clients.clone(),
            mode: TrafficMode::ListenerSwitch { listener, groups: [blue, green] },
            drain_timeout,
            active: Arc::default(),
        })
    }

    /// Health from EC2 instance status checks (instance and system status `ok`).
    pub fn status_checks(&self) -> Ec2StatusChecks {
        Ec2StatusChecks { clients: self.clients.clone() }
    }

    fn filters(query: &Query) -> Vec<Filter> {
        let filter = |name: &str, values: Vec<String>| Filter::builder().name(name).set_values(Some(values)).build();
        let mut filters = Vec::new();
        // Without include_terminated, every instance that is not gone: lingering ones
        // (shutting down, stopped) still exist and hold quota.
        let states: &[&str] = if query.include_terminated {
            &["pending", "running", "shutting-down", "stopping", "stopped", "terminated"]
        } else {
            &["pending", "running", "shutting-down", "stopping", "stopped"]
        };
        filters.push(filter("instance-state-name", states.iter().map(|s| (*s).to_owned()).collect()));
        if let Some(ids) = &query.ids {
            filters.push(filter("instance-id", ids.iter().map(|i| i.to_string()).collect()));
        }
        if !query.include_unmanaged {
            let tags = [
                (label_keys::SERVICE, query.service.clone()),
                (label_keys::DEPLOYMENT, query.deployment.as_ref().map(|d| d.to_string())),
                (label_keys::TOKEN, query.token.as_ref().map(|t| t.to_string())),
                (label_keys::RELEASE, query.release.as_ref().map(|r| r.to_string())),
            ];
            for (key, value) in tags {
                if let Some(value) = value {
                    filters.push(filter(&format!("tag:{key}"), vec![value]));
                }
            }
        }
        filters
    }
}

/// DescribeInstances for `query`, every page, with a long id list sent in chunks of
/// [`ID_CHUNK`] (EC2 takes at most 200 values per filter). Every path that describes by ids
/// goes through here.
async fn describe_raw(clients: &Clients, query: &Query) -> Result<Vec<Ec2Instance>> {
    let Some(ids) = &query.ids else { return clients.describe_instances(AwsProvider::filters(query)).await };
    let mut found = Vec::new();
    for chunk in ids.chunks(ID_CHUNK) {
        let part = Query { ids: Some(chunk.to_vec()), ..query.clone() };
        found.extend(clients.describe_instances(AwsProvider::filters(&part)).await?);
    }
    Ok(found)
}

fn check_arn(field: &str, arn: &str) -> Result<()> {
    if arn.starts_with("arn:") {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("{arn:?} is not an ARN (arn:aws:elasticloadbalancing:...)")))
    }
}

/// The EC2 idempotency key: at most 64 characters, and distinct per count, because EC2 refuses
/// the same token with different parameters (a shortfall launch after adoption).
fn client_token(token: &str, count: usize) -> String {
    let raw = format!("{token}/{count}");
    if raw.len() <= 64 { raw } else { Sha256::digest(raw.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() }
}

pub(crate) fn to_instance(i: &Ec2Instance) -> Instance {
    let labels: BTreeMap<String, String> =
        i.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect();
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        Some(InstanceStateName::Stopping | InstanceStateName::Stopped) => InstanceState::Stopped,
        // Shutting down (or a state this SDK does not know): not live, not gone.
        _ => InstanceState::Terminating,
    };
    Instance {
        id: InstanceId::new(i.instance_id().unwrap_or_default()),
        state,
        provenance: Provenance::from_labels(&labels, LabelCharset::Any).map(Arc::new),
        labels: Arc::new(labels),
        observed: Arc::new(Observed {
            image: i.image_id().map(str::to_owned),
            machine_type: i.instance_type().map(|t| t.as_str().to_owned()),
        }),
        address: i.private_ip_address().map(str::to_owned),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_launch_batch: 100,
            max_terminate_batch: self.terminate_batch,
            honours_token: self.honours_token,
            label_charset: LabelCharset::Any,
            max_label_value_len: 256,
            max_label_key_len: 128,
            max_labels: 50,
            consistency_window: self.consistency_window,
            // Shutting-down and stopped instances count against the account's vCPU quota.
            lingering_holds_quota: true,
        }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let release = &request.release;
        let ami = &release.artifact().image;
        let known = self.known_images.lock().expect("poisoned").contains(ami);
        if !known && !self.clients.image_exists(ami).await? {
            return Err(Error::invalid(
                "artifact.image",
                format!("AMI {ami} does not exist in this region (or is not shared with this account); check the id and the region"),
            )
            .with_provider("aws")
            .with_operation("DescribeImages"));
        }
        self.known_images.lock().expect("poisoned").insert(ami.clone());
        let spec = &release.baseline().spec;
        let instance_type = spec.machine_type.as_deref().unwrap_or(&self.default_type);
        let subnet = spec.network.as_deref().or(self.subnet.as_deref());
        let launched = self
            .clients
            .run_instances(
                ami,
                instance_type,
                request.count,
                subnet,
                spec.user_data.as_deref(),
                &client_token(request.token.as_str(), request.count),
                &request.labels(LabelCharset::Any),
            )
            .await?;
        Ok(launched.iter().map(to_instance).collect())
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let found = describe_raw(&self.clients, query).await?;
        Ok(found.iter().map(to_instance).filter(|i| query.matches(i)).collect())
    }

    fn pacing(&self) -> immut_core::PacingStats {
        self.clients.paced()
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // TerminateInstances fails whole on one unknown id, so only ids EC2 knows are sent;
        // the others are already gone (terminate is idempotent).
        let known = self.describe(&Query::ids(ids.iter().cloned()).with_terminated()).await?;
        let live: Vec<String> =
            known.iter().filter(|i| i.state != InstanceState::Terminated).map(|i| i.id.to_string()).collect();
        if live.is_empty() {
            return Ok(());
        }
        for batch in live.chunks(self.terminate_batch) {
            match self.clients.terminate(batch).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// Imports instances launched outside immut by tagging them with the provenance (and the
/// signature) through CreateTags, the only change made to them; their volumes keep their tags.
/// Only live instances without provenance are adopted: an unknown or gone id is `NotFound`, an
/// instance that already carries immut's provenance is `Conflict`, and nothing is tagged then.
#[async_trait]
impl Adopt for AwsProvider {
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = Query::ids(ids.iter().cloned()).with_unmanaged();
        let found: Vec<Instance> = self.describe(&query).await?.into_iter().filter(|i| i.state.is_live()).collect();
        let unknown: Vec<InstanceId> = ids.iter().filter(|id| !found.iter().any(|i| &i.id == *id)).cloned().collect();
        if !unknown.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "cannot adopt instances that do not exist or are not live")
                .with_provider("aws")
                .with_operation("CreateTags")
                .with_ids(unknown));
        }
        let managed: Vec<InstanceId> = found.iter().filter(|i| i.provenance.is_some()).map(|i| i.id.clone()).collect();
        if !managed.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                "these instances already carry immut's provenance; adopt only instances launched outside immut",
            )
            .with_provider("aws")
            .with_operation("CreateTags")
            .with_ids(managed));
        }
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.clients.create_tags(&ids, &provenance.signed_labels(LabelCharset::Any, signature)).await?;
        // Described again, so the answer shows the tags as EC2 stores them.
        self.describe(&query).await
    }
}

/// Which ELBv2 resources carry the traffic.
#[derive(Debug, Clone)]
pub(crate) enum TrafficMode {
    TargetGroup { arn: String },
    ListenerSwitch { listener: String, groups: [String; 2] },
}

/// ELBv2 traffic: a target group, or two behind a listener for blue/green.
#[derive(Debug, Clone)]
pub struct AwsTraffic {
    clients: Arc<Clients>,
    mode: TrafficMode,
    drain_timeout: Duration,
    /// The group the listener forwards to, as last read or switched.
    active: Arc<std::sync::Mutex<Option<String>>>,
}

fn receives_traffic(state: &TargetHealthStateEnum) -> bool {
    !matches!(
        state,
        TargetHealthStateEnum::Draining | TargetHealthStateEnum::Unused | TargetHealthStateEnum::Unavailable
    )
}

impl AwsTraffic {
    /// The group traffic goes to. `serving` (once per engine step) and `switch` read the
    /// listener; the other calls of the step use what they read.
    async fn active_group(&self, fresh: bool) -> Result<String> {
        match &self.mode {
            TrafficMode::TargetGroup { arn } => Ok(arn.clone()),
            TrafficMode::ListenerSwitch { listener, .. } => {
                if !fresh && let Some(cached) = self.active.lock().expect("poisoned").clone() {
                    return Ok(cached);
                }
                let group = self.clients.listener_target(listener).await?;
                *self.active.lock().expect("poisoned") = Some(group.clone());
                Ok(group)
            }
        }
    }

    /// Checks that the instances exist and are live, as ELBv2 requires of targets.
    async fn live_ids(&self, instances: &[Instance]) -> Result<Vec<String>> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let live: HashSet<String> = describe_raw(&self.clients, &Query::ids(ids.clone()).with_unmanaged())
            .await?
            .iter()
            .map(to_instance)
            .filter(|i| i.state.is_live())
            .map(|i| i.id.to_string())
            .collect();
        let unknown: Vec<InstanceId> = ids.iter().filter(|id| !live.contains(id.as_str())).cloned().collect();
        if !unknown.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "cannot register instances that do not exist or are not live")
                .with_provider("aws")
                .with_operation("RegisterTargets")
                .with_ids(unknown));
        }
        Ok(ids.iter().map(|i| i.to_string()).collect())
    }

    /// Waits until none of `ids` is draining in `group`, at most the drain timeout.
    async fn drained(&self, group: &str, ids: &[String]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        loop {
            let draining = self
                .clients
                .target_health(group)
                .await?
                .iter()
                .any(|(id, state)| *state == TargetHealthStateEnum::Draining && ids.contains(id));
            if !draining || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn deregister(&self, group: &str, ids: &[String]) -> Result<()> {
        let registered: HashSet<String> =
            self.clients.target_health(group).await?.into_iter().map(|(id, _)| id).collect();
        let present: Vec<String> = ids.iter().filter(|id| registered.contains(*id)).cloned().collect();
        if present.is_empty() {
            return Ok(());
        }
        self.clients.deregister(group, &present).await?;
        self.drained(group, &present).await
    }
}

#[async_trait]
impl Traffic for AwsTraffic {
    async fn serving(&self) -> Result<Vec<InstanceId>> {
        let group = self.active_group(true).await?;
        let targets = self.clients.target_health(&group).await?;
        Ok(targets.into_iter().filter(|(_, s)| receives_traffic(s)).map(|(id, _)| InstanceId::new(id)).collect())
    }

    async fn attach(&self, instances: &[Instance]) -> Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let ids = self.live_ids(instances).await?;
        let group = self.active_group(false).await?;
        self.clients.register(&group, &ids).await
    }

    async fn detach(&self, ids: &[InstanceId]) -> Result<()> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        match &self.mode {
            TrafficMode::TargetGroup { arn } => self.deregister(arn, &ids).await,
            TrafficMode::ListenerSwitch { groups, .. } => {
                for group in groups {
                    self.deregister(group, &ids).await?;
                }
                Ok(())
            }
        }
    }

    /// In a target group: attach, then detach (which waits out the drain). Behind a listener:
    /// register the new instances in the idle group, drop whatever else still serves there,
    /// point the listener at it, then wait the drain time before returning (see
    /// [`AwsProvider::listener_switch`]). The old group keeps its targets, so the switch back is
    /// one ModifyListener too. The same switch again changes nothing and returns after the
    /// same drain, since the first call may have been cut short before its wait.
    async fn switch(&self, attach: &[Instance], detach: &[InstanceId]) -> Result<()> {
        let TrafficMode::ListenerSwitch { listener, groups } = &self.mode else {
            self.attach(attach).await?;
            return self.detach(detach).await;
        };
        if detach.is_empty() {
            // Nothing to move away from (a first deployment): serve from the active group.
            return self.attach(attach).await;
        }
        let active = self.active_group(true).await?;
        let idle = groups.iter().find(|g| **g != active).unwrap_or(&groups[0]).clone();
        let ids = self.live_ids(attach).await?;
        let detach: Vec<String> = detach.iter().map(|i| i.to_string()).collect();
        let serving = |targets: &[(String, TargetHealthStateEnum)]| -> HashSet<String> {
            targets.iter().filter(|(_, s)| receives_traffic(s)).map(|(id, _)| id.clone()).collect()
        };
        let on_active = serving(&self.clients.target_health(&active).await?);
        let switched = ids.iter().all(|id| on_active.contains(id)) && !detach.iter().any(|id| on_active.contains(id));
        // The group the listener does not forward to once this call is done.
        let left = if switched {
            // Already switched (a retry after a lost answer, or the same switch twice).
            idle
        } else {
            let on_idle = serving(&self.clients.target_health(&idle).await?);
            // Whatever else sits in the idle group (instances of an older release) must not
            // receive traffic after the switch; it gets none before it, so no drain is due.
            let wanted: HashSet<&String> = ids.iter().collect();
            let stale: Vec<String> = on_idle.iter().filter(|id| !wanted.contains(id)).cloned().collect();
            if !stale.is_empty() {
                self.clients.deregister(&idle, &stale).await?;
            }
            // A switch back finds the old instances still registered (keep-old): nothing to add.
            let missing: Vec<String> = ids.iter().filter(|id| !on_idle.contains(*id)).cloned().collect();
            if !missing.is_empty() {
                self.clients.register(&idle, &missing).await?;
            }
            self.clients.forward(listener, &idle).await?;
            *self.active.lock().expect("poisoned") = Some(idle);
            active
        };
        // The detached instances stay registered in the group the listener left, for the switch
        // back; their requests in flight drain on their own time, which ELBv2 cannot show.
        let left_serving = serving(&self.clients.target_health(&left).await?);
        if detach.iter().any(|id| left_serving.contains(id)) {
            tokio::time::sleep(self.drain_timeout).await;
        }
        Ok(())
    }
}

/// Health from EC2's instance and system status checks.
#[derive(Debug, Clone)]
pub struct Ec2StatusChecks {
    clients: Arc<Clients>,
}

#[async_trait]
impl HealthCheck for Ec2StatusChecks {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = instances.iter().map(|i| i.id.to_string()).collect();
        // A failed read says nothing about the instances: the error goes to the engine, which
        // retries it like every other call (the one retry layer).
        let statuses = self.clients.instance_status(&ids).await?;
        Ok(instances
            .iter()
            .map(|i| {
                let Some(s) = statuses.iter().find(|s| s.instance_id() == Some(i.id.as_str())) else {
                    return Health::Unknown;
                };
                if s.instance_state().and_then(|st| st.name()) != Some(&InstanceStateName::Running) {
                    return Health::Unknown;
                }
                let instance = s.instance_status().and_then(|x| x.status());
                let system = s.system_status().and_then(|x| x.status());
                match (instance, system) {
                    (Some(SummaryStatus::Ok), Some(SummaryStatus::Ok)) => Health::Healthy,
                    (Some(SummaryStatus::Impaired), _) | (_, Some(SummaryStatus::Impaired)) => {
                        Health::Unhealthy("status checks impaired".to_owned())
                    }
                    _ => Health::Unknown,
                }
            })
            .collect())
    }
}

/// Health from an ELBv2 target group: a registered target is judged by its target health; an
/// instance not registered yet passes, so that this check composes with pre-attach checks.
#[async_trait]
impl HealthCheck for AwsTraffic {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        Ok(self.check_many(std::slice::from_ref(instance)).await?.pop().unwrap_or(Health::Unknown))
    }

    /// A failed target-health read is an error for the engine to retry, never a verdict on
    /// the targets: one throttled call must not fail a bake.
    async fn check_many(&self, instances: &[Instance]) -> Result<Vec<Health>> {
        let group = self.active_group(false).await?;
        let targets = self.clients.target_health(&group).await?;
        Ok(instances
            .iter()
            .map(|i| match targets.iter().find(|(id, _)| id == i.id.as_str()).map(|(_, s)| s) {
                None | Some(TargetHealthStateEnum::Healthy) => Health::Healthy,
                Some(TargetHealthStateEnum::Initial) => Health::Unknown,
                Some(other) => Health::Unhealthy(format!("target is {}", other.as_str())),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_ec2_and_differ_per_count() {
        assert_eq!(client_token("d1-w1-0", 3), "d1-w1-0/3");
        let long = "d".repeat(80);
        assert_eq!(client_token(&long, 3).len(), 64);
        assert_ne!(client_token(&long, 3), client_token(&long, 2));
    }
}
