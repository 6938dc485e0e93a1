use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use immut_core::{Error, Result};

use crate::client::Clients;
use crate::config::{AwsConfig, Pacing, StaticCredentials};
use crate::provider::AwsProvider;

/// Builds the AWS provider and its traffic side. Setters never fail; [`AwsBuilder::build`]
/// checks the settings and loads the SDK configuration.
#[derive(Debug, Clone, Default)]
pub struct AwsBuilder {
    config: AwsConfig,
}

impl AwsBuilder {
    /// Starts from defaults (region and credentials from the SDK's chains).
    pub fn new() -> Self {
        AwsBuilder::default()
    }

    /// Starts from a configuration (for example [`AwsConfig::from_env`]).
    pub fn from_config(config: AwsConfig) -> Self {
        AwsBuilder { config }
    }

    /// The region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.config.region = Some(region.into());
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

    /// The subnet to launch into when the baseline names none.
    pub fn subnet(mut self, subnet_id: impl Into<String>) -> Self {
        self.config.subnet_id = Some(subnet_id.into());
        self
    }

    /// Client-side pacing.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.config.pacing = pacing;
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
    pub fn consistency_window(mut self, window: std::time::Duration) -> Self {
        self.config.consistency_window = Some(window);
        self
    }

    /// Checks the settings, loads the SDK configuration and builds the provider.
    pub async fn build(self) -> Result<AwsProvider> {
        Ok(AwsProvider::new(Arc::new(self.clients().await?), &self.config))
    }

    async fn clients(&self) -> Result<Clients> {
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
        // The engine owns retries (with backoff and jitter); the SDK's are turned off so that
        // one throttled call is not retried by two layers.
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(region) = &c.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &c.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(creds) = &c.credentials {
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
            return Err(Error::invalid("region", "is not set; pass .region(..) or set AWS_REGION"));
        }
        Ok(Clients::new(&sdk, &c.pacing, page_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
