use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::{Secret, TokenCredential};
use immut_core::{Error, Result};

use crate::auth::{Cached, DEFAULT_AUTHORITY, Source};
use crate::client::{ClientSettings, Clients};
use crate::config::{AzureConfig, Pacing, var};
use crate::provider::{AzureProvider, Defaults};

/// Credentials the builder was given. Never shown.
#[derive(Clone)]
enum Credentials {
    /// From the environment or [`AzureBuilder::client_secret`].
    ClientSecret(Secret),
    /// [`AzureBuilder::static_token`]: the fake.
    Static(Secret),
    /// [`AzureBuilder::credential`].
    Custom(Arc<dyn TokenCredential>),
}

/// Builds the Azure provider. Setters never fail; [`AzureBuilder::build`] checks the settings
/// (errors name the field) and builds the clients.
#[derive(Clone, Default)]
pub struct AzureBuilder {
    config: AzureConfig,
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for AzureBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = self.credentials.as_ref().map(|c| match c {
            Credentials::ClientSecret(_) => "client secret <redacted>",
            Credentials::Static(_) => "static token <redacted>",
            Credentials::Custom(_) => "credential <redacted>",
        });
        f.debug_struct("AzureBuilder").field("config", &self.config).field("credentials", &credentials).finish()
    }
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

fn valid_group(g: &str) -> bool {
    (1..=90).contains(&g.len())
        && g.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'))
        && !g.ends_with('.')
}

impl AzureBuilder {
    /// Starts from defaults: nothing set.
    pub fn new() -> Self {
        AzureBuilder::default()
    }

    /// Starts from a configuration (for example [`AzureConfig::from_env`]).
    pub fn from_config(config: AzureConfig) -> Self {
        AzureBuilder { config, credentials: None }
    }

    /// The standard Azure environment ([`AzureConfig::from_env`]) and, when
    /// `AZURE_CLIENT_SECRET` is set, client-credentials sign-in with `AZURE_TENANT_ID` and
    /// `AZURE_CLIENT_ID`.
    pub fn from_env() -> Self {
        let mut b = AzureBuilder::from_config(AzureConfig::from_env());
        if let Some(secret) = var("AZURE_CLIENT_SECRET") {
            b.credentials = Some(Credentials::ClientSecret(Secret::new(secret)));
        }
        b
    }

    /// The subscription id.
    pub fn subscription(mut self, id: impl Into<String>) -> Self {
        self.config.subscription_id = Some(id.into());
        self
    }

    /// The resource group the VMs live in.
    pub fn resource_group(mut self, group: impl Into<String>) -> Self {
        self.config.resource_group = Some(group.into());
        self
    }

    /// The location (region), for example `westeurope`.
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.config.location = Some(location.into());
        self
    }

    /// The subnet id the VMs' NICs go in, when the baseline names none.
    pub fn subnet(mut self, subnet_id: impl Into<String>) -> Self {
        self.config.subnet = Some(subnet_id.into());
        self
    }

    /// An ARM endpoint override (the fake: `http://127.0.0.1:PORT`).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.config.endpoint = Some(url.into());
        self
    }

    /// Client-credentials sign-in: the tenant, the application (client) id and its secret.
    pub fn client_secret(
        mut self,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.config.tenant_id = Some(tenant_id.into());
        self.config.client_id = Some(client_id.into());
        self.credentials = Some(Credentials::ClientSecret(Secret::new(secret.into())));
        self
    }

    /// A fixed bearer token (for the fake, or a token you fetched yourself).
    pub fn static_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Static(Secret::new(token.into())));
        self
    }

    /// Any `azure_core` 0.21 credential (users of the newer `azure_identity` wrap theirs in a
    /// small adapter to this trait). Its tokens are cached too.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credentials = Some(Credentials::Custom(credential));
        self
    }

    /// Availability zones to spread waves over.
    pub fn zones(mut self, zones: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    /// The VM size when the baseline names none (default `Standard_B2s`).
    pub fn vm_size(mut self, size: impl Into<String>) -> Self {
        self.config.default_vm_size = Some(size.into());
        self
    }

    /// An SSH public key for the VMs' admin user.
    pub fn ssh_public_key(mut self, key: impl Into<String>) -> Self {
        self.config.ssh_public_key = Some(key.into());
        self
    }

    /// Client-side pacing.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.config.pacing = pacing;
        self
    }

    /// The most VMs one launch call makes.
    pub fn max_launch_batch(mut self, n: usize) -> Self {
        self.config.max_launch_batch = n;
        self
    }

    /// The most VMs one terminate call deletes.
    pub fn max_terminate_batch(mut self, n: usize) -> Self {
        self.config.max_terminate_batch = n;
        self
    }

    /// How many requests run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// The least time between two polls of an operation (and the interval when ARM gives
    /// no `Retry-After`).
    pub fn operation_poll(mut self, every: Duration) -> Self {
        self.config.operation_poll_ms = every.as_millis() as u64;
        self
    }

    /// How long an operation may take before the call fails (and is retried).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.operation_timeout_ms = timeout.as_millis() as u64;
        self
    }

    fn check(&self) -> Result<(String, String, String, azure_core::Url)> {
        let c = &self.config;
        let sub = c.subscription_id.clone().ok_or_else(|| {
            Error::invalid("subscription_id", "is not set; pass .subscription(..) or set AZURE_SUBSCRIPTION_ID")
        })?;
        if !is_guid(&sub) {
            return Err(Error::invalid("subscription_id", format!("{sub:?} is not a subscription id (a GUID)")));
        }
        let group = c.resource_group.clone().ok_or_else(|| {
            Error::invalid("resource_group", "is not set; pass .resource_group(..) or set IMMUT_AZURE_RESOURCE_GROUP")
        })?;
        if !valid_group(&group) {
            return Err(Error::invalid(
                "resource_group",
                format!("{group:?} is not a resource group name (1 to 90 of letters, digits, - _ . ( ))"),
            ));
        }
        let location = c.location.clone().ok_or_else(|| {
            Error::invalid("location", "is not set; pass .location(\"westeurope\") or set IMMUT_AZURE_LOCATION")
        })?;
        if location.is_empty() || !location.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(Error::invalid("location", format!("{location:?} is not a location name such as westeurope")));
        }
        let endpoint = c.endpoint.clone().unwrap_or_else(|| "https://management.azure.com".into());
        let endpoint = azure_core::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| Error::invalid("endpoint", format!("{endpoint:?} is not an http(s) URL")))?;
        if let Some(s) = &c.subnet
            && !s.to_ascii_lowercase().contains("/providers/microsoft.network/virtualnetworks/")
        {
            return Err(Error::invalid(
                "subnet",
                format!(
                    "{s:?} is not a subnet id (/subscriptions/S/resourceGroups/G/providers/Microsoft.Network/virtualNetworks/V/subnets/N)"
                ),
            ));
        }
        for (field, b) in
            [("pacing.reads", c.pacing.reads), ("pacing.writes", c.pacing.writes), ("pacing.deletes", c.pacing.deletes)]
        {
            if b.burst == 0 || b.per_second == 0 {
                return Err(Error::invalid(field, "burst and per_second must both be at least 1"));
            }
        }
        if c.max_launch_batch == 0 {
            return Err(Error::invalid("max_launch_batch", "must be at least 1"));
        }
        if c.max_terminate_batch == 0 {
            return Err(Error::invalid("max_terminate_batch", "must be at least 1"));
        }
        if c.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        if c.operation_poll_ms == 0 {
            return Err(Error::invalid("operation_poll", "must be above zero"));
        }
        if c.operation_timeout_ms < c.operation_poll_ms {
            return Err(Error::invalid("operation_timeout", "is shorter than operation_poll"));
        }
        if let Some(size) = &c.default_vm_size
            && size.is_empty()
        {
            return Err(Error::invalid("vm_size", "is empty"));
        }
        Ok((sub, group, location, endpoint))
    }

    fn source(&self) -> Result<Source> {
        let c = &self.config;
        match &self.credentials {
            Some(Credentials::Static(token)) => Ok(Source::Static(token.clone())),
            Some(Credentials::Custom(cred)) => Ok(Source::Credential(cred.clone())),
            Some(Credentials::ClientSecret(secret)) => {
                let tenant = c.tenant_id.clone().ok_or_else(|| {
                    Error::invalid("tenant_id", "is not set; set AZURE_TENANT_ID beside AZURE_CLIENT_SECRET")
                })?;
                let client_id = c.client_id.clone().ok_or_else(|| {
                    Error::invalid("client_id", "is not set; set AZURE_CLIENT_ID beside AZURE_CLIENT_SECRET")
                })?;
                if !is_guid(&client_id) {
                    return Err(Error::invalid("client_id", "is not an application (client) id (a GUID)"));
                }
                let authority = c.authority_host.clone().unwrap_or_else(|| DEFAULT_AUTHORITY.into());
                if azure_core::Url::parse(&authority).map(|u| u.scheme() != "https").unwrap_or(true) {
                    return Err(Error::invalid("authority_host", format!("{authority:?} is not an https URL")));
                }
                Ok(Source::ClientSecret {
                    authority,
                    tenant,
                    client_id,
                    secret: secret.clone(),
                    http: azure_core::new_http_client(),
                })
            }
            None => Err(Error::invalid(
                "credentials",
                "none given; set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or pass .client_secret(..), .credential(..) or (for the fake) .static_token(..)",
            )),
        }
    }

    /// Checks the settings and builds the provider. Errors name the field; none of them
    /// carries a secret. No request is made here: the first call signs in.
    pub fn build(self) -> Result<AzureProvider> {
        let (subscription, group, location, endpoint) = self.check()?;
        let credential = Arc::new(Cached::new(self.source()?));
        let c = &self.config;
        let clients = Clients::new(
            credential,
            ClientSettings {
                endpoint,
                subscription,
                group,
                location,
                pacing: c.pacing,
                poll: Duration::from_millis(c.operation_poll_ms),
                op_timeout: Duration::from_millis(c.operation_timeout_ms),
                attempt_timeout: Duration::from_millis(c.attempt_timeout_ms),
            },
        )?;
        let defaults = Defaults {
            vm_size: c.default_vm_size.clone().unwrap_or_else(|| "Standard_B2s".into()),
            subnet: c.subnet.clone(),
            admin_username: c.admin_username.clone().unwrap_or_else(|| "azureuser".into()),
            ssh_public_key: c.ssh_public_key.clone(),
            zones: c.zones.clone(),
            max_launch_batch: c.max_launch_batch,
            max_terminate_batch: c.max_terminate_batch,
            concurrency: c.concurrency,
        };
        Ok(AzureProvider::new(Arc::new(clients), defaults))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use immut_core::ErrorKind;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn good() -> AzureBuilder {
        AzureBuilder::new()
            .subscription(SUB)
            .resource_group("rg-immut")
            .location("westeurope")
            .endpoint("http://127.0.0.1:9")
            .static_token("t")
    }

    #[tokio::test]
    async fn bad_settings_fail_in_build_naming_the_field() {
        let cases: Vec<(AzureBuilder, &str)> = vec![
            (AzureBuilder::new().resource_group("rg").location("westeurope").static_token("t"), "subscription_id"),
            (good().subscription("not-a-guid"), "subscription_id"),
            (good().resource_group("bad group!"), "resource_group"),
            (good().location("West Europe"), "location"),
            (good().endpoint("127.0.0.1:9"), "endpoint"),
            (good().subnet("subnet-1"), "subnet"),
            (good().operation_poll(Duration::ZERO), "operation_poll"),
            (good().concurrency(0), "concurrency"),
            (
                good().pacing(Pacing { writes: crate::Bucket { burst: 0, per_second: 1 }, ..Pacing::default() }),
                "pacing.writes",
            ),
            (AzureBuilder { credentials: None, ..good() }, "credentials"),
            (good().client_secret("tenant", "not-a-guid", "s"), "client_id"),
        ];
        for (builder, field) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().starts_with(&format!("{field}:")), "expected {field}: {e}");
        }
        assert!(good().build().is_ok());
        let secret = good().client_secret(
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "00000000-1111-2222-3333-444444444444",
            "hunter2-secret",
        );
        assert!(secret.clone().build().is_ok(), "building signs in to nothing yet");
        let shown = format!("{secret:?} {:?}", secret.clone().build().unwrap());
        assert!(!shown.contains("hunter2-secret") && shown.contains("<redacted>"), "{shown}");
    }
}
