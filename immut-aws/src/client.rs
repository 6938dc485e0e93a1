//! SDK calls, paced by client-side token buckets, counted, and reused where [`Reads`] allows,
//! plus the one function that maps SDK errors to [`immut_core::Error`].

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance as Ec2Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStatus, LaunchTemplateSpecification, MarketType, ResourceType,
    SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetDescription, TargetGroupTuple,
};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format as DateTimeFormat;
use aws_smithy_types::error::display::DisplayErrorContext;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use immut_core::{Error, ErrorKind, Readiness, Result};

use crate::config::{Bucket, Imds, LaunchOptions, Pacing};
use crate::reads::{ListenerState, Reads, Target, Weights};

/// Throttling codes of the AWS SDKs' own retry classifier (aws-runtime's `THROTTLING_ERRORS`),
/// EC2's `RequestLimitExceeded`, `EC2ThrottledException` and `PriorRequestNotComplete` among them.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Capacity and quota codes: not retried, the deployment fails closed. The zonal ones among
/// them send a launch to the next subnet first (see [`is_zonal_capacity`]).
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "TooManyTargets",
    "TooManyTargetGroups",
    "TooManyLoadBalancers",
    "TooManyListeners",
    "TooManyRegistrationsForTargetId",
];

const NOT_FOUND: &[&str] = &[
    "InvalidInstanceID.NotFound",
    "InvalidInstanceID.Malformed",
    "TargetGroupNotFound",
    "ListenerNotFound",
    "LoadBalancerNotFound",
    "InvalidTarget",
];

const INVALID: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameter",
    "InvalidParameterCombination",
    "MissingParameter",
    "ValidationError",
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidGroup.NotFound",
    "InvalidGroupId.Malformed",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.Malformed",
    "InvalidLaunchTemplateId.VersionNotFound",
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidKeyPair.NotFound",
    "NoSuchEntity",
    "Unsupported",
    "InvalidUserData.Malformed",
];

const DENIED: &[&str] = &[
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidClientTokenId",
    "AccessDenied",
    "AccessDeniedException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "OptInRequired",
    "Blocked",
];

/// The error kind a service's error code means, with `status` as the fallback: a 401 or 403
/// whose body names no code we know is still a refusal (moto's ELBv2 answers a denied call
/// with a bare 403).
pub(crate) fn kind_of(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    let Some(code) = code else {
        return match status {
            Some(401 | 403) => ErrorKind::PermissionDenied,
            Some(s) if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
    };
    match code {
        c if THROTTLING.contains(&c) => ErrorKind::RateLimited,
        "RequestTimeout" | "RequestTimeoutException" => ErrorKind::Unavailable,
        c if CAPACITY.contains(&c) => ErrorKind::QuotaExceeded,
        c if c.starts_with("InvalidAMIID") => ErrorKind::InvalidInput,
        c if NOT_FOUND.contains(&c) => ErrorKind::NotFound,
        c if INVALID.contains(&c) => ErrorKind::InvalidInput,
        c if DENIED.contains(&c) => ErrorKind::PermissionDenied,
        "IdempotentParameterMismatch"
        | "DuplicateTargetGroupName"
        | "DuplicateLoadBalancerName"
        | "DuplicateListener"
        | "ResourceInUse" => ErrorKind::Conflict,
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => ErrorKind::Unavailable,
        _ if status.is_some_and(|s| s >= 500) => ErrorKind::Unavailable,
        _ if matches!(status, Some(401 | 403)) => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    }
}

/// Whether a launch error is about one zone or subnet, so that the next subnet may succeed:
/// no capacity for the instance type there, no free addresses in the subnet, or an instance
/// type the zone does not offer.
pub(crate) fn is_zonal_capacity(code: &str, message: &str) -> bool {
    matches!(code, "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "InsufficientFreeAddressesInSubnet")
        || (code == "Unsupported" && message.contains("Availability Zone"))
}

/// The credential failure inside an error, if that is what it is: the SDK reports an identity
/// it could not resolve as a dispatch failure, with the credentials error as its source.
fn credentials_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a CredentialsError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        current = e.source();
    }
    None
}

/// Maps a credentials failure: what is missing, as a non-retryable `PermissionDenied` (a slow
/// credential source is `Unavailable` and retried).
pub(crate) fn map_credentials(c: &CredentialsError, operation: &'static str) -> Error {
    let detail = DisplayErrorContext(c).to_string();
    let (kind, message) = match c {
        CredentialsError::CredentialsNotLoaded(_) => (
            ErrorKind::PermissionDenied,
            format!(
                "no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE for a profile (static keys, SSO after `aws sso login`, credential_process, assume-role), or run where a role is provided (web identity, ECS, EC2 instance profile); the chain said: {detail}"
            ),
        ),
        CredentialsError::InvalidConfiguration(_) => (
            ErrorKind::PermissionDenied,
            format!("the AWS credential configuration is invalid (check ~/.aws/config and AWS_PROFILE): {detail}"),
        ),
        CredentialsError::ProviderTimedOut(_) => {
            (ErrorKind::Unavailable, format!("loading AWS credentials timed out: {detail}"))
        }
        _ => (
            ErrorKind::PermissionDenied,
            format!(
                "the AWS credential provider failed (an expired SSO session needs `aws sso login`; a credential_process must print valid JSON): {detail}"
            ),
        ),
    };
    Error::new(kind, message).with_provider("aws").with_operation(operation)
}

/// Maps an SDK error to an immut error: the service's error code decides the kind. Only the
/// code and the service's message are kept, never request details or credentials.
pub(crate) fn map_error<E>(err: SdkError<E>, operation: &'static str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(c) = credentials_error(&err) {
        return map_credentials(c, operation);
    }
    let code = err.code().map(str::to_owned);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let kind = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Unavailable,
        _ => kind_of(code.as_deref(), status),
    };
    let message = match (&code, err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => match &err {
            SdkError::TimeoutError(_) => {
                "the call timed out (see AwsConfig::timeouts); it may still have been applied".to_owned()
            }
            SdkError::DispatchFailure(f) => {
                let cause = f.as_connector_error().map(|c| DisplayErrorContext(c).to_string()).unwrap_or_default();
                format!("the request could not be sent (connection failed): {cause}")
            }
            _ => format!("HTTP {} without an error code", status.map_or("?".to_owned(), |s| s.to_string())),
        },
    };
    let error = Error::new(kind, message).with_provider("aws").with_operation(operation);
    // Shortly after a launch EC2 may not know the new id yet: eventual consistency, not gone.
    if code.as_deref() == Some("InvalidInstanceID.NotFound") { error.with_retryable(true) } else { error }
}

/// Runs a call that is not the engine's (stack setup, an example's summary and clean-up) with
/// the same policy the engine applies to its own: retryable errors (throttling, 5xx, timeouts)
/// are retried with backoff and jitter, at most 8 times.
pub async fn retried<T, F, Fut>(operation: &'static str, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    use backon::Retryable;
    f.retry(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(8)
            .with_jitter(),
    )
    .when(|e: &Error| e.is_retryable())
    .notify(|e: &Error, delay: Duration| tracing::warn!(operation, error = %e, ?delay, "retrying"))
    .await
}

/// The most values EC2 accepts in one filter (`instance-id` with more fails whole). Target lists
/// of RegisterTargets and DeregisterTargets, and the resources of CreateTags, are sent in
/// chunks of the same size, so that no id-list call grows with the fleet.
pub(crate) const ID_CHUNK: usize = 200;

fn limiter(bucket: Bucket) -> DefaultDirectRateLimiter {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_second(nz(bucket.per_second)).allow_burst(nz(bucket.burst)))
}

/// What DescribeImages says about an AMI that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageInfo {
    /// The root device name (`/dev/xvda`), where root volume settings apply.
    pub root_device: Option<String>,
}

/// An alarm's state (`OK`, `ALARM`, `INSUFFICIENT_DATA`) and CloudWatch's reason for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlarmState {
    pub state: String,
    pub reason: Option<String>,
}

/// One RunInstances call.
pub(crate) struct RunSpec<'a> {
    pub ami: &'a str,
    pub instance_type: Option<&'a str>,
    pub count: usize,
    pub subnet: Option<&'a str>,
    pub user_data: Option<&'a str>,
    pub client_token: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub options: &'a LaunchOptions,
    pub root_device: Option<&'a str>,
    /// No interactive way in: IMDSv2 answering only the instance itself (hop limit 1).
    pub sealed: bool,
}

/// A RunInstances failure, with whether another subnet may succeed.
pub(crate) struct RunFailure {
    pub error: Error,
    pub zonal: bool,
}

/// The SDK clients, their pacing, the reads they reuse, and a count of every call by operation.
pub(crate) struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub reads: Reads,
    run_instances: DefaultDirectRateLimiter,
    instances: DefaultDirectRateLimiter,
    describe: DefaultDirectRateLimiter,
    mutate: DefaultDirectRateLimiter,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    paced: AtomicU64,
    paced_ms: AtomicU64,
    page_size: i32,
    /// Target groups of this provider's traffic, with the longest drain each may wait:
    /// instances are taken out of them before they are terminated.
    groups: Mutex<BTreeMap<String, Duration>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("calls", &self.calls).finish_non_exhaustive()
    }
}

/// Which bucket a call draws from.
#[derive(Clone, Copy)]
pub(crate) enum Pace {
    Describe,
    Mutate,
}

fn target_of(d: &aws_sdk_elasticloadbalancingv2::types::TargetHealthDescription) -> Option<Target> {
    let id = d.target()?.id()?.to_owned();
    let health = d.target_health()?;
    Some(Target {
        id,
        state: health.state()?.as_str().to_owned(),
        reason: health.reason().map(|r| r.as_str().to_owned()),
        description: health.description().map(str::to_owned),
    })
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig, pacing: &Pacing, page_size: i32, reads: Reads) -> Self {
        Clients {
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            reads,
            run_instances: limiter(pacing.run_instances),
            instances: limiter(pacing.instances),
            describe: limiter(pacing.describe),
            mutate: limiter(pacing.mutate),
            calls: Mutex::default(),
            paced: AtomicU64::default(),
            paced_ms: AtomicU64::default(),
            page_size,
            groups: Mutex::default(),
        }
    }

    /// Waits for the bucket, then counts the call.
    pub async fn pace(&self, pace: Pace, operation: &'static str) {
        let bucket = match pace {
            Pace::Describe => &self.describe,
            Pace::Mutate => &self.mutate,
        };
        self.wait(bucket, operation).await;
        *self.calls.lock().expect("poisoned").entry(operation).or_default() += 1;
    }

    /// Takes a token, waiting (and counting the wait) when the bucket is empty.
    async fn wait(&self, bucket: &DefaultDirectRateLimiter, operation: &'static str) {
        if bucket.check().is_err() {
            tracing::debug!(operation, "client-side rate limit: waiting for the bucket");
            let start = std::time::Instant::now();
            bucket.until_ready().await;
            self.paced.fetch_add(1, Ordering::Relaxed);
            self.paced_ms.fetch_add(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// How many calls waited for a client-side rate limit, and for how long.
    pub fn paced(&self) -> immut_core::PacingStats {
        immut_core::PacingStats {
            waits: self.paced.load(Ordering::Relaxed),
            waited_ms: self.paced_ms.load(Ordering::Relaxed),
        }
    }

    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("poisoned").iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    /// Registers a target group of this provider's traffic, with its longest drain.
    pub fn track_group(&self, group: &str, max_drain: Duration) {
        let mut groups = self.groups.lock().expect("poisoned");
        let entry = groups.entry(group.to_owned()).or_insert(max_drain);
        *entry = (*entry).max(max_drain);
    }

    /// The target groups of this provider's traffic.
    pub fn groups(&self) -> BTreeMap<String, Duration> {
        self.groups.lock().expect("poisoned").clone()
    }

    /// The AMI as DescribeImages reports it, or `None` when it does not exist here.
    pub async fn image(&self, ami: &str) -> Result<Option<ImageInfo>> {
        self.pace(Pace::Describe, "DescribeImages").await;
        match self.ec2.describe_images().image_ids(ami).send().await {
            Ok(out) => {
                Ok(out.images().first().map(|i| ImageInfo { root_device: i.root_device_name().map(str::to_owned) }))
            }
            Err(e) => match map_error(e, "DescribeImages") {
                e if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The state of each named alarm that exists (metric and composite alarms), by name;
    /// names CloudWatch does not know are absent. At most 100 names go in one call, as
    /// DescribeAlarms allows, and every page is read.
    pub async fn alarm_states(&self, names: &[String]) -> Result<BTreeMap<String, AlarmState>> {
        use aws_sdk_cloudwatch::types::AlarmType;
        let mut found = BTreeMap::new();
        for chunk in names.chunks(100) {
            let mut token: Option<String> = None;
            loop {
                self.pace(Pace::Describe, "DescribeAlarms").await;
                let page = self
                    .cloudwatch
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    // Without AlarmTypes, CloudWatch answers metric alarms only.
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| map_error(e, "DescribeAlarms"))?;
                let metric = page.metric_alarms().iter().map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
                let composite =
                    page.composite_alarms().iter().map(|a| (a.alarm_name(), a.state_value(), a.state_reason()));
                for (name, state, reason) in metric.chain(composite) {
                    if let (Some(name), Some(state)) = (name, state) {
                        let state = AlarmState { state: state.as_str().to_owned(), reason: reason.map(str::to_owned) };
                        found.insert(name.to_owned(), state);
                    }
                }
                token = page.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Whether the AMI could launch now, asked afresh (never from the provider's cache):
    /// missing, deregistered, disabled or failed blocks; a deprecation time in the past warns.
    pub async fn image_readiness(&self, ami: &str) -> Result<Readiness> {
        self.pace(Pace::Describe, "DescribeImages").await;
        let asked = self.ec2.describe_images().image_ids(ami).include_deprecated(true).include_disabled(true);
        let image = match asked.send().await {
            Ok(out) => out.images().first().cloned(),
            Err(e) => match map_error(e, "DescribeImages") {
                e if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::NotFound => None,
                e => return Err(e),
            },
        };
        let Some(image) = image else {
            return Ok(Readiness::blocked(format!("AMI {ami} no longer exists (deregistered, or no longer shared)")));
        };
        let state = image.state().map(|s| s.as_str().to_owned()).unwrap_or_default();
        if matches!(state.as_str(), "deregistered" | "disabled" | "failed" | "error" | "invalid") {
            let why = image.state_reason().and_then(|r| r.message()).map(|m| format!(": {m}")).unwrap_or_default();
            return Ok(Readiness::blocked(format!("AMI {ami} is {state}{why}")));
        }
        let mut readiness = Readiness::ready();
        if let Some(at) = image.deprecation_time()
            && let Ok(when) = DateTime::from_str(at, DateTimeFormat::DateTimeWithOffset)
            && when <= DateTime::from(std::time::SystemTime::now())
        {
            readiness = readiness.with_warning(format!("AMI {ami} is deprecated since {at}"));
        }
        Ok(readiness)
    }

    /// One RunInstances of `spec.count` instances (MinCount = MaxCount), tagged with the labels
    /// (instances and volumes).
    pub async fn run_instances(&self, spec: &RunSpec<'_>) -> std::result::Result<Vec<Ec2Instance>, RunFailure> {
        let fail = |error: Error| RunFailure { error, zonal: false };
        self.wait(&self.run_instances, "RunInstances").await;
        let n =
            NonZeroU32::new(spec.count as u32).ok_or_else(|| fail(Error::invalid("count", "must be at least 1")))?;
        self.instances.until_n_ready(n).await.map_err(|_| {
            fail(Error::invalid(
                "count",
                format!("{} instances exceed the instance bucket's burst; raise pacing.instances.burst", spec.count),
            ))
        })?;
        *self.calls.lock().expect("poisoned").entry("RunInstances").or_default() += 1;
        let tags: Vec<Tag> = spec.labels.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let tag_spec =
            |kind: ResourceType| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.clone())).build();
        let o = spec.options;
        let mut call = self
            .ec2
            .run_instances()
            .image_id(spec.ami)
            .set_instance_type(spec.instance_type.map(Into::into))
            .min_count(spec.count as i32)
            .max_count(spec.count as i32)
            .client_token(spec.client_token)
            .set_subnet_id(spec.subnet.map(str::to_owned))
            .set_user_data(spec.user_data.map(|u| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(u)
            }))
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(match o.imds.unwrap_or_default() {
                        Imds::Required => HttpTokensState::Required,
                        Imds::Optional => HttpTokensState::Optional,
                    })
                    // A hop limit of 1 keeps the token inside the instance: a container or a
                    // forwarding process on it cannot fetch one.
                    .set_http_put_response_hop_limit(spec.sealed.then_some(1))
                    .build(),
            )
            .set_key_name(o.key_name.clone());
        if let Some(t) = &o.launch_template {
            let template = if t.id_or_name.starts_with("lt-") {
                LaunchTemplateSpecification::builder().launch_template_id(&t.id_or_name)
            } else {
                LaunchTemplateSpecification::builder().launch_template_name(&t.id_or_name)
            };
            call = call.launch_template(template.version(t.version.as_deref().unwrap_or("$Default")).build());
        }
        if !o.security_groups.is_empty() {
            call = call.set_security_group_ids(Some(o.security_groups.clone()));
        }
        if let Some(profile) = &o.instance_profile {
            let p = IamInstanceProfileSpecification::builder();
            call = call.iam_instance_profile(
                if profile.starts_with("arn:") { p.arn(profile) } else { p.name(profile) }.build(),
            );
        }
        if o.ebs.is_set() {
            let ebs = EbsBlockDevice::builder()
                .set_volume_size(o.ebs.size_gib)
                .set_volume_type(o.ebs.volume_type.as_deref().map(VolumeType::from))
                .set_encrypted(o.ebs.encrypted.or(o.ebs.kms_key_id.as_ref().map(|_| true)))
                .set_kms_key_id(o.ebs.kms_key_id.clone())
                .delete_on_termination(true)
                .build();
            call = call.block_device_mappings(
                BlockDeviceMapping::builder().device_name(spec.root_device.unwrap_or("/dev/xvda")).ebs(ebs).build(),
            );
        }
        if let Some(spot) = &o.spot {
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .set_max_price(spot.max_price.clone())
                            .build(),
                    )
                    .build(),
            );
        }
        let result = call.send().await;
        self.reads.ec2_changed();
        match result {
            Ok(out) => Ok(out.instances().to_vec()),
            Err(e) => {
                let zonal = is_zonal_capacity(e.code().unwrap_or(""), e.message().unwrap_or(""));
                Err(RunFailure { error: map_error(e, "RunInstances"), zonal })
            }
        }
    }

    /// Every page of DescribeInstances for these filters.
    pub async fn describe_instances(&self, filters: Vec<Filter>) -> Result<Vec<Ec2Instance>> {
        let mut token = None;
        let mut found = Vec::new();
        loop {
            self.pace(Pace::Describe, "DescribeInstances").await;
            let page = self
                .ec2
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .max_results(self.page_size)
                .send()
                .await
                .map_err(|e| map_error(e, "DescribeInstances"))?;
            found.extend(page.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
            if token.is_none() {
                return Ok(found);
            }
        }
    }

    pub async fn terminate(&self, ids: &[String]) -> Result<()> {
        self.pace(Pace::Mutate, "TerminateInstances").await;
        let result = self.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await;
        self.reads.ec2_changed();
        self.reads.forget_status(ids);
        result.map(|_| ()).map_err(|e| map_error(e, "TerminateInstances"))
    }

    /// The status of these instances, in calls of at most [`ID_CHUNK`] ids (an `instance-id`
    /// filter, which EC2 caps at 200 values).
    pub async fn instance_status(&self, ids: &[String]) -> Result<Vec<InstanceStatus>> {
        let mut found = Vec::new();
        for chunk in ids.chunks(ID_CHUNK) {
            let mut token = None;
            loop {
                self.pace(Pace::Describe, "DescribeInstanceStatus").await;
                // A filter, not InstanceIds: an id EC2 does not know yet is absent, not an error.
                let out = self
                    .ec2
                    .describe_instance_status()
                    .filters(Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build())
                    .include_all_instances(true)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| map_error(e, "DescribeInstanceStatus"))?;
                found.extend(out.instance_statuses().iter().cloned());
                token = out.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Registers targets, in calls of at most [`ID_CHUNK`].
    pub async fn register(&self, group: &str, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "RegisterTargets").await;
            let targets = chunk.iter().map(|id| TargetDescription::builder().id(id).build()).collect();
            let result = self.elb.register_targets().target_group_arn(group).set_targets(Some(targets)).send().await;
            self.reads.group_changed(group);
            result.map_err(|e| map_error(e, "RegisterTargets"))?;
        }
        Ok(())
    }

    /// Deregisters targets, in calls of at most [`ID_CHUNK`].
    pub async fn deregister(&self, group: &str, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "DeregisterTargets").await;
            let targets = chunk.iter().map(|id| TargetDescription::builder().id(id).build()).collect();
            let result = self.elb.deregister_targets().target_group_arn(group).set_targets(Some(targets)).send().await;
            self.reads.group_changed(group);
            result.map_err(|e| map_error(e, "DeregisterTargets"))?;
        }
        Ok(())
    }

    /// Tags instances (adoption), in calls of at most [`ID_CHUNK`] resources.
    pub async fn create_tags(&self, ids: &[String], labels: &BTreeMap<String, String>) -> Result<()> {
        let tags: Vec<Tag> = labels.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "CreateTags").await;
            let result =
                self.ec2.create_tags().set_resources(Some(chunk.to_vec())).set_tags(Some(tags.clone())).send().await;
            self.reads.ec2_changed();
            result.map_err(|e| map_error(e, "CreateTags"))?;
        }
        Ok(())
    }

    /// Every target of the group with its health: a reusable answer if there is one
    /// (`reuse`), otherwise one DescribeTargetHealth, kept for the next reader.
    pub async fn targets(&self, group: &str, reuse: bool) -> Result<Vec<Target>> {
        if reuse && let Some(kept) = self.reads.targets(group) {
            return Ok(kept);
        }
        let generation = self.reads.group_generation(group);
        self.pace(Pace::Describe, "DescribeTargetHealth").await;
        let asked = tokio::time::Instant::now();
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(group)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeTargetHealth"))?;
        let targets: Vec<Target> = out.target_health_descriptions().iter().filter_map(target_of).collect();
        self.reads.keep_targets(group, generation, asked, targets.clone());
        Ok(targets)
    }

    /// The weights the listener's forward gives `groups` (reused within the listener TTL unless
    /// `fresh`). A listener that forwards to a group that is neither is refused.
    pub async fn listener(&self, listener: &str, groups: &[String; 2], fresh: bool) -> Result<ListenerState> {
        if !fresh && let Some(kept) = self.reads.listener(listener) {
            return Ok(kept);
        }
        self.pace(Pace::Describe, "DescribeListeners").await;
        let out = self
            .elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeListeners"))?;
        let actions = out.listeners().first().map(|l| l.default_actions().to_vec()).unwrap_or_default();
        let forward = actions
            .iter()
            .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
            .ok_or_else(|| Error::invalid("listener_arn", "the listener's default action does not forward"))?;
        let mut forwards: Vec<(String, i32)> = forward
            .forward_config()
            .map(|c| {
                c.target_groups()
                    .iter()
                    .filter_map(|t| Some((t.target_group_arn()?.to_owned(), t.weight().unwrap_or(1))))
                    .collect()
            })
            .unwrap_or_default();
        if forwards.is_empty()
            && let Some(arn) = forward.target_group_arn()
        {
            forwards.push((arn.to_owned(), 1));
        }
        let mut weights = Weights::default();
        for (arn, weight) in forwards {
            match groups.iter().position(|g| *g == arn) {
                Some(i) => weights.0[i] = Some(weight),
                None if weight > 0 => {
                    return Err(Error::invalid(
                        "listener_arn",
                        format!("the listener forwards to {arn}, which is neither the blue nor the green group"),
                    ));
                }
                None => {}
            }
        }
        let state = ListenerState { weights, actions };
        self.reads.keep_listener(listener, state.clone());
        Ok(state)
    }

    /// Sets the forward of the listener to `weights` with one ModifyListener, keeping its
    /// other actions and the forward's stickiness. A group with weight `None` is left out.
    pub async fn set_weights(
        &self,
        listener: &str,
        groups: &[String; 2],
        current: &ListenerState,
        weights: Weights,
    ) -> Result<ListenerState> {
        let tuples: Vec<TargetGroupTuple> = groups
            .iter()
            .zip(weights.0)
            .filter_map(|(g, w)| Some(TargetGroupTuple::builder().target_group_arn(g).weight(w?).build()))
            .collect();
        let stickiness = current
            .actions
            .iter()
            .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
            .and_then(|a| a.forward_config())
            .and_then(|c| c.target_group_stickiness_config())
            .cloned();
        let forward = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples))
                    .set_target_group_stickiness_config(stickiness)
                    .build(),
            )
            .set_order(
                current.actions.iter().find(|a| a.r#type() == Some(&ActionTypeEnum::Forward)).and_then(|a| a.order()),
            )
            .build();
        let actions: Vec<Action> = if current.actions.is_empty() {
            vec![forward]
        } else {
            current
                .actions
                .iter()
                .map(|a| if a.r#type() == Some(&ActionTypeEnum::Forward) { forward.clone() } else { a.clone() })
                .collect()
        };
        self.pace(Pace::Mutate, "ModifyListener").await;
        match self.elb.modify_listener().listener_arn(listener).set_default_actions(Some(actions.clone())).send().await
        {
            Ok(_) => {
                let state = ListenerState { weights, actions };
                self.reads.keep_listener(listener, state.clone());
                Ok(state)
            }
            Err(e) => {
                // Applied or not: the next reader asks the listener again.
                self.reads.forget_listener(listener);
                Err(map_error(e, "ModifyListener"))
            }
        }
    }

    /// The group's deregistration delay (`deregistration_delay.timeout_seconds`), reused within
    /// the listener TTL.
    pub async fn deregistration_delay(&self, group: &str) -> Result<Duration> {
        if let Some(kept) = self.reads.delay(group) {
            return Ok(kept);
        }
        self.pace(Pace::Describe, "DescribeTargetGroupAttributes").await;
        let out = self
            .elb
            .describe_target_group_attributes()
            .target_group_arn(group)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeTargetGroupAttributes"))?;
        let seconds = out
            .attributes()
            .iter()
            .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value())
            .and_then(|v| v.parse::<u64>().ok())
            // ELB's default when the attribute is absent.
            .unwrap_or(300);
        let delay = Duration::from_secs(seconds);
        self.reads.keep_delay(group, delay);
        Ok(delay)
    }
}

/// Keyed by what a capacity miss is about: a subnet and an instance type.
pub(crate) type CapacityMisses = Mutex<HashMap<(String, String), tokio::time::Instant>>;

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_ec2::config::http::HttpResponse;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str, status: u16) -> SdkError<RunInstancesError> {
        let meta = ErrorMetadata::builder().code(code).message("from the service").build();
        SdkError::service_error(
            RunInstancesError::generic(meta),
            HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn codes_map_to_kinds() {
        for (code, status, kind) in [
            ("RequestLimitExceeded", 503, ErrorKind::RateLimited),
            ("Throttling", 400, ErrorKind::RateLimited),
            ("EC2ThrottledException", 400, ErrorKind::RateLimited),
            ("PriorRequestNotComplete", 400, ErrorKind::RateLimited),
            ("ThrottlingException", 400, ErrorKind::RateLimited),
            ("RequestTimeout", 400, ErrorKind::Unavailable),
            ("InsufficientInstanceCapacity", 500, ErrorKind::QuotaExceeded),
            ("InsufficientFreeAddressesInSubnet", 400, ErrorKind::QuotaExceeded),
            ("InstanceLimitExceeded", 400, ErrorKind::QuotaExceeded),
            ("VcpuLimitExceeded", 400, ErrorKind::QuotaExceeded),
            ("InvalidInstanceID.NotFound", 400, ErrorKind::NotFound),
            ("InvalidAMIID.NotFound", 400, ErrorKind::InvalidInput),
            ("InvalidLaunchTemplateName.NotFoundException", 400, ErrorKind::InvalidInput),
            ("UnauthorizedOperation", 403, ErrorKind::PermissionDenied),
            ("ExpiredToken", 400, ErrorKind::PermissionDenied),
            ("InternalError", 500, ErrorKind::Unavailable),
            ("SomethingNew", 502, ErrorKind::Unavailable),
            ("SomethingNew", 400, ErrorKind::Other),
        ] {
            let e = map_error(service_error(code, status), "RunInstances");
            assert_eq!(e.kind(), kind, "{code}");
            assert!(e.to_string().contains(code) && e.to_string().contains("[aws RunInstances]"), "{e}");
        }
        assert!(map_error(service_error("RequestLimitExceeded", 503), "RunInstances").is_retryable());
        assert!(!map_error(service_error("InsufficientInstanceCapacity", 500), "RunInstances").is_retryable());
        assert!(is_zonal_capacity("InsufficientInstanceCapacity", ""));
        assert!(is_zonal_capacity("InsufficientFreeAddressesInSubnet", ""));
        assert!(is_zonal_capacity(
            "Unsupported",
            "Your requested instance type is not supported in your requested Availability Zone (us-east-1e)."
        ));
        assert!(!is_zonal_capacity("Unsupported", "The requested configuration is currently not supported."));
        assert!(!is_zonal_capacity("InstanceLimitExceeded", ""), "an account quota is the same in every zone");
    }

    #[test]
    fn a_refusal_without_an_error_code_is_permission_denied() {
        for status in [401, 403] {
            let bare = SdkError::<RunInstancesError>::service_error(
                RunInstancesError::generic(ErrorMetadata::builder().build()),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            );
            let e = map_error(bare, "DescribeTargetGroups");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{status}: {e}");
            assert!(!e.is_retryable() && e.message().contains(&format!("HTTP {status}")), "{e}");
            let unknown = map_error(service_error("SomethingNew", status), "DescribeTargetGroups");
            assert_eq!(unknown.kind(), ErrorKind::PermissionDenied, "{status}: {unknown}");
        }
        assert_eq!(kind_of(None, Some(400)), ErrorKind::Other);
        assert_eq!(kind_of(None, Some(503)), ErrorKind::Unavailable);
        assert_eq!(kind_of(Some("Throttling"), Some(403)), ErrorKind::RateLimited, "a known code decides first");
    }

    #[test]
    fn a_credential_failure_says_what_is_missing_and_is_not_retried() {
        let failure = SdkError::<RunInstancesError>::dispatch_failure(
            aws_smithy_runtime_api::client::result::ConnectorError::other(
                Box::new(CredentialsError::not_loaded("no providers in chain provided credentials")),
                None,
            ),
        );
        let e = map_error(failure, "DescribeInstances");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(!e.is_retryable());
        assert!(e.message().contains("AWS_ACCESS_KEY_ID") && e.message().contains("AWS_PROFILE"), "{e}");
        assert!(e.message().contains("no providers in chain"), "the chain's own words are kept: {e}");

        let slow = map_credentials(&CredentialsError::provider_timed_out(Duration::from_secs(5)), "RunInstances");
        assert!(slow.is_retryable() && slow.kind() == ErrorKind::Unavailable, "{slow}");
        let broken = map_credentials(&CredentialsError::invalid_configuration("profile loop"), "RunInstances");
        assert!(broken.message().contains("profile loop") && !broken.is_retryable(), "{broken}");
    }

    #[test]
    fn a_timeout_is_retryable_and_says_so() {
        let timeout = SdkError::<RunInstancesError>::timeout_error("attempt timeout occurred after 300ms");
        let e = map_error(timeout, "DescribeInstances");
        assert!(e.is_retryable() && e.message().contains("timed out"), "{e}");
    }
}
