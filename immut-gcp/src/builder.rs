use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_compute_v1::client::{BackendServices, Disks, Images, InstanceGroups, Instances, Regions};
use google_cloud_gax::retry_policy::NeverRetry;
use immut_core::{Error, ErrorKind, Result};

use crate::client::{ClientSettings, Clients, Sdk};
use crate::config::{GcpConfig, Pacing};
use crate::provider::{Defaults, GcpProvider};

/// Builds the GCP provider. Setters never fail; [`GcpBuilder::build`] checks the settings,
/// loads the credentials and builds the clients.
#[derive(Clone, Default)]
pub struct GcpBuilder {
    config: GcpConfig,
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for GcpBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpBuilder")
            .field("config", &self.config)
            .field("credentials", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How long one HTTP attempt may take before it fails as `Unavailable` (and the engine retries).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

fn valid_project(p: &str) -> bool {
    // Project ids: 6 to 30 of a-z, 0-9 and '-', starting with a letter; domain-scoped ids
    // (`example.com:my-project`) add '.' and ':'.
    let b = p.as_bytes();
    (6..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':'))
        && !p.ends_with('-')
}

fn valid_zone(z: &str) -> bool {
    let parts: Vec<&str> = z.split('-').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && parts[1].bytes().any(|b| b.is_ascii_digit())
        && parts[2].len() == 1
        && parts[2].bytes().all(|b| b.is_ascii_lowercase())
}

impl GcpBuilder {
    /// Starts from defaults: nothing set, Application Default Credentials.
    pub fn new() -> Self {
        GcpBuilder::default()
    }

    /// Starts from a configuration (for example [`GcpConfig::from_env`]).
    pub fn from_config(config: GcpConfig) -> Self {
        GcpBuilder { config, credentials: None }
    }

    /// The project id.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.config.project = Some(project.into());
        self
    }

    /// Adds a zone to launch into; waves are spread over the zones.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.config.zones.push(zone.into());
        self
    }

    /// The zones to launch into, replacing any set before.
    pub fn zones(mut self, zones: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    /// An endpoint override (the fake: `http://127.0.0.1:PORT`).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.config.endpoint = Some(url.into());
        self
    }

    /// Anonymous credentials (no `Authorization` header): for the fake only.
    pub fn anonymous(mut self) -> Self {
        self.config.anonymous = true;
        self
    }

    /// Credentials of your own (a service account key, impersonation, ...) instead of
    /// Application Default Credentials.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The machine type when the baseline names none (default `e2-small`).
    pub fn machine_type(mut self, machine_type: impl Into<String>) -> Self {
        self.config.default_machine_type = Some(machine_type.into());
        self
    }

    /// The network when the baseline names none (default `global/networks/default`).
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.config.network = Some(network.into());
        self
    }

    /// The subnetwork (`regions/R/subnetworks/NAME`).
    pub fn subnetwork(mut self, subnetwork: impl Into<String>) -> Self {
        self.config.subnetwork = Some(subnetwork.into());
        self
    }

    /// The service account the instances run as.
    pub fn service_account(mut self, email: impl Into<String>) -> Self {
        self.config.service_account = Some(email.into());
        self
    }

    /// Whether a zone out of capacity makes the launch try the next zone (default: no, the
    /// launch fails as `QuotaExceeded` and the deployment rolls back).
    pub fn zone_fallback(mut self, allow: bool) -> Self {
        self.config.zone_fallback = allow;
        self
    }

    /// Client-side pacing.
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.config.pacing = pacing;
        self
    }

    /// Page size of list calls, 1 to 500.
    pub fn page_size(mut self, size: u32) -> Self {
        self.config.page_size = size;
        self
    }

    /// How many ids one terminate call takes (default 1000).
    pub fn max_terminate_batch(mut self, batch: usize) -> Self {
        self.config.max_terminate_batch = batch;
        self
    }

    /// How often long-running operations are polled.
    pub fn operation_poll(mut self, every: Duration) -> Self {
        self.config.operation_poll_ms = every.as_millis() as u64;
        self
    }

    /// How long an operation may take before the call fails (and is retried).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.operation_timeout_ms = timeout.as_millis() as u64;
        self
    }

    fn check(&self) -> Result<String> {
        let c = &self.config;
        let project =
            c.project.clone().filter(|p| !p.is_empty()).ok_or_else(|| {
                Error::invalid("project", "is not set; pass .project(..) or set GOOGLE_CLOUD_PROJECT")
            })?;
        if !valid_project(&project) {
            return Err(Error::invalid(
                "project",
                format!("{project:?} is not a project id (6 to 30 of a-z, 0-9, '-')"),
            ));
        }
        if c.zones.is_empty() {
            return Err(Error::invalid("zones", "is empty; pass .zone(\"us-central1-a\") or set IMMUT_GCP_ZONES"));
        }
        for (i, z) in c.zones.iter().enumerate() {
            if !valid_zone(z) {
                return Err(Error::invalid(
                    &format!("zones[{i}]"),
                    format!("{z:?} is not a zone such as us-central1-a"),
                ));
            }
            if c.zones[..i].contains(z) {
                return Err(Error::invalid(&format!("zones[{i}]"), format!("{z} is listed twice")));
            }
        }
        if let Some(url) = &c.endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::invalid("endpoint", format!("{url:?} is not an http(s) URL")));
        }
        for (field, b) in [
            ("pacing.mutate", c.pacing.mutate),
            ("pacing.read", c.pacing.read),
            ("pacing.list", c.pacing.list),
            ("pacing.operation_read", c.pacing.operation_read),
        ] {
            if b.burst == 0 || b.per_minute == 0 {
                return Err(Error::invalid(field, "burst and per_minute must both be at least 1"));
            }
        }
        if !(1..=500).contains(&c.page_size) {
            return Err(Error::invalid(
                "page_size",
                format!("{} is outside 1 to 500 (the API's maxResults)", c.page_size),
            ));
        }
        if c.max_terminate_batch == 0 {
            return Err(Error::invalid("max_terminate_batch", "must be at least 1"));
        }
        if c.operation_poll_ms == 0 {
            return Err(Error::invalid("operation_poll", "must be above zero"));
        }
        if c.operation_timeout_ms < c.operation_poll_ms {
            return Err(Error::invalid("operation_timeout", "is shorter than operation_poll"));
        }
        if let Some(m) = &c.default_machine_type
            && m.is_empty()
        {
            return Err(Error::invalid("machine_type", "is empty"));
        }
        Ok(project)
    }

    /// Checks the settings, loads the credentials and builds the provider. Errors name the
    /// field; none of them carries a credential.
    pub async fn build(self) -> Result<GcpProvider> {
        let project = self.check()?;
        let c = &self.config;
        let credentials = match (&self.credentials, c.anonymous) {
            (Some(creds), _) => creds.clone(),
            (None, true) => google_cloud_auth::credentials::anonymous::Builder::new().build(),
            (None, false) => google_cloud_auth::credentials::Builder::default().build().map_err(|_| {
                Error::new(
                    ErrorKind::PermissionDenied,
                    "credentials: Application Default Credentials could not be loaded; set \
                     GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or run on GCE",
                )
                .with_provider("gcp")
            })?,
        };
        let endpoint = c.endpoint.clone();
        macro_rules! client {
            ($t:ty) => {{
                // The engine owns retries (backoff with jitter): the client's are turned off, so
                // one throttled call is never retried by two layers.
                let mut b = <$t>::builder()
                    .with_credentials(credentials.clone())
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT);
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build().await.map_err(|_| {
                    Error::invalid(
                        "endpoint",
                        "the Compute client could not be built for this endpoint and credentials",
                    )
                    .with_provider("gcp")
                })?
            }};
        }
        let sdk = Sdk {
            instances: client!(Instances),
            images: client!(Images),
            groups: client!(InstanceGroups),
            backends: client!(BackendServices),
            disks: client!(Disks),
            regions: client!(Regions),
        };
        let clients = Clients::new(
            sdk,
            ClientSettings {
                project,
                pacing: c.pacing,
                page_size: c.page_size,
                poll: Duration::from_millis(c.operation_poll_ms),
                op_timeout: Duration::from_millis(c.operation_timeout_ms),
            },
        );
        let defaults = Defaults {
            machine_type: c.default_machine_type.clone().unwrap_or_else(|| "e2-small".to_owned()),
            network: c.network.clone().unwrap_or_else(|| "global/networks/default".to_owned()),
            subnetwork: c.subnetwork.clone(),
            service_account: c.service_account.clone(),
            zone_fallback: c.zone_fallback,
            max_terminate_batch: c.max_terminate_batch,
        };
        Ok(GcpProvider::new(Arc::new(clients), c.zones.clone(), defaults))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> GcpBuilder {
        GcpBuilder::new().project("my-project").zone("us-central1-a").endpoint("http://127.0.0.1:9").anonymous()
    }

    #[tokio::test]
    async fn bad_settings_fail_in_build_naming_the_field() {
        let cases: Vec<(GcpBuilder, &str)> = vec![
            (GcpBuilder::new().zone("us-central1-a"), "project"),
            (good().project("My Project"), "project"),
            (good().zones(Vec::<String>::new()), "zones"),
            (good().zone("us-central1"), "zones[1]"),
            (good().zone("us-central1-a"), "zones[1]"),
            (good().endpoint("127.0.0.1:9"), "endpoint"),
            (good().page_size(501), "page_size"),
            (good().operation_poll(Duration::ZERO), "operation_poll"),
            (
                good().pacing(Pacing { read: crate::Bucket { burst: 0, per_minute: 10 }, ..Pacing::default() }),
                "pacing.read",
            ),
        ];
        for (builder, field) in cases {
            let e = builder.build().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().starts_with(&format!("{field}:")), "expected {field}: {e}");
        }
        assert!(good().build().await.is_ok());
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let creds = google_cloud_auth::credentials::anonymous::Builder::new().build();
        let shown = format!("{:?}", good().credentials(creds));
        assert!(shown.contains("<redacted>") && !shown.contains("Anonymous"), "{shown}");
    }
}
