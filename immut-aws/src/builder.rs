use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use immut_core::{Error, Result};

use crate::client::{Clients, map_credentials};
use crate::config::{AwsConfig, LaunchOptions, Pacing, StaticCredentials, Timeouts, UnmanagedScope};
use crate::provider::AwsProvider;
use crate::reads::Reads;

/// Builds the AWS provider and its traffic side. Setters never fail; [`AwsBuilder::build`]
/// checks the settings and loads the SDK configuration.
#[derive(Debug, Clone, Default)]
pub struct AwsBuilder {
    config: AwsConfig,
    credentials_provider: Option<SharedCredentialsProvider>,
}

impl AwsBuilder {
    /// Starts from defaults (region and credentials from the SDK's chains).
    pub fn new() -> Self {
        AwsBuilder::default()
    }

    /// Starts from a configuration (for example [`AwsConfig::from_env`]).
    pub fn from_config(config: AwsConfig) -> Self {
        AwsBuilder { config, credentials_provider: None }
    }

    /// The configuration as set so far.
    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// The region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.config.region = Some(region.into());
        self
    }

    /// The shared-config profile (as `AWS_PROFILE` would choose it).
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.config.profile = Some(profile.into());
        self
    }

    /// An endpoint override (moto: `http://127.0.0.1:5000`).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.config.endpoint_url = Some(url.into());
        self
    }

    /// Static credentials instead of the default chain.
    pub fn credentials(mut self, access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        self.config.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        });
        self
    }

    /// A credentials provider of your own instead of the default chain (for example one of
    /// `aws_config`'s providers, configured by hand). It wins over [`AwsBuilder::credentials`].
    pub fn credentials_provider(mut self, provider: impl ProvideCredentials + 'static) -> Self {
        self.credentials_provider = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Resolve the credentials in [`AwsBuilder::build`], so that a missing identity fails there
    /// with `PermissionDenied` naming what is missing (default: at the first call).
    pub fn check_credentials(mut self, check: bool) -> Self {
        self.config.check_credentials = check;
        self
    }

    /// A subnet to launch into; call again to spread waves over several (one per zone).
    pub fn subnet(mut self, subnet_id: impl Into<String>) -> Self {
        self.config.launch.subnets.push(subnet_id.into());
        self
    }

    /// The subnets to spread waves over, replacing any set before.
    pub fn subnets(mut self, subnet_ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.launch.subnets = subnet_ids.into_iter().map(Into::into).collect();
        self
    }

    /// Launch options for every launch (a baseline's params override them per key).
    pub fn launch_options(mut self, options: LaunchOptions) -> Self {
        self.config.launch = options;
        self
    }

    /// The instance type when neither the baseline nor a launch template names one.
    pub fn default_instance_type(mut self, instance_type: impl Into<String>) -> Self {
        self.config.default_instance_type = Some(instance_type.into());
        self
    }

    /// Where instances launched outside immut are looked for (see [`UnmanagedScope`]).
    pub fn unmanaged_scope(mut self, scope: UnmanagedScope) -> Self {
        self.config.unmanaged_scope = Some(scope);
        self
    }

    /// Client-side pacing.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.config.pacing = pacing;
        self
    }

    /// SDK timeouts (connect, attempt, operation).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// DescribeInstances page size, 5 to 1000 (default 200).
    pub fn describe_page_size(mut self, size: i32) -> Self {
        self.config.describe_page_size = Some(size);
        self
    }

    /// Whether EC2 honours RunInstances' ClientToken (default `true`). Pass `false` against an
    /// emulator that ignores it (moto launches again on a repeated token), so that the provider
    /// does not promise idempotent launches it cannot keep; see
    /// [`AwsConfig::honours_client_token`].
    pub fn honours_client_token(mut self, honours: bool) -> Self {
        self.config.honours_client_token = Some(honours);
        self
    }

    /// The most ids per TerminateInstances call, 1 to 1000 (default 1000). Lower it only to
    /// exercise batching in tests.
    pub fn max_terminate_batch(mut self, batch: usize) -> Self {
        self.config.max_terminate_batch = Some(batch);
        self
    }

    /// How long a new instance may stay invisible to describe (default 30 s); zero against a
    /// strongly consistent emulator. See [`AwsConfig::consistency_window`].
    pub fn consistency_window(mut self, window: Duration) -> Self {
        self.config.consistency_window = Some(window);
        self
    }

    /// How long reads are reused when nothing of ours changed them (default 2 s); see
    /// [`AwsConfig::read_ttl`].
    pub fn read_ttl(mut self, ttl: Duration) -> Self {
        self.config.read_ttl = Some(ttl);
        self
    }

    /// How long passed status checks are trusted (default 60 s); see
    /// [`AwsConfig::status_check_ttl`].
    pub fn status_check_ttl(mut self, ttl: Duration) -> Self {
        self.config.status_check_ttl = Some(ttl);
        self
    }

    /// How long the listener's weights and groups' settings are reused (default 30 s); see
    /// [`AwsConfig::listener_ttl`].
    pub fn listener_ttl(mut self, ttl: Duration) -> Self {
        self.config.listener_ttl = Some(ttl);
        self
    }

    /// Checks the settings, loads the SDK configuration and builds the provider.
    pub async fn build(self) -> Result<AwsProvider> {
        Ok(AwsProvider::new(Arc::new(self.clients().await?), &self.config))
    }

    fn check(&self) -> Result<()> {
        let c = &self.config;
        if let Some(url) = &c.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::invalid("endpoint_url", format!("{url:?} is not an http(s) URL")));
        }
        for (field, b) in [
            ("pacing.run_instances", c.pacing.run_instances),
            ("pacing.instances", c.pacing.instances),
            ("pacing.describe", c.pacing.describe),
            ("pacing.mutate", c.pacing.mutate),
        ] {
            if b.burst == 0 || b.per_second == 0 {
                return Err(Error::invalid(field, "burst and per_second must both be at least 1"));
            }
        }
        let page_size = c.describe_page_size.unwrap_or(200);
        if !(5..=1000).contains(&page_size) {
            return Err(Error::invalid("describe_page_size", format!("{page_size} is outside 5 to 1000")));
        }
        if let Some(batch) = c.max_terminate_batch
            && !(1..=1000).contains(&batch)
        {
            return Err(Error::invalid(
                "max_terminate_batch",
                format!("{batch} is outside 1 to 1000 (EC2 terminates at most 1000 ids per call)"),
            ));
        }
        let t = &c.timeouts;
        for (field, d) in [
            ("timeouts.connect", t.connect()),
            ("timeouts.attempt", t.attempt()),
            ("timeouts.operation", t.operation()),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(field, "must be above zero"));
            }
        }
        if t.attempt() > t.operation() {
            return Err(Error::invalid("timeouts.attempt", "is longer than timeouts.operation, which bounds it"));
        }
        if let Some(scope) = &c.unmanaged_scope {
            let empty = match scope {
                UnmanagedScope::Vpc(v) => v.is_empty(),
                UnmanagedScope::Subnets(s) => s.is_empty(),
                UnmanagedScope::TagKey(k) => k.is_empty(),
            };
            if empty {
                return Err(Error::invalid("unmanaged_scope", "is empty; name the VPC, the subnets or the tag key"));
            }
        }
        c.launch.validate("launch")
    }

    async fn clients(&self) -> Result<Clients> {
        self.check()?;
        let c = &self.config;
        let t = &c.timeouts;
        // The engine owns retries (with backoff and jitter); the SDK's are turned off so that
        // one throttled call is not retried by two layers.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(t.connect())
                    .operation_attempt_timeout(t.attempt())
                    .operation_timeout(t.operation())
                    .build(),
            );
        if let Some(profile) = &c.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &c.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &c.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(provider) = &self.credentials_provider {
            loader = loader.credentials_provider(provider.clone());
        } else if let Some(creds) = &c.credentials {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                None,
                None,
                "immut-static",
            ));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::invalid(
                "region",
                "is not set; pass .region(..), set AWS_REGION, or give the profile a region",
            ));
        }
        if c.check_credentials {
            let Some(provider) = sdk.credentials_provider() else {
                return Err(Error::new(
                    immut_core::ErrorKind::PermissionDenied,
                    "no credentials provider is configured (the default chain was replaced by none)",
                )
                .with_provider("aws"));
            };
            provider.provide_credentials().await.map_err(|e| map_credentials(&e, "build"))?;
        }
        let reads = Reads::new(
            c.read_ttl.unwrap_or(Duration::from_secs(2)),
            c.status_check_ttl.unwrap_or(Duration::from_secs(60)),
            c.listener_ttl.unwrap_or(Duration::from_secs(30)),
        );
        Ok(Clients::new(&sdk, &c.pacing, c.describe_page_size.unwrap_or(200), reads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::future;

    #[test]
    fn credentials_never_show_in_debug() {
        let builder = AwsBuilder::new().credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("AKIAIOSFODNN7EXAMPLE"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[tokio::test]
    async fn bad_settings_fail_in_build_naming_the_field() {
        let e = AwsBuilder::new().region("us-east-1").endpoint_url("127.0.0.1:5000").build().await.unwrap_err();
        assert!(e.to_string().contains("endpoint_url"), "{e}");
        let mut pacing = Pacing::default();
        pacing.describe.per_second = 0;
        let e = AwsBuilder::new().region("us-east-1").pacing(pacing).build().await.unwrap_err();
        assert!(e.to_string().contains("pacing.describe"), "{e}");
        let e = AwsBuilder::new().region("us-east-1").max_terminate_batch(1001).build().await.unwrap_err();
        assert!(e.to_string().contains("max_terminate_batch"), "{e}");
        let e = AwsBuilder::new()
            .region("us-east-1")
            .timeouts(Timeouts { attempt: Some(Duration::from_secs(90)), ..Timeouts::default() })
            .build()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("timeouts.attempt"), "{e}");
        let e = AwsBuilder::new().region("us-east-1").subnet("net-1").build().await.unwrap_err();
        assert!(e.to_string().contains("launch.subnets"), "{e}");
        let e = AwsBuilder::new().region("us-east-1").unmanaged_scope(UnmanagedScope::Vpc(String::new())).build().await;
        assert!(e.unwrap_err().to_string().contains("unmanaged_scope"));
    }

    /// A credentials source that finds nothing, as the default chain does on a machine
    /// without credentials.
    #[derive(Debug)]
    struct Nothing;

    impl ProvideCredentials for Nothing {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )))
        }
    }

    #[tokio::test]
    async fn missing_credentials_fail_in_build_when_asked_saying_what_is_missing() {
        let e = AwsBuilder::new()
            .region("us-east-1")
            .credentials_provider(Nothing)
            .check_credentials(true)
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), immut_core::ErrorKind::PermissionDenied, "{e}");
        assert!(!e.is_retryable());
        assert!(e.message().contains("AWS_ACCESS_KEY_ID") && e.message().contains("AWS_PROFILE"), "{e}");
        // Without the check, build succeeds and the first call reports the same.
        AwsBuilder::new().region("us-east-1").credentials_provider(Nothing).build().await.unwrap();
    }
}
