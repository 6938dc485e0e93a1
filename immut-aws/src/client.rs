//! SDK calls, paced by client-side token buckets and counted, plus the one function that maps
//! SDK errors to [`immut_core::Error`].

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance, InstanceStatus, ResourceType, Tag, TagSpecification};
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, TargetDescription, TargetHealthStateEnum};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use immut_core::{Error, ErrorKind, Result};

use crate::config::{Bucket, Pacing};

/// Maps an SDK error to an immut error: the service's error code decides the kind. Only the
/// code and the service's message are kept, never request details or credentials.
pub(crate) fn map_error<E>(err: SdkError<E>, operation: &'static str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let kind = match (&err, code.as_deref()) {
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _) => ErrorKind::Unavailable,
        (_, Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" | "SlowDown")) => {
            ErrorKind::RateLimited
        }
        (
            _,
            Some(
                "InsufficientInstanceCapacity"
                | "InstanceLimitExceeded"
                | "VcpuLimitExceeded"
                | "TooManyTargets"
                | "TooManyTargetGroups"
                | "TooManyLoadBalancers",
            ),
        ) => ErrorKind::QuotaExceeded,
        (_, Some(c)) if c.starts_with("InvalidAMIID") => ErrorKind::InvalidInput,
        (
            _,
            Some(
                "InvalidInstanceID.NotFound"
                | "InvalidInstanceID.Malformed"
                | "TargetGroupNotFound"
                | "ListenerNotFound"
                | "LoadBalancerNotFound"
                | "InvalidTarget",
            ),
        ) => ErrorKind::NotFound,
        (
            _,
            Some(
                "InvalidParameterValue"
                | "InvalidParameterCombination"
                | "MissingParameter"
                | "ValidationError"
                | "InvalidSubnetID.NotFound"
                | "InvalidGroup.NotFound"
                | "Unsupported"
                | "InvalidUserData.Malformed",
            ),
        ) => ErrorKind::InvalidInput,
        (
            _,
            Some(
                "UnauthorizedOperation"
                | "AuthFailure"
                | "InvalidClientTokenId"
                | "AccessDenied"
                | "AccessDeniedException"
                | "SignatureDoesNotMatch"
                | "ExpiredToken",
            ),
        ) => ErrorKind::PermissionDenied,
        (_, Some("IdempotentParameterMismatch" | "DuplicateTargetGroupName")) => ErrorKind::Conflict,
        (_, Some("InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable")) => ErrorKind::Unavailable,
        _ if status.is_some_and(|s| s >= 500) => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    let message = match (&code, err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => match &err {
            SdkError::TimeoutError(_) => "the call timed out".to_owned(),
            SdkError::DispatchFailure(_) => "the request could not be sent (connection failed)".to_owned(),
            _ => format!("HTTP {} without an error code", status.map_or("?".to_owned(), |s| s.to_string())),
        },
    };
    let error = Error::new(kind, message).with_provider("aws").with_operation(operation);
    // Shortly after a launch EC2 may not know the new id yet: eventual consistency, not gone.
    if code.as_deref() == Some("InvalidInstanceID.NotFound") { error.with_retryable(true) } else { error }
}

/// The most values EC2 accepts in one filter (`instance-id` with more fails whole). Target lists
/// of RegisterTargets and DeregisterTargets, and the resources of CreateTags, are sent in
/// chunks of the same size, so that no id-list call grows with the fleet.
pub(crate) const ID_CHUNK: usize = 200;

fn limiter(bucket: Bucket) -> DefaultDirectRateLimiter {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_second(nz(bucket.per_second)).allow_burst(nz(bucket.burst)))
}

/// The SDK clients, their pacing, and a count of every call by operation.
pub(crate) struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    run_instances: DefaultDirectRateLimiter,
    instances: DefaultDirectRateLimiter,
    describe: DefaultDirectRateLimiter,
    mutate: DefaultDirectRateLimiter,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    paced: std::sync::atomic::AtomicU64,
    paced_ms: std::sync::atomic::AtomicU64,
    page_size: i32,
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

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig, pacing: &Pacing, page_size: i32) -> Self {
        Clients {
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            run_instances: limiter(pacing.run_instances),
            instances: limiter(pacing.instances),
            describe: limiter(pacing.describe),
            mutate: limiter(pacing.mutate),
            calls: Mutex::default(),
            paced: Default::default(),
            paced_ms: Default::default(),
            page_size,
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
            self.paced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.paced_ms.fetch_add(start.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many calls waited for a client-side rate limit, and for how long.
    pub fn paced(&self) -> immut_core::PacingStats {
        immut_core::PacingStats {
            waits: self.paced.load(std::sync::atomic::Ordering::Relaxed),
            waited_ms: self.paced_ms.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("poisoned").iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    pub async fn image_exists(&self, ami: &str) -> Result<bool> {
        self.pace(Pace::Describe, "DescribeImages").await;
        match self.ec2.describe_images().image_ids(ami).send().await {
            Ok(out) => Ok(!out.images().is_empty()),
            Err(e) => match map_error(e, "DescribeImages") {
                e if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::NotFound => Ok(false),
                e => Err(e),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run_instances(
        &self,
        ami: &str,
        instance_type: &str,
        count: usize,
        subnet: Option<&str>,
        user_data: Option<&str>,
        client_token: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Ec2Instance>> {
        self.wait(&self.run_instances, "RunInstances").await;
        let n = NonZeroU32::new(count as u32).ok_or_else(|| Error::invalid("count", "must be at least 1"))?;
        self.instances.until_n_ready(n).await.map_err(|_| {
            Error::invalid(
                "count",
                format!("{count} instances exceed the instance bucket's burst; raise pacing.instances.burst"),
            )
        })?;
        *self.calls.lock().expect("poisoned").entry("RunInstances").or_default() += 1;
        let tags: Vec<Tag> = labels.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let spec =
            |kind: ResourceType| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.clone())).build();
        let out = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(instance_type.into())
            .min_count(count as i32)
            .max_count(count as i32)
            .client_token(client_token)
            .set_subnet_id(subnet.map(str::to_owned))
            .set_user_data(user_data.map(|u| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(u)
            }))
            .tag_specifications(spec(ResourceType::Instance))
            .tag_specifications(spec(ResourceType::Volume))
            .send()
            .await
            .map_err(|e| map_error(e, "RunInstances"))?;
        Ok(out.instances().to_vec())
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
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_error(e, "TerminateInstances"))
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
    pub async fn register(&self, target_group: &str, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "RegisterTargets").await;
            let targets = chunk.iter().map(|id| TargetDescription::builder().id(id).build()).collect();
            self.elb
                .register_targets()
                .target_group_arn(target_group)
                .set_targets(Some(targets))
                .send()
                .await
                .map_err(|e| map_error(e, "RegisterTargets"))?;
        }
        Ok(())
    }

    /// Deregisters targets, in calls of at most [`ID_CHUNK`].
    pub async fn deregister(&self, target_group: &str, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "DeregisterTargets").await;
            let targets = chunk.iter().map(|id| TargetDescription::builder().id(id).build()).collect();
            self.elb
                .deregister_targets()
                .target_group_arn(target_group)
                .set_targets(Some(targets))
                .send()
                .await
                .map_err(|e| map_error(e, "DeregisterTargets"))?;
        }
        Ok(())
    }

    /// Tags instances (adoption), in calls of at most [`ID_CHUNK`] resources.
    pub async fn create_tags(&self, ids: &[String], labels: &BTreeMap<String, String>) -> Result<()> {
        let tags: Vec<Tag> = labels.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        for chunk in ids.chunks(ID_CHUNK) {
            self.pace(Pace::Mutate, "CreateTags").await;
            self.ec2
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| map_error(e, "CreateTags"))?;
        }
        Ok(())
    }

    /// (instance id, target state) of every target in the group.
    pub async fn target_health(&self, target_group: &str) -> Result<Vec<(String, TargetHealthStateEnum)>> {
        self.pace(Pace::Describe, "DescribeTargetHealth").await;
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(target_group)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeTargetHealth"))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let id = d.target()?.id()?.to_owned();
                let state = d.target_health()?.state()?.clone();
                Some((id, state))
            })
            .collect())
    }

    /// The target group the listener forwards to.
    pub async fn listener_target(&self, listener: &str) -> Result<String> {
        self.pace(Pace::Describe, "DescribeListeners").await;
        let out = self
            .elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| map_error(e, "DescribeListeners"))?;
        out.listeners()
            .first()
            .and_then(|l| l.default_actions().first())
            .and_then(|a| a.target_group_arn())
            .map(str::to_owned)
            .ok_or_else(|| Error::invalid("listener_arn", "the listener does not forward to a target group"))
    }

    pub async fn forward(&self, listener: &str, target_group: &str) -> Result<()> {
        self.pace(Pace::Mutate, "ModifyListener").await;
        let action = Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(target_group).build();
        self.elb
            .modify_listener()
            .listener_arn(listener)
            .default_actions(action)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_error(e, "ModifyListener"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            ("InsufficientInstanceCapacity", 500, ErrorKind::QuotaExceeded),
            ("InstanceLimitExceeded", 400, ErrorKind::QuotaExceeded),
            ("InvalidInstanceID.NotFound", 400, ErrorKind::NotFound),
            ("InvalidAMIID.NotFound", 400, ErrorKind::InvalidInput),
            ("UnauthorizedOperation", 403, ErrorKind::PermissionDenied),
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
    }
}
