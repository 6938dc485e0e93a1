use std::fmt;

use serde::{Deserialize, Serialize};

/// A client-side token bucket: a burst, and a refill per second (the unit ARM's limits are
/// stated in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Calls available at once.
    pub burst: u32,
    /// Calls added per second.
    pub per_second: u32,
}

/// The pacing of every ARM call, mirroring Azure Resource Manager's per-subscription limits
/// (configurable).
///
/// Source: "Understand how Azure Resource Manager throttles requests"
/// (learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling)
/// and the March 2024 announcement of ARM's token-bucket throttling: per subscription (and
/// per tenant), reads (GET) have a bucket of 250 refilled at 25 per second, writes (PUT,
/// PATCH, POST) 200 at 10 per second, deletes 200 at 10 per second; a request that finds its
/// bucket empty gets HTTP 429 with `Retry-After`. Every answer reports what is left in
/// `x-ms-ratelimit-remaining-subscription-reads` (`-writes`, `-deletes`). The buckets here
/// mirror those, and the client also reads the headers: when fewer than
/// [`Pacing::low_water`] requests are left in a bucket, calls of that kind slow to the
/// bucket's refill rate before ARM has to say 429. Resource providers (Compute, Network)
/// have finer limits of their own behind ARM's; their 429s are honoured the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    /// GET calls, operation polls included.
    pub reads: Bucket,
    /// PUT, PATCH and POST calls.
    pub writes: Bucket,
    /// DELETE calls.
    pub deletes: Bucket,
    /// When ARM reports fewer requests left than this in a bucket, slow down to its refill
    /// rate.
    pub low_water: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            reads: Bucket { burst: 250, per_second: 25 },
            writes: Bucket { burst: 200, per_second: 10 },
            deletes: Bucket { burst: 200, per_second: 10 },
            low_water: 20,
        }
    }
}

/// Settings of the Azure provider. [`AzureConfig::from_env`] reads what Azure users already
/// set; secrets (the client secret, a static token) are never part of it: the builder holds
/// them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AzureConfig {
    /// The subscription id.
    pub subscription_id: Option<String>,
    /// The tenant (directory) id, for client-credentials sign-in.
    pub tenant_id: Option<String>,
    /// The application (client) id, for client-credentials sign-in.
    pub client_id: Option<String>,
    /// The Microsoft Entra authority (default `https://login.microsoftonline.com`).
    pub authority_host: Option<String>,
    /// The resource group the VMs live in.
    pub resource_group: Option<String>,
    /// The location (region) of the VMs, for example `westeurope`.
    pub location: Option<String>,
    /// The subnet id the VMs' NICs go in, when the baseline names none.
    pub subnet: Option<String>,
    /// The ARM endpoint (default `https://management.azure.com`; the fake:
    /// `http://127.0.0.1:PORT`).
    pub endpoint: Option<String>,
    /// Availability zones to spread waves over (none: regional VMs).
    pub zones: Vec<String>,
    /// VM size when the baseline names none (default `Standard_B2s`).
    pub default_vm_size: Option<String>,
    /// The VMs' admin user (default `azureuser`).
    pub admin_username: Option<String>,
    /// An SSH public key for the admin user (password sign-in stays disabled).
    pub ssh_public_key: Option<String>,
    /// Client-side pacing.
    pub pacing: Pacing,
    /// The most VMs one launch call makes (each by its own PUT, concurrently; default 100).
    pub max_launch_batch: usize,
    /// The most VMs one terminate call deletes (default 200).
    pub max_terminate_batch: usize,
    /// How many PUTs, DELETEs and polls run at once (default 16); the pacing still bounds
    /// the rate.
    pub concurrency: usize,
    /// How often a long-running operation is polled when ARM gives no `Retry-After`, and the
    /// least time between two polls, in milliseconds (default 1000).
    pub operation_poll_ms: u64,
    /// How long an operation may take before the call fails as `Unavailable` (and is retried),
    /// in milliseconds (default 1 800 000: VM creates can take many minutes).
    pub operation_timeout_ms: u64,
    /// How long one HTTP attempt may take, in milliseconds (default 60 000).
    pub attempt_timeout_ms: u64,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            subscription_id: None,
            tenant_id: None,
            client_id: None,
            authority_host: None,
            resource_group: None,
            location: None,
            subnet: None,
            endpoint: None,
            zones: Vec::new(),
            default_vm_size: None,
            admin_username: None,
            ssh_public_key: None,
            pacing: Pacing::default(),
            max_launch_batch: 100,
            max_terminate_batch: 200,
            concurrency: 16,
            operation_poll_ms: 1000,
            operation_timeout_ms: 1_800_000,
            attempt_timeout_ms: 60_000,
        }
    }
}

// No secret lives in the config, but the Debug form is written out so that one added later
// cannot slip into logs unnoticed.
impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("subscription_id", &self.subscription_id)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authority_host", &self.authority_host)
            .field("resource_group", &self.resource_group)
            .field("location", &self.location)
            .field("subnet", &self.subnet)
            .field("endpoint", &self.endpoint)
            .field("zones", &self.zones)
            .field("default_vm_size", &self.default_vm_size)
            .field("admin_username", &self.admin_username)
            .field("ssh_public_key", &self.ssh_public_key.as_ref().map(|k| format!("<{} bytes>", k.len())))
            .field("pacing", &self.pacing)
            .field("max_launch_batch", &self.max_launch_batch)
            .field("max_terminate_batch", &self.max_terminate_batch)
            .field("concurrency", &self.concurrency)
            .field("operation_poll_ms", &self.operation_poll_ms)
            .field("operation_timeout_ms", &self.operation_timeout_ms)
            .field("attempt_timeout_ms", &self.attempt_timeout_ms)
            .finish()
    }
}

pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl AzureConfig {
    /// The standard Azure environment: `AZURE_SUBSCRIPTION_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID` and `AZURE_AUTHORITY_HOST` (the secret, `AZURE_CLIENT_SECRET`, is read
    /// by [`crate::AzureBuilder::from_env`], never into this struct); and immut's own
    /// `IMMUT_AZURE_RESOURCE_GROUP`, `IMMUT_AZURE_LOCATION`, `IMMUT_AZURE_SUBNET`,
    /// `IMMUT_AZURE_ZONES` (comma-separated) and `IMMUT_AZURE_ENDPOINT`.
    pub fn from_env() -> Self {
        AzureConfig {
            subscription_id: var("AZURE_SUBSCRIPTION_ID"),
            tenant_id: var("AZURE_TENANT_ID"),
            client_id: var("AZURE_CLIENT_ID"),
            authority_host: var("AZURE_AUTHORITY_HOST"),
            resource_group: var("IMMUT_AZURE_RESOURCE_GROUP"),
            location: var("IMMUT_AZURE_LOCATION"),
            subnet: var("IMMUT_AZURE_SUBNET"),
            endpoint: var("IMMUT_AZURE_ENDPOINT"),
            zones: var("IMMUT_AZURE_ZONES")
                .map(|z| z.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            ..AzureConfig::default()
        }
    }
}
