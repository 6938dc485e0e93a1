use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance, InstanceStateName, SummaryStatus};
use immut_core::model::{LabelCharset, Observed, label_keys};
use immut_core::{
    Adopt, Capabilities, Error, ErrorKind, Health, HealthCheck, Instance, InstanceId, InstanceState, LaunchRequest,
    Provenance, Provider, Query, Readiness, Release, Result,
};
use sha2::{Digest, Sha256};

use crate::client::{CapacityMisses, Clients, ID_CHUNK, ImageInfo, RunSpec};
use crate::config::{AwsConfig, LaunchOptions, UnmanagedScope};
use crate::traffic::{AwsTraffic, drained};

/// How long a subnet that had no capacity for an instance type is tried last for that type.
const CAPACITY_MEMORY: Duration = Duration::from_secs(600);

/// EC2 instances, launched a wave per RunInstances call (one per subnet when a wave is spread
/// across zones) and tagged with their provenance.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    pub(crate) clients: Arc<Clients>,
    default_type: String,
    launch: LaunchOptions,
    scope: Option<UnmanagedScope>,
    /// AMIs DescribeImages has confirmed, so a deployment checks each image once, not per wave.
    images: Arc<std::sync::Mutex<HashMap<String, ImageInfo>>>,
    /// Whether EC2 (or the emulator in its place) honours ClientToken.
    honours_token: bool,
    terminate_batch: usize,
    consistency_window: Duration,
    capacity_misses: Arc<CapacityMisses>,
}

impl AwsProvider {
    pub(crate) fn new(clients: Arc<Clients>, config: &AwsConfig) -> Self {
        AwsProvider {
            clients,
            default_type: config.default_instance_type.clone().unwrap_or_else(|| "t3.micro".to_owned()),
            launch: config.launch.clone(),
            scope: config.scope(),
            images: Arc::default(),
            honours_token: config.honours_client_token.unwrap_or(true),
            terminate_batch: config.max_terminate_batch.unwrap_or(1000),
            consistency_window: config.consistency_window.unwrap_or(Duration::from_secs(30)),
            capacity_misses: Arc::default(),
        }
    }

    /// A builder.
    pub fn builder() -> crate::AwsBuilder {
        crate::AwsBuilder::new()
    }

    /// Every EC2, ELBv2 and CloudWatch call made through this provider, its traffic and its
    /// alarms, by operation.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.clients.calls()
    }

    /// The EC2 client, for setup the provider does not cover. Calls made through it are not
    /// paced or counted, and do not drop the provider's reused reads: their effect shows
    /// within [`AwsConfig::read_ttl`].
    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.clients.ec2
    }

    /// The ELBv2 client, for setup the provider does not cover (see [`AwsProvider::ec2`]).
    pub fn elb(&self) -> &aws_sdk_elasticloadbalancingv2::Client {
        &self.clients.elb
    }

    /// The CloudWatch client, for setup the provider does not cover (see [`AwsProvider::ec2`]).
    pub fn cloudwatch(&self) -> &aws_sdk_cloudwatch::Client {
        &self.clients.cloudwatch
    }

    /// An analysis provider that reads these CloudWatch alarms (see [`CloudWatchAlarms`]),
    /// through this provider's clients and pacing. The names are checked here, before any call.
    pub fn alarms<I, S>(&self, names: I) -> Result<crate::CloudWatchAlarms>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        crate::CloudWatchAlarms::new(self.clients.clone(), names.into_iter().map(Into::into).collect())
    }

    /// Traffic through one target group (rolling, canary): attach registers, detach deregisters
    /// and waits while the targets drain, at most the group's deregistration delay and never
    /// longer than `max_drain`.
    pub fn target_group(&self, target_group_arn: impl Into<String>, max_drain: Duration) -> Result<AwsTraffic> {
        let arn = target_group_arn.into();
        check_arn("target_group_arn", &arn)?;
        self.clients.track_group(&arn, max_drain);
        Ok(AwsTraffic::target_group(self.clients.clone(), arn, max_drain))
    }

    /// Blue/green traffic: two target groups behind one listener whose default action is a
    /// weighted forward to both, so ELB health-checks both, the idle one at weight 0. New
    /// instances are staged (registered) in the idle group by `Traffic::prepare`, proven by ELB
    /// there, and a switch moves the weights; the old instances stay registered in their group
    /// at weight 0 for a fast switch back, and are deregistered when they are terminated.
    ///
    /// `max_drain` bounds every drain: after a switch the old group's requests in flight finish
    /// on their own time and ELB shows no state for them (the targets stay registered), so the
    /// switch waits the group's deregistration delay, read from the group, at most `max_drain`.
    pub fn listener_switch(
        &self,
        listener_arn: impl Into<String>,
        blue_target_group_arn: impl Into<String>,
        green_target_group_arn: impl Into<String>,
        max_drain: Duration,
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
        self.clients.track_group(&blue, max_drain);
        self.clients.track_group(&green, max_drain);
        Ok(AwsTraffic::listener(self.clients.clone(), listener, [blue, green], max_drain))
    }

    /// Health from EC2 instance status checks (instance and system status `ok`).
    pub fn status_checks(&self) -> Ec2StatusChecks {
        Ec2StatusChecks { clients: self.clients.clone() }
    }

    /// The AMI, checked with DescribeImages the first time.
    async fn image(&self, ami: &str) -> Result<ImageInfo> {
        if let Some(info) = self.images.lock().expect("poisoned").get(ami) {
            return Ok(info.clone());
        }
        let Some(info) = self.clients.image(ami).await? else {
            return Err(Error::invalid(
                "artifact.image",
                format!("AMI {ami} does not exist in this region (or is not shared with this account); check the id and the region"),
            )
            .with_provider("aws")
            .with_operation("DescribeImages"));
        };
        self.images.lock().expect("poisoned").insert(ami.to_owned(), info.clone());
        Ok(info)
    }

    /// The subnets a wave of `instance_type` is split over, and the ones held back as the last
    /// resort: those that had no capacity for it lately. The order starts at a place derived
    /// from the token, so waves spread their remainders and a retry splits the same way.
    fn subnet_plan(&self, subnets: &[String], instance_type: &str, token: &str) -> (Vec<String>, Vec<String>) {
        let n = subnets.len();
        let start = Sha256::digest(token.as_bytes())[0] as usize % n;
        let rotated: Vec<String> = (0..n).map(|i| subnets[(start + i) % n].clone()).collect();
        let misses = self.capacity_misses.lock().expect("poisoned");
        let missed = |s: &String| {
            misses.get(&(s.clone(), instance_type.to_owned())).is_some_and(|at| at.elapsed() < CAPACITY_MEMORY)
        };
        let (held_back, split): (Vec<String>, Vec<String>) = rotated.into_iter().partition(missed);
        if split.is_empty() { (held_back, Vec::new()) } else { (split, held_back) }
    }
}

/// The filters for the managed instances a query asks for (states, ids, provenance tags).
fn filters(query: &Query) -> Vec<Filter> {
    let filter = |name: &str, values: Vec<String>| Filter::builder().name(name).set_values(Some(values)).build();
    let mut filters = vec![state_filter(query.include_terminated)];
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
        let mut any = false;
        for (key, value) in tags {
            if let Some(value) = value {
                filters.push(filter(&format!("tag:{key}"), vec![value]));
                any = true;
            }
        }
        // No provenance filter and no ids: every managed instance, never every instance.
        if !any && query.ids.is_none() {
            filters.push(filter("tag-key", vec![label_keys::SERVICE.to_owned()]));
        }
    }
    filters
}

/// Without include_terminated, every instance that is not gone: lingering ones (shutting down,
/// stopped) still exist and hold quota.
fn state_filter(include_terminated: bool) -> Filter {
    let states: &[&str] = if include_terminated {
        &["pending", "running", "shutting-down", "stopping", "stopped", "terminated"]
    } else {
        &["pending", "running", "shutting-down", "stopping", "stopped"]
    };
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(states.iter().map(|s| (*s).to_owned()).collect()))
        .build()
}

/// The filters that bound where unmanaged instances are looked for (subnets in chunks of 200).
fn scope_filters(scope: &UnmanagedScope, include_terminated: bool) -> Vec<Vec<Filter>> {
    let filter = |name: &str, values: Vec<String>| Filter::builder().name(name).set_values(Some(values)).build();
    let with_state = |f: Filter| vec![state_filter(include_terminated), f];
    match scope {
        UnmanagedScope::Vpc(vpc) => vec![with_state(filter("vpc-id", vec![vpc.clone()]))],
        UnmanagedScope::Subnets(subnets) => {
            subnets.chunks(ID_CHUNK).map(|c| with_state(filter("subnet-id", c.to_vec()))).collect()
        }
        UnmanagedScope::TagKey(key) => vec![with_state(filter("tag-key", vec![key.clone()]))],
    }
}

/// DescribeInstances for `query`: a reusable answer if there is one, else every page, with a
/// long id list sent in chunks of [`ID_CHUNK`] (EC2 takes at most 200 values per filter), and
/// unmanaged instances looked for only within `scope`. Every describe goes through here.
pub(crate) async fn describe_raw(
    clients: &Clients,
    query: &Query,
    scope: Option<&UnmanagedScope>,
) -> Result<Vec<Ec2Instance>> {
    let key = serde_json::to_string(query).expect("a query serializes");
    if let Some(kept) = clients.reads.instances(&key) {
        return Ok(kept);
    }
    let generation = clients.reads.ec2_generation();
    let asked = tokio::time::Instant::now();
    let mut found = Vec::new();
    match &query.ids {
        Some(ids) => {
            for chunk in ids.chunks(ID_CHUNK) {
                let part = Query { ids: Some(chunk.to_vec()), ..query.clone() };
                found.extend(clients.describe_instances(filters(&part)).await?);
            }
        }
        None if query.include_unmanaged => {
            let Some(scope) = scope else {
                return Err(Error::invalid(
                    "unmanaged_scope",
                    "is not set, and the provider launches into no configured subnets: set the VPC, the subnets or a tag key that bounds where instances launched outside immut are looked for (immut never lists a whole region)",
                )
                .with_provider("aws"));
            };
            let managed = Query { include_unmanaged: false, ..query.clone() };
            found.extend(clients.describe_instances(filters(&managed)).await?);
            let mut seen: HashSet<String> = found.iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
            for f in scope_filters(scope, query.include_terminated) {
                for i in clients.describe_instances(f).await? {
                    if i.instance_id().is_some_and(|id| seen.insert(id.to_owned())) {
                        found.push(i);
                    }
                }
            }
        }
        None => found.extend(clients.describe_instances(filters(query)).await?),
    }
    clients.reads.keep_instances(key, generation, asked, found.clone());
    Ok(found)
}

/// These instances as EC2 knows them (gone ones included), from a reusable answer where one
/// shows them, else by one describe of the rest.
pub(crate) async fn lookup(clients: &Clients, ids: &[String]) -> Result<Vec<Instance>> {
    let (hits, missing) = clients.reads.find_instances(ids);
    let mut found: Vec<Instance> = hits.iter().map(to_instance).collect();
    if !missing.is_empty() {
        let query = Query::ids(missing.into_iter().map(InstanceId::new)).with_unmanaged().with_terminated();
        found.extend(describe_raw(clients, &query, None).await?.iter().map(to_instance));
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

/// The EC2 idempotency key of one RunInstances: at most 64 characters, and distinct per
/// attempt size, subnet and share, because EC2 refuses (or answers with the first call's
/// instances) the same token with other parameters, as a shortfall launch after adoption has.
fn client_token(token: &str, total: usize, subnet: Option<&str>, count: usize) -> String {
    let raw = match subnet {
        Some(s) => format!("{token}/{total}/{s}/{count}"),
        None => format!("{token}/{count}"),
    };
    if raw.len() <= 64 { raw } else { Sha256::digest(raw.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() }
}

/// `count` split over `n` subnets as evenly as possible, the first ones taking the remainder.
fn shares(count: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| count / n + usize::from(i < count % n)).filter(|&s| s > 0).collect()
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
            access: Some(crate::access::access(i)),
        }),
        address: i.private_ip_address().map(str::to_owned),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    /// The release's AMI asked afresh with DescribeImages, past the launch-time cache: an AMI
    /// deregistered since the last launch is exactly what this must see.
    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let ami = &release.artifact().image;
        self.clients.image_readiness(ami).await.map_err(|e| e.with_provider("aws").with_operation("DescribeImages"))
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
            // EC2 meters Describe* calls per account in a token bucket: a second between reads
            // leaves room for other deployments.
            min_poll_interval: std::time::Duration::from_secs(1),
        }
    }

    /// Launches the wave: the launch options (the configured ones, overridden by the
    /// baseline's params) are checked before any call; the AMI is checked once; the wave is
    /// split evenly over the subnets, and a subnet whose zone has no capacity passes its share
    /// to the next one. Fails with `QuotaExceeded` only when no subnet has capacity.
    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        request.validate(&self.capabilities())?;
        let release = &request.release;
        let spec = &release.baseline().spec;
        let mut options = self.launch.with_params(&spec.params)?;
        if spec.sealed {
            options.check_sealed(&spec.params)?;
        }
        if !spec.params.contains_key("subnets")
            && let Some(network) = &spec.network
        {
            options.subnets = network.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            options.validate("baseline.network")?;
        }
        let ami = &release.artifact().image;
        let image = self.image(ami).await?;
        // A launch template keeps its own instance type unless the baseline names one.
        let instance_type =
            spec.machine_type.clone().or_else(|| options.launch_template.is_none().then(|| self.default_type.clone()));
        let type_key = instance_type.clone().unwrap_or_else(|| "(template)".to_owned());
        let labels = request.labels(LabelCharset::Any);
        let token = request.token.as_str();
        let run = |subnet: Option<String>, count: usize| {
            let (options, labels, image, instance_type) = (&options, &labels, &image, &instance_type);
            async move {
                let client_token = client_token(token, request.count, subnet.as_deref(), count);
                self.clients
                    .run_instances(&RunSpec {
                        ami,
                        instance_type: instance_type.as_deref(),
                        count,
                        subnet: subnet.as_deref(),
                        user_data: spec.user_data.as_deref(),
                        client_token: &client_token,
                        labels,
                        options,
                        root_device: image.root_device.as_deref(),
                        sealed: spec.sealed,
                    })
                    .await
            }
        };
        if options.subnets.is_empty() {
            let launched = run(None, request.count).await.map_err(|f| f.error)?;
            return Ok(launched.iter().map(to_instance).collect());
        }
        let (split, held_back) = self.subnet_plan(&options.subnets, &type_key, token);
        let mut plan: Vec<(String, usize)> = split.iter().cloned().zip(shares(request.count, split.len())).collect();
        let order: Vec<String> = split.into_iter().chain(held_back).collect();
        let mut launched = Vec::new();
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut next = 0;
        while next < plan.len() {
            let (subnet, count) = plan[next].clone();
            match run(Some(subnet.clone()), count).await {
                Ok(instances) => launched.extend(instances.iter().map(to_instance)),
                Err(f) if f.zonal => {
                    tracing::warn!(subnet, error = %f.error, "no capacity in this subnet; trying the next one");
                    self.capacity_misses
                        .lock()
                        .expect("poisoned")
                        .insert((subnet.clone(), type_key.clone()), tokio::time::Instant::now());
                    failed.push((subnet.clone(), f.error.message().to_owned()));
                    let tried: HashSet<&String> = failed.iter().map(|(s, _)| s).collect();
                    let Some(to) = order.iter().find(|s| !tried.contains(s)).cloned() else {
                        let detail: Vec<String> = failed.iter().map(|(s, m)| format!("{s}: {m}")).collect();
                        return Err(Error::new(
                            ErrorKind::QuotaExceeded,
                            format!(
                                "no capacity for {count} more instances in any subnet ({}); {} were launched before",
                                detail.join("; "),
                                launched.len()
                            ),
                        )
                        .with_provider("aws")
                        .with_operation("RunInstances"));
                    };
                    // The share moves to the next subnet, joining what is still planned there.
                    match plan[next + 1..].iter_mut().find(|(s, _)| *s == to) {
                        Some(entry) => entry.1 += count,
                        None => plan.push((to, count)),
                    }
                }
                Err(f) => return Err(f.error),
            }
            next += 1;
        }
        Ok(launched)
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        let found = describe_raw(&self.clients, query, self.scope.as_ref()).await?;
        Ok(found.iter().map(to_instance).filter(|i| query.matches(i)).collect())
    }

    fn pacing(&self) -> immut_core::PacingStats {
        self.clients.paced()
    }

    /// EC2 promises nothing, so `None`. The engine asks right before it waits, and the provider
    /// drops its reused reads there, so the step after a wait sees EC2 and ELB afresh.
    fn next_change(&self) -> Option<tokio::time::Instant> {
        self.clients.reads.before_wait();
        None
    }

    /// Takes the instances out of this provider's target groups first (waiting while they
    /// drain, at most each group's deregistration delay), then terminates them in batches.
    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // TerminateInstances fails whole on one unknown id, so only ids EC2 knows are sent;
        // the others are already gone (terminate is idempotent).
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let live: Vec<String> = lookup(&self.clients, &ids)
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .map(|i| i.id.to_string())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        for (group, max_drain) in self.clients.groups() {
            let members: HashSet<String> =
                self.clients.targets(&group, true).await?.into_iter().filter(|t| t.is_member()).map(|t| t.id).collect();
            let registered: Vec<String> = live.iter().filter(|id| members.contains(*id)).cloned().collect();
            if !registered.is_empty() {
                self.clients.deregister(&group, &registered).await?;
                drained(&self.clients, &group, &registered, max_drain).await?;
            }
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
        // Described again (CreateTags dropped the reused answers), so the answer shows the tags
        // as EC2 stores them.
        self.describe(&query).await
    }
}

/// Health from EC2's instance and system status checks. An instance that is not running is
/// unknown without a call; one that passed recently is not asked again (see
/// [`AwsConfig::status_check_ttl`]).
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
        let reads = &self.clients.reads;
        let ask: Vec<String> = instances
            .iter()
            .filter(|i| i.state == InstanceState::Running && !reads.status_ok(i.id.as_str()))
            .map(|i| i.id.to_string())
            .collect();
        // A failed read says nothing about the instances: the error goes to the engine, which
        // retries it like every other call (the one retry layer).
        let statuses = if ask.is_empty() { Vec::new() } else { self.clients.instance_status(&ask).await? };
        let mut verdicts: HashMap<&str, Health> = HashMap::new();
        for s in &statuses {
            let Some(id) = s.instance_id() else { continue };
            let verdict = if s.instance_state().and_then(|st| st.name()) != Some(&InstanceStateName::Running) {
                Health::Unknown
            } else {
                match (s.instance_status().and_then(|x| x.status()), s.system_status().and_then(|x| x.status())) {
                    (Some(SummaryStatus::Ok), Some(SummaryStatus::Ok)) => Health::Healthy,
                    (Some(SummaryStatus::Impaired), _) | (_, Some(SummaryStatus::Impaired)) => {
                        Health::Unhealthy("EC2 status checks impaired".to_owned())
                    }
                    _ => Health::Unknown,
                }
            };
            verdicts.insert(id, verdict);
        }
        reads.passed_status(verdicts.iter().filter(|(_, v)| v.is_healthy()).map(|(id, _)| (*id).to_owned()));
        let failed: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Health::Unhealthy(_)))
            .map(|(id, _)| (*id).to_owned())
            .collect();
        reads.forget_status(&failed);
        Ok(instances
            .iter()
            .map(|i| {
                if i.state != InstanceState::Running {
                    Health::Unknown
                } else if let Some(v) = verdicts.get(i.id.as_str()) {
                    v.clone()
                } else if reads.status_ok(i.id.as_str()) {
                    Health::Healthy
                } else {
                    Health::Unknown
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_ec2_and_differ_per_attempt_subnet_and_share() {
        assert_eq!(client_token("d1-w1-0", 3, None, 3), "d1-w1-0/3");
        let long = "d".repeat(80);
        assert_eq!(client_token(&long, 3, None, 3).len(), 64);
        assert_ne!(client_token(&long, 3, None, 3), client_token(&long, 2, None, 2));
        let a = client_token("d1-w1-0", 10, Some("subnet-a"), 5);
        assert_ne!(a, client_token("d1-w1-0", 10, Some("subnet-b"), 5));
        assert_ne!(a, client_token("d1-w1-0", 5, Some("subnet-a"), 5), "a shortfall launch is another call");
        assert!(client_token(&long, 10, Some("subnet-0123456789abcdef0"), 5).len() <= 64);
    }

    #[test]
    fn a_wave_splits_evenly_over_subnets() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(2, 3), vec![1, 1]);
        assert_eq!(shares(6, 1), vec![6]);
    }

    #[test]
    fn a_query_for_every_instance_asks_only_for_managed_ones() {
        let names =
            |q: &Query| -> Vec<String> { filters(q).iter().filter_map(|f| f.name().map(str::to_owned)).collect() };
        assert!(names(&Query::default()).contains(&"tag-key".to_owned()), "never the whole region");
        assert!(!names(&Query::service("web")).contains(&"tag-key".to_owned()));
        assert!(!names(&Query::ids([InstanceId::new("i-1")])).contains(&"tag-key".to_owned()), "ids bound it");
        let scoped = scope_filters(&UnmanagedScope::Subnets((0..250).map(|i| format!("subnet-{i}")).collect()), false);
        assert_eq!(scoped.len(), 2, "subnet lists are chunked to 200 values");
    }
}
