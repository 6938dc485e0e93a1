use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[cfg(test)]
use immut_core::ErrorKind;
use immut_core::{Error, Result};
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

/// Static credentials, for emulators and tests. Prefer the default credential chain. They are
/// never serialized (see [`AwsConfig::credentials`]) and never shown by `Debug`.
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

/// How long an SDK call may take. The defaults bound a stalled call to a minute (the SDK's own
/// default is no limit at all); the engine then retries it like any other `Unavailable` error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// Establishing a connection (default 5 s).
    pub connect: Option<Duration>,
    /// One attempt, from sending the request to the last byte of the answer (default 30 s).
    pub attempt: Option<Duration>,
    /// The whole operation (default 60 s). The SDK's retries are off, so an operation is one
    /// attempt; the bound still covers credential resolution and connecting.
    pub operation: Option<Duration>,
}

impl Timeouts {
    pub(crate) fn connect(&self) -> Duration {
        self.connect.unwrap_or(Duration::from_secs(5))
    }
    pub(crate) fn attempt(&self) -> Duration {
        self.attempt.unwrap_or(Duration::from_secs(30))
    }
    pub(crate) fn operation(&self) -> Duration {
        self.operation.unwrap_or(Duration::from_secs(60))
    }
}

/// Where instances without provenance are looked for when a query asks for them
/// (`Query::include_unmanaged` without ids, as the audit does). Never the whole region: an
/// account holds other teams' instances, and reconcile replaces what the audit reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmanagedScope {
    /// Instances in this VPC.
    Vpc(String),
    /// Instances in these subnets.
    Subnets(Vec<String>),
    /// Instances carrying this tag key (any value), for example `team` or `service`.
    TagKey(String),
}

impl UnmanagedScope {
    /// Parses `vpc:vpc-0abc`, `subnets:subnet-1,subnet-2` or `tag:KEY`.
    pub fn parse(text: &str) -> Result<Self> {
        let (kind, value) = text.split_once(':').unwrap_or((text, ""));
        let value = value.trim();
        let scope = match kind.trim() {
            "vpc" if value.starts_with("vpc-") => UnmanagedScope::Vpc(value.to_owned()),
            "subnets" => {
                let subnets = list(value);
                if subnets.is_empty() || !subnets.iter().all(|s| s.starts_with("subnet-")) {
                    return Err(Error::invalid("unmanaged_scope", format!("{text:?}: list subnet ids after subnets:")));
                }
                UnmanagedScope::Subnets(subnets)
            }
            "tag" if !value.is_empty() => UnmanagedScope::TagKey(value.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "unmanaged_scope",
                    format!("{text:?}: use vpc:vpc-..., subnets:subnet-...,subnet-... or tag:KEY"),
                ));
            }
        };
        Ok(scope)
    }
}

/// A launch template as the baseline of a launch: what it sets applies, and immut overrides the
/// image with the artifact's AMI (and the instance type when the baseline names one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTemplate {
    /// The template's id (`lt-...`) or name.
    pub id_or_name: String,
    /// `$Default` (the default), `$Latest`, or a version number.
    pub version: Option<String>,
}

/// The instance metadata service setting. IMDSv2 (session tokens) is required unless a
/// baseline opts out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Imds {
    /// `HttpTokens=required`: IMDSv2 only (the default).
    #[default]
    Required,
    /// `HttpTokens=optional`: IMDSv1 allowed too.
    Optional,
}

/// The root EBS volume. Unset fields keep the AMI's (or the launch template's) settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ebs {
    /// Size in GiB.
    pub size_gib: Option<i32>,
    /// Volume type: `gp3`, `gp2`, `io1`, `io2`, `st1`, `sc1` or `standard`.
    pub volume_type: Option<String>,
    /// Encrypt the volume.
    pub encrypted: Option<bool>,
    /// The KMS key that encrypts it (implies `encrypted`).
    pub kms_key_id: Option<String>,
}

impl Ebs {
    /// Whether any field is set (otherwise no block device mapping is sent).
    pub fn is_set(&self) -> bool {
        self.size_gib.is_some() || self.volume_type.is_some() || self.encrypted.is_some() || self.kms_key_id.is_some()
    }
}

/// Spot instances instead of on-demand (one-time requests, terminated on interruption).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Spot {
    /// The highest price per hour, in dollars (default: the on-demand price).
    pub max_price: Option<String>,
}

/// Launch options: account-wide defaults in [`AwsConfig::launch`], overridden per baseline by
/// `LaunchSpec.params` (see [`LAUNCH_PARAMS`]). Put what defines the fleet in the baseline's
/// params: they are part of its fingerprint, so the audit sees a change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LaunchOptions {
    /// A launch template to launch from.
    pub launch_template: Option<LaunchTemplate>,
    /// Subnets to spread each wave across (one per availability zone, typically). A wave is
    /// split evenly; when a subnet's zone has no capacity (`InsufficientInstanceCapacity`, or no
    /// free addresses) its share goes to the next subnet. Empty: the baseline's `network`, else
    /// the default subnet (or the launch template's).
    pub subnets: Vec<String>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Instance profile, by name or ARN.
    pub instance_profile: Option<String>,
    /// The metadata service setting (default [`Imds::Required`]).
    pub imds: Option<Imds>,
    /// The EC2 key pair to install for SSH. A sealed baseline refuses one.
    pub key_name: Option<String>,
    /// Root volume settings.
    pub ebs: Ebs,
    /// Spot instead of on-demand.
    pub spot: Option<Spot>,
}

/// The keys `LaunchSpec.params` may hold for the AWS provider; any other key is refused, so a
/// misspelt option fails the launch instead of being ignored.
pub const LAUNCH_PARAMS: &[&str] = &[
    "launch_template",
    "launch_template_version",
    "subnets",
    "security_groups",
    "instance_profile",
    "imdsv2",
    "key_name",
    "ebs_size_gib",
    "ebs_type",
    "ebs_encrypted",
    "ebs_kms_key_id",
    "spot",
    "spot_max_price",
];

const EBS_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        other => Err(Error::invalid(&format!("baseline.params.{key}"), format!("{other:?} is not true or false"))),
    }
}

impl LaunchOptions {
    /// These options with a baseline's `params` applied on top. An unknown key, or a value that
    /// cannot be right, is `InvalidInput` naming `baseline.params.<key>`.
    pub fn with_params(&self, params: &BTreeMap<String, String>) -> Result<LaunchOptions> {
        let mut o = self.clone();
        let field = |key: &str| format!("baseline.params.{key}");
        for (key, value) in params {
            let v = value.trim();
            match key.as_str() {
                "launch_template" => {
                    let version = o.launch_template.take().and_then(|t| t.version);
                    o.launch_template = Some(LaunchTemplate { id_or_name: v.to_owned(), version });
                }
                "launch_template_version" => {}
                "subnets" => o.subnets = list(v),
                "security_groups" => o.security_groups = list(v),
                "instance_profile" => o.instance_profile = Some(v.to_owned()),
                "imdsv2" => {
                    o.imds = Some(match v {
                        "required" => Imds::Required,
                        "optional" => Imds::Optional,
                        other => {
                            return Err(Error::invalid(
                                &field(key),
                                format!("{other:?}: use required (the default) or optional"),
                            ));
                        }
                    })
                }
                "key_name" => o.key_name = Some(v.to_owned()),
                "ebs_size_gib" => {
                    o.ebs.size_gib = Some(
                        v.parse()
                            .map_err(|_| Error::invalid(&field(key), format!("{v:?} is not a whole number of GiB")))?,
                    )
                }
                "ebs_type" => o.ebs.volume_type = Some(v.to_owned()),
                "ebs_encrypted" => o.ebs.encrypted = Some(boolean(key, v)?),
                "ebs_kms_key_id" => o.ebs.kms_key_id = Some(v.to_owned()),
                "spot" => {
                    o.spot = if boolean(key, v)? { Some(o.spot.take().unwrap_or_default()) } else { None };
                }
                "spot_max_price" => {}
                other => {
                    return Err(Error::invalid(
                        &field(other),
                        format!("is not an AWS launch option; the known keys are {}", LAUNCH_PARAMS.join(", ")),
                    ));
                }
            }
        }
        // Keys that refine another one, applied once that one is known.
        if let Some(version) = params.get("launch_template_version") {
            let Some(template) = o.launch_template.as_mut() else {
                return Err(Error::invalid(
                    &field("launch_template_version"),
                    "is set without a launch template; set launch_template too",
                ));
            };
            template.version = Some(version.trim().to_owned());
        }
        if let Some(price) = params.get("spot_max_price") {
            let Some(spot) = o.spot.as_mut() else {
                return Err(Error::invalid(&field("spot_max_price"), "is set without spot = true"));
            };
            spot.max_price = Some(price.trim().to_owned());
        }
        o.validate("baseline.params")?;
        Ok(o)
    }

    /// Checks that these options, `params` (a baseline's) applied, keep a sealed baseline
    /// sealed: no key pair and IMDSv2 only. The error names the option, where it was set
    /// (`baseline.params.<key>` or `launch.<field>`), and `baseline.sealed`.
    pub fn check_sealed(&self, params: &BTreeMap<String, String>) -> Result<()> {
        let field = |key: &str, config: &str| {
            if params.contains_key(key) { format!("baseline.params.{key}") } else { format!("launch.{config}") }
        };
        if let Some(key) = &self.key_name {
            return Err(Error::invalid(
                &field("key_name", "key_name"),
                format!(
                    "names the key pair {key:?} while baseline.sealed is true; a sealed instance has no login key: remove key_name, or set baseline.sealed = false"
                ),
            ));
        }
        if self.imds == Some(Imds::Optional) {
            return Err(Error::invalid(
                &field("imdsv2", "imds"),
                "is optional while baseline.sealed is true; a sealed instance answers metadata only with a session token: remove imdsv2, or set baseline.sealed = false",
            ));
        }
        Ok(())
    }

    /// Checks values EC2 would refuse (or misread) before any call; `prefix` names where they
    /// came from (`launch` for the configuration, `baseline.params` for a baseline).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |key: &str| format!("{prefix}.{key}");
        if let Some(t) = &self.launch_template {
            if t.id_or_name.is_empty() {
                return Err(Error::invalid(&field("launch_template"), "is empty; give the template's id or name"));
            }
            if let Some(v) = &t.version
                && !(v == "$Latest" || v == "$Default" || v.parse::<u64>().is_ok())
            {
                return Err(Error::invalid(
                    &field("launch_template_version"),
                    format!("{v:?}: use $Default, $Latest or a version number"),
                ));
            }
        }
        if let Some(bad) = self.subnets.iter().find(|s| !s.starts_with("subnet-")) {
            return Err(Error::invalid(&field("subnets"), format!("{bad:?} is not a subnet id (subnet-...)")));
        }
        if let Some(bad) = self.security_groups.iter().find(|s| !s.starts_with("sg-")) {
            return Err(Error::invalid(
                &field("security_groups"),
                format!("{bad:?} is not a security group id (sg-...)"),
            ));
        }
        if self.key_name.as_deref() == Some("") {
            return Err(Error::invalid(&field("key_name"), "is empty; give the key pair's name, or leave it out"));
        }
        if self.instance_profile.as_deref() == Some("") {
            return Err(Error::invalid(&field("instance_profile"), "is empty; give the profile's name or ARN"));
        }
        if let Some(size) = self.ebs.size_gib
            && !(1..=65_536).contains(&size)
        {
            return Err(Error::invalid(&field("ebs_size_gib"), format!("{size} is outside 1 to 65536 GiB")));
        }
        if let Some(t) = &self.ebs.volume_type
            && !EBS_TYPES.contains(&t.as_str())
        {
            return Err(Error::invalid(&field("ebs_type"), format!("{t:?}: use one of {}", EBS_TYPES.join(", "))));
        }
        if self.ebs.encrypted == Some(false) && self.ebs.kms_key_id.is_some() {
            return Err(Error::invalid(&field("ebs_kms_key_id"), "is set while ebs_encrypted is false"));
        }
        if let Some(price) = self.spot.as_ref().and_then(|s| s.max_price.as_ref())
            && price.parse::<f64>().map_or(true, |p| p <= 0.0)
        {
            return Err(Error::invalid(
                &field("spot_max_price"),
                format!("{price:?} is not a price in dollars per hour"),
            ));
        }
        Ok(())
    }
}

/// Settings of the AWS provider. [`AwsConfig::from_env`] reads the standard `AWS_*` variables
/// and immut's own; credentials come from the SDK's default chain unless given explicitly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AwsConfig {
    /// Region (default: the SDK's region chain: `AWS_REGION`, then the profile).
    pub region: Option<String>,
    /// The shared-config profile (default: `AWS_PROFILE`, then `default`).
    pub profile: Option<String>,
    /// Endpoint override for emulators such as moto (`http://127.0.0.1:5000`). Unset, the SDK
    /// still honours `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Static credentials, instead of the default chain. **Never serialized**: a configuration
    /// written to a file or a log carries no secret, and one read back has none.
    #[serde(skip_serializing)]
    pub credentials: Option<StaticCredentials>,
    /// Resolve the credentials in `build()`, so that a missing or refused identity fails there
    /// (`PermissionDenied`, naming what is missing) instead of at the first call.
    pub check_credentials: bool,
    /// Instance type when the baseline names none (default `t3.micro`, or the launch
    /// template's when there is one).
    pub default_instance_type: Option<String>,
    /// Launch options for every launch; a baseline's params override them.
    pub launch: LaunchOptions,
    /// Where unmanaged instances are looked for (default: the launch subnets, if any). A query
    /// for unmanaged instances without ids fails without one.
    pub unmanaged_scope: Option<UnmanagedScope>,
    /// Client-side pacing.
    pub pacing: Pacing,
    /// SDK timeouts.
    pub timeouts: Timeouts,
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
    pub consistency_window: Option<Duration>,
    /// How long an answer of DescribeInstances or DescribeTargetHealth may be reused, counted
    /// from when it was asked (default 2 s, the engine's default poll interval). Any call of
    /// this provider that changes what the answer shows (a launch, a termination, a
    /// registration) drops it at once, and so does every wait of the engine, so reuse spans
    /// only the steps that follow an action at once: one read per resource serves a whole
    /// step, and the step right after it when nothing changed. Callers outside the engine
    /// (polling `describe` or `serving` themselves) see answers at most this old. Zero: every
    /// read goes to AWS.
    pub read_ttl: Option<Duration>,
    /// How long an instance that passed its EC2 status checks is not asked about again
    /// (default 60 s: EC2 runs the checks once a minute). Failing or initializing instances
    /// are asked every time.
    pub status_check_ttl: Option<Duration>,
    /// How long the listener's forward (its weights) and a target group's deregistration delay
    /// are reused (default 30 s). The provider's own ModifyListener updates it; a failed one
    /// drops it.
    pub listener_ttl: Option<Duration>,
}

impl AwsConfig {
    /// Reads the standard environment of the AWS SDKs and immut's own variables:
    ///
    /// | variable | field |
    /// |---|---|
    /// | `IMMUT_AWS_REGION`, else `AWS_REGION`, else `AWS_DEFAULT_REGION` | `region` |
    /// | `AWS_PROFILE` | `profile` |
    /// | `IMMUT_AWS_ENDPOINT`, else `AWS_ENDPOINT_URL` | `endpoint_url` |
    /// | `IMMUT_AWS_SUBNETS` (comma-separated), else `IMMUT_AWS_SUBNET` | `launch.subnets` |
    /// | `IMMUT_AWS_UNMANAGED_SCOPE` (`vpc:ID`, `subnets:A,B`, `tag:KEY`) | `unmanaged_scope` |
    ///
    /// Credentials are left to the SDK's default chain (environment, profile with SSO or
    /// `credential_process`, web identity, container and instance roles).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`AwsConfig::from_env`] over any source of variables (a map, a test).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let subnets =
            var("IMMUT_AWS_SUBNETS").or_else(|| var("IMMUT_AWS_SUBNET")).map(|s| list(&s)).unwrap_or_default();
        let unmanaged_scope = var("IMMUT_AWS_UNMANAGED_SCOPE").map(|s| UnmanagedScope::parse(&s)).transpose()?;
        Ok(AwsConfig {
            region: var("IMMUT_AWS_REGION").or_else(|| var("AWS_REGION")).or_else(|| var("AWS_DEFAULT_REGION")),
            profile: var("AWS_PROFILE"),
            endpoint_url: var("IMMUT_AWS_ENDPOINT").or_else(|| var("AWS_ENDPOINT_URL")),
            launch: LaunchOptions { subnets, ..LaunchOptions::default() },
            unmanaged_scope,
            ..AwsConfig::default()
        })
    }

    /// The scope unmanaged instances are looked for in: the configured one, else the launch
    /// subnets.
    pub(crate) fn scope(&self) -> Option<UnmanagedScope> {
        self.unmanaged_scope
            .clone()
            .or_else(|| (!self.launch.subnets.is_empty()).then(|| UnmanagedScope::Subnets(self.launch.subnets.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn params_override_the_configured_options() {
        let base = LaunchOptions {
            security_groups: vec!["sg-base".into()],
            instance_profile: Some("base-profile".into()),
            ..LaunchOptions::default()
        };
        let o = base
            .with_params(&params(&[
                ("launch_template", "lt-0123"),
                ("launch_template_version", "7"),
                ("security_groups", "sg-1, sg-2"),
                ("imdsv2", "optional"),
                ("ebs_size_gib", "40"),
                ("ebs_type", "gp3"),
                ("ebs_encrypted", "true"),
                ("spot", "true"),
                ("spot_max_price", "0.05"),
                ("subnets", "subnet-a,subnet-b"),
            ]))
            .unwrap();
        assert_eq!(o.launch_template, Some(LaunchTemplate { id_or_name: "lt-0123".into(), version: Some("7".into()) }));
        assert_eq!(o.security_groups, vec!["sg-1", "sg-2"]);
        assert_eq!(o.instance_profile.as_deref(), Some("base-profile"), "kept from the configuration");
        assert_eq!(o.imds, Some(Imds::Optional));
        assert_eq!(
            o.ebs,
            Ebs { size_gib: Some(40), volume_type: Some("gp3".into()), encrypted: Some(true), kms_key_id: None }
        );
        assert_eq!(o.spot, Some(Spot { max_price: Some("0.05".into()) }));
        assert_eq!(o.subnets, vec!["subnet-a", "subnet-b"]);
    }

    #[test]
    fn a_sealed_baseline_refuses_a_key_pair_and_imdsv1_naming_both_fields() {
        let p = params(&[("key_name", "ops")]);
        let e = LaunchOptions::default().with_params(&p).unwrap().check_sealed(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("baseline.params.key_name") && e.to_string().contains("baseline.sealed"), "{e}");
        let configured = LaunchOptions { key_name: Some("ops".into()), ..LaunchOptions::default() };
        let e = configured.check_sealed(&BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("launch.key_name") && e.to_string().contains("baseline.sealed"), "{e}");
        let p = params(&[("imdsv2", "optional")]);
        let e = LaunchOptions::default().with_params(&p).unwrap().check_sealed(&p).unwrap_err();
        assert!(e.to_string().contains("baseline.params.imdsv2") && e.to_string().contains("baseline.sealed"), "{e}");
        let p = params(&[("imdsv2", "required"), ("security_groups", "sg-1")]);
        LaunchOptions::default().with_params(&p).unwrap().check_sealed(&p).unwrap();
        let e = LaunchOptions::default().with_params(&params(&[("key_name", " ")])).unwrap_err();
        assert!(e.to_string().contains("baseline.params.key_name"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        let base = LaunchOptions::default();
        for (pairs, expect) in [
            (vec![("security_group", "sg-1")], "baseline.params.security_group"),
            (vec![("ebs_size_gib", "big")], "baseline.params.ebs_size_gib"),
            (vec![("ebs_type", "ssd")], "baseline.params.ebs_type"),
            (vec![("imdsv2", "off")], "baseline.params.imdsv2"),
            (vec![("spot", "maybe")], "baseline.params.spot"),
            (vec![("launch_template_version", "3")], "baseline.params.launch_template_version"),
            (vec![("spot_max_price", "0.1")], "baseline.params.spot_max_price"),
            (vec![("subnets", "net-1")], "baseline.params.subnets"),
            (vec![("security_groups", "web")], "baseline.params.security_groups"),
            (vec![("ebs_encrypted", "false"), ("ebs_kms_key_id", "k")], "baseline.params.ebs_kms_key_id"),
        ] {
            let e = base.with_params(&params(&pairs)).unwrap_err();
            assert_eq!(e.kind(), immut_core::ErrorKind::InvalidInput, "{pairs:?}");
            assert!(e.message().starts_with(expect), "{pairs:?}: {e}");
        }
        let e = base.with_params(&params(&[("security_group", "sg-1")])).unwrap_err();
        assert!(e.message().contains("security_groups"), "the message lists the known keys: {e}");
    }

    #[test]
    fn the_standard_environment_is_read() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let c = AwsConfig::from_vars(vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_PROFILE", "deploy"),
            ("IMMUT_AWS_SUBNETS", "subnet-a, subnet-b"),
            ("IMMUT_AWS_UNMANAGED_SCOPE", "vpc:vpc-1"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.profile.as_deref(), Some("deploy"));
        assert_eq!(c.launch.subnets, vec!["subnet-a", "subnet-b"]);
        assert_eq!(c.unmanaged_scope, Some(UnmanagedScope::Vpc("vpc-1".into())));
        let c = AwsConfig::from_vars(vars(&[
            ("IMMUT_AWS_ENDPOINT", "http://127.0.0.1:6000"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
            ("IMMUT_AWS_SUBNET", "subnet-c"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:6000"), "immut's own variable wins");
        assert_eq!(c.region.as_deref(), Some("us-west-2"));
        assert_eq!(c.launch.subnets, vec!["subnet-c"]);
        assert_eq!(c.scope(), Some(UnmanagedScope::Subnets(vec!["subnet-c".into()])), "the launch subnets");
        assert_eq!(AwsConfig::from_vars(vars(&[("AWS_ENDPOINT_URL", " ")])).unwrap().endpoint_url, None);
        let e = AwsConfig::from_vars(vars(&[("IMMUT_AWS_UNMANAGED_SCOPE", "region")])).unwrap_err();
        assert!(e.message().starts_with("unmanaged_scope"), "{e}");
    }

    #[test]
    fn scopes_parse_and_secrets_are_never_serialized() {
        assert_eq!(UnmanagedScope::parse("vpc:vpc-1").unwrap(), UnmanagedScope::Vpc("vpc-1".into()));
        assert_eq!(
            UnmanagedScope::parse("subnets:subnet-1, subnet-2").unwrap(),
            UnmanagedScope::Subnets(vec!["subnet-1".into(), "subnet-2".into()])
        );
        assert_eq!(UnmanagedScope::parse("tag:team").unwrap(), UnmanagedScope::TagKey("team".into()));
        for bad in ["region", "vpc:", "subnets:", "tag:", "subnets:x"] {
            assert!(UnmanagedScope::parse(bad).unwrap_err().message().starts_with("unmanaged_scope"), "{bad}");
        }
        let config = AwsConfig {
            credentials: Some(StaticCredentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            }),
            region: Some("eu-west-1".into()),
            ..AwsConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("wJalrXUtnFEMI") && !json.contains("AKIAIOSFODNN7EXAMPLE"), "{json}");
        let back: AwsConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.credentials, None);
        assert_eq!(back.region.as_deref(), Some("eu-west-1"));
    }
}
