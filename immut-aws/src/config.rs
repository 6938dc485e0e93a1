use std::fmt;

use serde::{Deserialize, Serialize};

/// Client-side rate limits, mirroring EC2's token buckets: a burst and a refill per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens available at once.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

/// The pacing of every call, by EC2's documented buckets (configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    /// RunInstances calls: 5 burst, 2 per second.
    pub run_instances: Bucket,
    /// Instances launched: 1000 burst, 2 per second.
    pub instances: Bucket,
    /// Describe calls (EC2 and ELBv2): 100 burst, 20 per second.
    pub describe: Bucket,
    /// Mutating calls (terminate, register, deregister, modify listener): 100 burst, 5 per second.
    pub mutate: Bucket,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            run_instances: Bucket { burst: 5, per_second: 2 },
            instances: Bucket { burst: 1000, per_second: 2 },
            describe: Bucket { burst: 100, per_second: 20 },
            mutate: Bucket { burst: 100, per_second: 5 },
        }
    }
}

/// Static credentials, for emulators and tests. Prefer the default credential chain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials(<redacted>)")
    }
}

/// Settings of the AWS provider. [`AwsConfig::from_env`] reads them from `IMMUT_AWS_*`
/// variables; credentials come from the default chain unless given explicitly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsConfig {
    /// Region (default: the SDK's region chain).
    pub region: Option<String>,
    /// Endpoint override for emulators such as moto (`http://127.0.0.1:5000`).
    pub endpoint_url: Option<String>,
    /// Static credentials, instead of the default chain.
    pub credentials: Option<StaticCredentials>,
    /// Subnet to launch into when the baseline names none.
    pub subnet_id: Option<String>,
    /// Instance type when the baseline names none (default `t3.micro`).
    pub default_instance_type: Option<String>,
    /// Client-side pacing.
    pub pacing: Pacing,
    /// DescribeInstances page size, 5 to 1000 (default 200).
    pub describe_page_size: Option<i32>,
    /// Whether EC2 honours the ClientToken of RunInstances as an idempotency key (default
    /// `true`, as AWS does). Set `false` against emulators that ignore it, such as moto: the
    /// provider then declares `honours_token: false` and the engine looks up by token before
    /// every launch, instead of trusting a retried RunInstances not to launch twice.
    pub honours_client_token: Option<bool>,
    /// The most ids one TerminateInstances call carries, 1 to 1000 (default 1000, EC2's limit).
    /// Lower only to exercise batching without a thousand instances, as the tests on moto do.
    pub max_terminate_batch: Option<usize>,
    /// How long a new instance may be missing from DescribeInstances after RunInstances
    /// returned it (EC2's eventual consistency; default 30 s). After an ambiguous launch
    /// failure the engine waits this long before it looks up by token, so that it adopts what
    /// the lost call launched instead of launching it again. Zero against an emulator that is
    /// strongly consistent, such as moto.
    pub consistency_window: Option<std::time::Duration>,
}

impl AwsConfig {
    /// Reads `IMMUT_AWS_REGION`, `IMMUT_AWS_ENDPOINT` and `IMMUT_AWS_SUBNET`; credentials
    /// come from the SDK's default chain (environment, profile, instance role).
    pub fn from_env() -> Self {
        AwsConfig {
            region: std::env::var("IMMUT_AWS_REGION").ok(),
            endpoint_url: std::env::var("IMMUT_AWS_ENDPOINT").ok(),
            subnet_id: std::env::var("IMMUT_AWS_SUBNET").ok(),
            ..AwsConfig::default()
        }
    }
}
