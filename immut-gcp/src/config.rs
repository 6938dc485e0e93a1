use std::fmt;

use serde::{Deserialize, Serialize};

/// A client-side token bucket: a burst, and a refill per minute (the unit Compute Engine's rate
/// quotas are stated in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Calls available at once.
    pub burst: u32,
    /// Calls added per minute.
    pub per_minute: u32,
}

/// The pacing of every Compute call, mirroring the API's per-project rate quotas (configurable).
///
/// Source: Compute Engine's "rate quotas" page (cloud.google.com/compute/docs/api-rate-limits):
/// quotas apply per project, per group of methods, per 60-second interval, and a project over
/// one gets HTTP 403 `rateLimitExceeded`. The default quota is 1,500 requests per minute for
/// each of the groups used here: *Queries* (mutations: bulkInsert, delete, addInstances,
/// removeInstances, patch), *Read requests* (`*.get`, getHealth), and *List requests*
/// (`*.list`, listInstances). Operation polls are paced in a bucket of their own at the read
/// rate. The buckets refill at the quota's average (25 per second) and allow a burst of 100, so
/// that a burst never spends a minute's quota at once. Raise them to your project's quotas
/// (IAM & Admin > Quotas) when those are higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    /// Mutating calls (the *Queries* group).
    pub mutate: Bucket,
    /// `get` calls and getHealth (*Read requests*).
    pub read: Bucket,
    /// `list` calls and listInstances (*List requests*).
    pub list: Bucket,
    /// Operation polls (`zoneOperations.get`, `globalOperations.get`).
    pub operation_read: Bucket,
}

impl Default for Pacing {
    fn default() -> Self {
        let quota = Bucket { burst: 100, per_minute: 1500 };
        Pacing { mutate: quota, read: quota, list: quota, operation_read: quota }
    }
}

/// Settings of the GCP provider. [`GcpConfig::from_env`] reads what Google users already set;
/// credentials come from Application Default Credentials unless the builder is given others.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcpConfig {
    /// The project id.
    pub project: Option<String>,
    /// The zones to launch into, spread by wave (at least one).
    pub zones: Vec<String>,
    /// An endpoint override (the fake: `http://127.0.0.1:PORT`).
    pub endpoint: Option<String>,
    /// Anonymous credentials: no `Authorization` header, for the fake only.
    pub anonymous: bool,
    /// Machine type when the baseline names none (default `e2-small`).
    pub default_machine_type: Option<String>,
    /// Network when the baseline names none (default `global/networks/default`).
    pub network: Option<String>,
    /// Subnetwork, if any (`regions/R/subnetworks/NAME`).
    pub subnetwork: Option<String>,
    /// Service account e-mail for the instances, if any.
    pub service_account: Option<String>,
    /// When a zone is out of capacity (`ZONE_RESOURCE_POOL_EXHAUSTED`), try the next zone of
    /// the list instead of failing the launch as `QuotaExceeded`.
    pub zone_fallback: bool,
    /// Client-side pacing.
    pub pacing: Pacing,
    /// Page size of list calls, 1 to 500 (default 500).
    pub page_size: u32,
    /// How many ids one terminate call takes (default 1000); each instance is deleted by its
    /// own call, concurrently within the pacing, so this only bounds one call's batch.
    pub max_terminate_batch: usize,
    /// How often a long-running operation is polled, in milliseconds (default 1000).
    pub operation_poll_ms: u64,
    /// How long an operation may take before the call fails as `Unavailable` (and is retried
    /// under the same request id), in milliseconds (default 600 000).
    pub operation_timeout_ms: u64,
}

impl Default for GcpConfig {
    fn default() -> Self {
        GcpConfig {
            project: None,
            zones: Vec::new(),
            endpoint: None,
            anonymous: false,
            default_machine_type: None,
            network: None,
            subnetwork: None,
            service_account: None,
            zone_fallback: false,
            pacing: Pacing::default(),
            page_size: 500,
            max_terminate_batch: 1000,
            operation_poll_ms: 1000,
            operation_timeout_ms: 600_000,
        }
    }
}

// No secret lives in the config (credentials are held by the builder), but the Debug form is
// written out so that one added later cannot slip into logs unnoticed.
impl fmt::Debug for GcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpConfig")
            .field("project", &self.project)
            .field("zones", &self.zones)
            .field("endpoint", &self.endpoint)
            .field("anonymous", &self.anonymous)
            .field("default_machine_type", &self.default_machine_type)
            .field("network", &self.network)
            .field("subnetwork", &self.subnetwork)
            .field("service_account", &self.service_account)
            .field("zone_fallback", &self.zone_fallback)
            .field("pacing", &self.pacing)
            .field("page_size", &self.page_size)
            .field("max_terminate_batch", &self.max_terminate_batch)
            .field("operation_poll_ms", &self.operation_poll_ms)
            .field("operation_timeout_ms", &self.operation_timeout_ms)
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl GcpConfig {
    /// The project from `GOOGLE_CLOUD_PROJECT` (or gcloud's `CLOUDSDK_CORE_PROJECT`), the zones
    /// from `IMMUT_GCP_ZONES` (comma-separated) or gcloud's `CLOUDSDK_COMPUTE_ZONE`, an endpoint
    /// override from `IMMUT_GCP_ENDPOINT`. Credentials are Application Default Credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth application-default login`, or the
    /// metadata server), read when the provider is built.
    pub fn from_env() -> Self {
        let zones = var("IMMUT_GCP_ZONES")
            .or_else(|| var("CLOUDSDK_COMPUTE_ZONE"))
            .map(|z| z.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        GcpConfig {
            project: var("GOOGLE_CLOUD_PROJECT").or_else(|| var("CLOUDSDK_CORE_PROJECT")),
            zones,
            endpoint: var("IMMUT_GCP_ENDPOINT"),
            ..GcpConfig::default()
        }
    }
}
