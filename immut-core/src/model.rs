//! The release model: artifacts, baselines, releases, instances and their provenance.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

mod access;
pub use access::{Access, AccessPath, Opening};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        // Ids are compared in every observation, mostly against clones of themselves: the
        // pointer says so without reading the strings.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl AsRef<str>) -> Self {
                $name(Arc::from(value.as_ref()))
            }

            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name::new(value)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name::new(value)
            }
        }
    };
}

string_id!(
    /// The provider's id of one instance (an EC2 instance id, a GCE instance name, a local pid file).
    InstanceId
);
string_id!(
    /// A stable id of a [`Release`]: the same service, artifact and baseline always give the same id.
    ReleaseId
);
string_id!(
    /// The id of one deployment run.
    DeploymentId
);
string_id!(
    /// A deterministic idempotency token for one launch (deployment id + wave).
    LaunchToken
);

/// A versioned, immutable image: an AMI, a GCE image, an Azure image or a local executable.
pub trait Artifact: Send + Sync {
    /// A name for the artifact (for example `web`).
    fn name(&self) -> &str;
    /// Its semver version.
    fn version(&self) -> &Version;
    /// The provider's reference to the image (AMI id, image URL, file path).
    fn image(&self) -> &str;
    /// An optional content digest, `sha256:<64 hex>`.
    fn digest(&self) -> Option<&str> {
        None
    }
}

/// A versioned known-good launch configuration.
pub trait Baseline: Send + Sync {
    /// A name for the baseline.
    fn name(&self) -> &str;
    /// Its semver version.
    fn version(&self) -> &Version;
    /// The launch spec it pins.
    fn spec(&self) -> &LaunchSpec;
    /// A stable hash of the canonical launch spec: equal specs give equal fingerprints.
    fn fingerprint(&self) -> String {
        self.spec().fingerprint()
    }
}

/// The concrete artifact type: what a [`Release`] records of any [`Artifact`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSpec {
    /// Name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// Provider image reference.
    pub image: String,
    /// Optional `sha256:` content digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ArtifactSpec {
    /// A new artifact without a digest.
    pub fn new(name: impl Into<String>, version: Version, image: impl Into<String>) -> Self {
        ArtifactSpec { name: name.into(), version, image: image.into(), digest: None }
    }

    /// Sets the content digest (`sha256:<64 hex>`).
    pub fn with_digest(mut self, digest: impl Into<String>) -> Self {
        self.digest = Some(digest.into());
        self
    }

    /// Records any artifact.
    pub fn of(artifact: &dyn Artifact) -> Self {
        ArtifactSpec {
            name: artifact.name().to_owned(),
            version: artifact.version().clone(),
            image: artifact.image().to_owned(),
            digest: artifact.digest().map(str::to_owned),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_name("artifact.name", &self.name)?;
        if self.image.trim().is_empty() {
            return Err(Error::invalid("artifact.image", "is empty; give the provider's image reference"));
        }
        if let Some(d) = &self.digest {
            validate_digest("artifact.digest", d)?;
        }
        Ok(())
    }
}

impl Artifact for ArtifactSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn version(&self) -> &Version {
        &self.version
    }
    fn image(&self) -> &str {
        &self.image
    }
    fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// Checks a `sha256:<64 lowercase hex>` digest.
pub fn validate_digest(field: &str, digest: &str) -> Result<()> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("{digest:?} is not of the form sha256:<64 lowercase hex digits>")))
    }
}

/// The launch configuration a baseline pins. Providers read the fields that apply to them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Machine type (EC2 instance type, GCE machine type, Azure VM size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// Network or subnet reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// User data or startup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Command-line arguments (process-based providers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables (process-based providers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Extra labels put on every instance, beside the provenance labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Provider-specific parameters (for example a port range or a security group).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Launch instances with no interactive way in: no login key, no password, metadata behind
    /// a session token, no remote-command agents (each provider documents what it closes).
    /// Serialized only when set, so that specs recorded before the option existed keep their
    /// fingerprint, and read as unset when absent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sealed: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl LaunchSpec {
    /// The stable fingerprint: the first 32 hex digits of the SHA-256 of the canonical JSON form.
    ///
    /// All maps are ordered, so the JSON form is canonical.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a launch spec always serializes");
        hex_prefix(&Sha256::digest(&canonical), 32)
    }
}

// Environment values and user data may hold secrets, so Debug shows only their keys and size.
impl fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("machine_type", &self.machine_type)
            .field("network", &self.network)
            .field("user_data", &self.user_data.as_ref().map(|u| format!("<{} bytes>", u.len())))
            .field("args", &self.args)
            .field("env", &self.env.keys().map(|k| format!("{k}=<redacted>")).collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("params", &self.params)
            .field("sealed", &self.sealed)
            .finish()
    }
}

/// The concrete baseline type: what a [`Release`] records of any [`Baseline`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineSpec {
    /// Name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// The launch spec.
    pub spec: LaunchSpec,
}

impl BaselineSpec {
    /// A new baseline.
    pub fn new(name: impl Into<String>, version: Version, spec: LaunchSpec) -> Self {
        BaselineSpec { name: name.into(), version, spec }
    }

    /// Records any baseline.
    pub fn of(baseline: &dyn Baseline) -> Self {
        BaselineSpec {
            name: baseline.name().to_owned(),
            version: baseline.version().clone(),
            spec: baseline.spec().clone(),
        }
    }
}

impl Baseline for BaselineSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn version(&self) -> &Version {
        &self.version
    }
    fn spec(&self) -> &LaunchSpec {
        &self.spec
    }
}

/// A service name plus an artifact plus a baseline: what gets deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    id: ReleaseId,
    service: String,
    artifact: ArtifactSpec,
    baseline: BaselineSpec,
}

impl Release {
    /// A release of `service`; fails with `InvalidInput` naming the field when a name, the image or
    /// the digest is malformed.
    pub fn new(service: impl Into<String>, artifact: &dyn Artifact, baseline: &dyn Baseline) -> Result<Self> {
        let service = service.into();
        validate_name("service", &service)?;
        let artifact = ArtifactSpec::of(artifact);
        artifact.validate()?;
        let baseline = BaselineSpec::of(baseline);
        validate_name("baseline.name", &baseline.name)?;
        let id = release_id(&service, &artifact, &baseline);
        Ok(Release { id, service, artifact, baseline })
    }

    /// The stable id.
    pub fn id(&self) -> &ReleaseId {
        &self.id
    }
    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// The artifact.
    pub fn artifact(&self) -> &ArtifactSpec {
        &self.artifact
    }
    /// The baseline.
    pub fn baseline(&self) -> &BaselineSpec {
        &self.baseline
    }
    /// The baseline's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.baseline.fingerprint()
    }

    /// The provenance an instance of this release launched by `deployment` with `token` carries.
    pub fn provenance(&self, deployment: &DeploymentId, token: &LaunchToken) -> Provenance {
        Provenance {
            service: self.service.clone(),
            release: self.id.clone(),
            artifact: self.artifact.name.clone(),
            artifact_version: self.artifact.version.clone(),
            baseline_fingerprint: self.fingerprint(),
            deployment: deployment.clone(),
            token: token.clone(),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}@{} + {}@{} ({})",
            self.service, self.artifact.name, self.artifact.version, self.baseline.name, self.baseline.version, self.id
        )
    }
}

fn release_id(service: &str, artifact: &ArtifactSpec, baseline: &BaselineSpec) -> ReleaseId {
    let canonical = serde_json::to_vec(&(service, artifact, &baseline.name, &baseline.version, baseline.fingerprint()))
        .expect("release parts always serialize");
    ReleaseId::new(format!("r{}", hex_prefix(&Sha256::digest(&canonical), 16)))
}

pub(crate) fn hex_prefix(bytes: &[u8], len: usize) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(len);
    s
}

/// Names: lowercase letters, digits and `-`, starting with a letter, 1 to 40 characters. They
/// must survive every cloud's label rules unencoded.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{name:?} is not a valid name; use 1 to 40 lowercase letters, digits or '-', starting with a letter"
            ),
        ))
    }
}

/// Lifecycle of an instance as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Launched, not yet running.
    Pending,
    /// Running (not necessarily healthy).
    Running,
    /// Shutting down: not serving, but not gone (it may still hold quota).
    Terminating,
    /// Stopped (out of band, or by the cloud): not serving, not gone, holding quota until it
    /// is terminated. The engine finishes such instances off.
    Stopped,
    /// Gone.
    Terminated,
}

impl InstanceState {
    /// Pending or running.
    pub fn is_live(self) -> bool {
        matches!(self, InstanceState::Pending | InstanceState::Running)
    }

    /// Terminating or stopped: no longer live, not yet gone.
    pub fn is_lingering(self) -> bool {
        matches!(self, InstanceState::Terminating | InstanceState::Stopped)
    }
}

/// Where an instance came from. Every instance immut launches carries it as labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Service name.
    pub service: String,
    /// Release id.
    pub release: ReleaseId,
    /// Artifact name.
    pub artifact: String,
    /// Artifact version.
    pub artifact_version: Version,
    /// Baseline fingerprint.
    pub baseline_fingerprint: String,
    /// The deployment that launched the instance.
    pub deployment: DeploymentId,
    /// The launch token.
    pub token: LaunchToken,
}

/// Label keys of the provenance. They are valid on every cloud.
pub mod label_keys {
    /// Service name.
    pub const SERVICE: &str = "immut-service";
    /// Release id.
    pub const RELEASE: &str = "immut-release";
    /// Artifact name.
    pub const ARTIFACT: &str = "immut-artifact";
    /// Artifact version.
    pub const VERSION: &str = "immut-version";
    /// Baseline fingerprint.
    pub const BASELINE: &str = "immut-baseline";
    /// Deployment id.
    pub const DEPLOYMENT: &str = "immut-deployment";
    /// Launch token.
    pub const TOKEN: &str = "immut-token";
    /// HMAC-SHA256 of the provenance under the deployment key, truncated to 128 bits: 32 hex
    /// digits, which fit every cloud's label rules without encoding (GCE allows 63 characters).
    pub const SIGNATURE: &str = "immut-signature";
}

/// The secret that signs provenance labels, so that hand-edited labels are detected.
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SigningKey(Arc<[u8]>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A key from bytes; fails with `InvalidInput` when shorter than 16 bytes.
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self> {
        let key = key.as_ref();
        if key.len() < 16 {
            return Err(Error::invalid("signing_key", "is shorter than 16 bytes; use a long random secret"));
        }
        Ok(SigningKey(Arc::from(key)))
    }

    /// The key in an environment variable; the error names the variable, never its value.
    pub fn from_env(var: &str) -> Result<Self> {
        let value = std::env::var(var)
            .map_err(|_| Error::invalid("signing_key", format!("set {var} to a long random secret")))?;
        SigningKey::new(value.as_bytes())
            .map_err(|_| Error::invalid("signing_key", format!("{var} is shorter than 16 bytes")))
    }

    /// The HMAC-SHA256 of a provenance's canonical form, truncated to its first 128 bits
    /// ([`SIGNATURE_LEN`] hex digits), as RFC 2104 allows.
    pub fn sign(&self, provenance: &Provenance) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(&serde_json::to_vec(provenance).expect("provenance serializes"));
        hex_prefix(&mac.finalize().into_bytes(), SIGNATURE_LEN)
    }

    /// Whether `labels` carry a valid signature of the provenance they hold.
    pub fn verify(&self, provenance: &Provenance, labels: &BTreeMap<String, String>, charset: LabelCharset) -> bool {
        use hmac::{Hmac, Mac};
        let Some(signature) = labels.get(label_keys::SIGNATURE).and_then(|s| charset.decode(s)) else { return false };
        let Some(bytes) = decode_hex(&signature).filter(|b| b.len() * 2 == SIGNATURE_LEN) else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(&serde_json::to_vec(provenance).expect("provenance serializes"));
        mac.verify_truncated_left(&bytes).is_ok()
    }
}

/// How many hex digits a provenance signature has (128 bits).
pub const SIGNATURE_LEN: usize = 32;

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Which characters label values may hold on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelCharset {
    /// Any string (EC2 tags, Azure tags, local).
    Any,
    /// Lowercase letters, digits, `_` and `-` (GCE label values).
    LowerAlnumDashUnderscore,
}

impl LabelCharset {
    /// Encodes a value for this charset. For the restricted charset every byte outside
    /// `[a-z0-9-]` becomes `_` plus two hex digits, so `1.4.2` becomes `1_2e4_2e2`; decoding is exact.
    pub fn encode(self, value: &str) -> String {
        match self {
            LabelCharset::Any => value.to_owned(),
            LabelCharset::LowerAlnumDashUnderscore => {
                let mut out = String::with_capacity(value.len());
                for b in value.bytes() {
                    if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
                        out.push(b as char);
                    } else {
                        out.push_str(&format!("_{b:02x}"));
                    }
                }
                out
            }
        }
    }

    /// Whether `key` is a valid label key: for the restricted charset (GCE) a lowercase letter
    /// first, then `[a-z0-9_-]`; for any charset, not empty and no control characters.
    pub fn valid_key(self, key: &str) -> bool {
        match self {
            LabelCharset::Any => !key.is_empty() && !key.chars().any(char::is_control),
            LabelCharset::LowerAlnumDashUnderscore => {
                key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            }
        }
    }

    /// Whether `value` may be stored as it is (values immut writes are [`encode`](Self::encode)d
    /// first; a baseline's own labels are not).
    pub fn valid_value(self, value: &str) -> bool {
        match self {
            LabelCharset::Any => !value.chars().any(char::is_control),
            LabelCharset::LowerAlnumDashUnderscore => {
                value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            }
        }
    }

    /// Reverses [`LabelCharset::encode`]; `None` when the value is not a valid encoding.
    pub fn decode(self, value: &str) -> Option<String> {
        match self {
            LabelCharset::Any => Some(value.to_owned()),
            LabelCharset::LowerAlnumDashUnderscore => {
                let bytes = value.as_bytes();
                let mut out = Vec::with_capacity(bytes.len());
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'_' {
                        let hex = value.get(i + 1..i + 3)?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 3;
                    } else {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
                String::from_utf8(out).ok()
            }
        }
    }
}

impl Provenance {
    /// The labels that carry this provenance, encoded for `charset`.
    pub fn to_labels(&self, charset: LabelCharset) -> BTreeMap<String, String> {
        use label_keys::*;
        [
            (SERVICE, self.service.clone()),
            (RELEASE, self.release.to_string()),
            (ARTIFACT, self.artifact.clone()),
            (VERSION, self.artifact_version.to_string()),
            (BASELINE, self.baseline_fingerprint.clone()),
            (DEPLOYMENT, self.deployment.to_string()),
            (TOKEN, self.token.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), charset.encode(&v)))
        .collect()
    }

    /// Release zero of a service: what instances launched outside immut are imported as, so the
    /// first deployment replaces them.
    pub fn adopted(service: &str, deployment: &DeploymentId) -> Provenance {
        Provenance {
            service: service.to_owned(),
            release: ReleaseId::new("r0"),
            artifact: "adopted".to_owned(),
            artifact_version: Version::new(0, 0, 0),
            baseline_fingerprint: "unknown".to_owned(),
            deployment: deployment.clone(),
            token: LaunchToken::new(format!("{deployment}-adopted")),
        }
    }

    /// The provenance labels plus, when given, the signature label, encoded for `charset`.
    pub fn signed_labels(&self, charset: LabelCharset, signature: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = self.to_labels(charset);
        if let Some(signature) = signature {
            labels.insert(label_keys::SIGNATURE.to_owned(), charset.encode(signature));
        }
        labels
    }

    /// Reads provenance back from labels; `None` when any key is missing or malformed
    /// (an instance launched outside the pipeline).
    pub fn from_labels(labels: &BTreeMap<String, String>, charset: LabelCharset) -> Option<Self> {
        use label_keys::*;
        let get = |k: &str| labels.get(k).and_then(|v| charset.decode(v));
        Some(Provenance {
            service: get(SERVICE)?,
            release: ReleaseId::new(get(RELEASE)?),
            artifact: get(ARTIFACT)?,
            artifact_version: Version::parse(&get(VERSION)?).ok()?,
            baseline_fingerprint: get(BASELINE)?,
            deployment: DeploymentId::new(get(DEPLOYMENT)?),
            token: LaunchToken::new(get(TOKEN)?),
        })
    }
}

/// What the provider observed of an instance, independent of its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The image it actually runs.
    pub image: Option<String>,
    /// Its actual machine type.
    pub machine_type: Option<String>,
    /// Its access settings, as far as the provider can see them; `None` where it sees none
    /// (a local process, an instance the provider did not read them for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// One instance as a provider reports it.
///
/// Cloning is cheap: the id, provenance, labels and observations are shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Provider id.
    pub id: InstanceId,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Decoded provenance; `None` for an instance launched outside the pipeline.
    pub provenance: Option<Arc<Provenance>>,
    /// The raw labels as stored by the provider.
    pub labels: Arc<BTreeMap<String, String>>,
    /// What the provider observed.
    pub observed: Arc<Observed>,
    /// Network address (`host:port` or IP), once known.
    pub address: Option<String>,
}

impl Instance {
    /// The release this instance belongs to, from its provenance.
    pub fn release(&self) -> Option<&ReleaseId> {
        self.provenance.as_ref().map(|p| &p.release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, machine: &str) -> Release {
        let artifact = ArtifactSpec::new("web", Version::parse(version).unwrap(), "ami-123");
        let spec = LaunchSpec { machine_type: Some(machine.into()), ..Default::default() };
        Release::new("web", &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), spec)).unwrap()
    }

    #[test]
    fn fingerprint_and_release_id_are_stable_and_sensitive() {
        assert_eq!(release("1.0.0", "m5").id(), release("1.0.0", "m5").id());
        assert_ne!(release("1.0.0", "m5").id(), release("1.0.1", "m5").id());
        assert_ne!(release("1.0.0", "m5").fingerprint(), release("1.0.0", "m6").fingerprint());
        assert_eq!(release("1.0.0", "m5").fingerprint().len(), 32);
    }

    #[test]
    fn gce_label_encoding_round_trips_and_is_valid() {
        let cs = LabelCharset::LowerAlnumDashUnderscore;
        for v in ["1.4.2", "1.4.2-rc.1+build.7", "UPPER_case", "plain-ok"] {
            let e = cs.encode(v);
            assert!(e.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
            assert_eq!(cs.decode(&e).as_deref(), Some(v));
        }
        assert_eq!(cs.encode("1.4.2"), "1_2e4_2e2");
        assert_eq!(cs.decode("bad_z"), None);
    }

    #[test]
    fn provenance_round_trips_through_labels() {
        let r = release("2.3.4-beta.1", "m5");
        let p = r.provenance(&DeploymentId::new("d-1"), &LaunchToken::new("d-1-w0"));
        for cs in [LabelCharset::Any, LabelCharset::LowerAlnumDashUnderscore] {
            assert_eq!(Provenance::from_labels(&p.to_labels(cs), cs), Some(p.clone()));
        }
        let mut partial = p.to_labels(LabelCharset::Any);
        partial.remove(label_keys::TOKEN);
        assert_eq!(Provenance::from_labels(&partial, LabelCharset::Any), None);
    }

    #[test]
    fn bad_names_and_digests_name_the_field() {
        let artifact = ArtifactSpec::new("web", Version::new(1, 0, 0), "img").with_digest("md5:abc");
        let base = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
        let e = Release::new("web", &artifact, &base).unwrap_err();
        assert!(e.to_string().contains("artifact.digest"), "{e}");
        let e = Release::new("Web Server", &ArtifactSpec::new("web", Version::new(1, 0, 0), "img"), &base).unwrap_err();
        assert!(e.to_string().contains("service:"), "{e}");
    }

    #[test]
    fn signatures_catch_edited_labels_and_keys_stay_secret() {
        let key = SigningKey::new("a-very-secret-signing-key").unwrap();
        let p = release("1.0.0", "m5").provenance(&DeploymentId::new("d"), &LaunchToken::new("t"));
        for cs in [LabelCharset::Any, LabelCharset::LowerAlnumDashUnderscore] {
            let mut labels = p.to_labels(cs);
            labels.insert(label_keys::SIGNATURE.into(), cs.encode(&key.sign(&p)));
            assert!(key.verify(&p, &labels, cs));
            let mut forged = labels.clone();
            forged.insert(label_keys::VERSION.into(), cs.encode("9.9.9"));
            let read = Provenance::from_labels(&forged, cs).unwrap();
            assert!(!key.verify(&read, &forged, cs), "an edited label must not verify");
            let other = SigningKey::new("another-secret-signing-key").unwrap();
            assert!(!other.verify(&p, &labels, cs));
        }
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
        assert!(SigningKey::new("short").is_err());
    }

    #[test]
    fn sealed_is_serialized_only_when_set_so_old_fingerprints_hold() {
        let open = LaunchSpec { machine_type: Some("m5".into()), ..Default::default() };
        let json = serde_json::to_string(&open).unwrap();
        assert_eq!(json, r#"{"machine_type":"m5"}"#, "an unsealed spec serializes as before the option existed");
        // The fingerprint of this spec, as recorded before `sealed` existed.
        assert_eq!(open.fingerprint(), hex_prefix(&Sha256::digest(json.as_bytes()), 32));
        let read: LaunchSpec = serde_json::from_str(r#"{"machine_type":"m5"}"#).unwrap();
        assert!(!read.sealed);
        let sealed = LaunchSpec { sealed: true, ..open.clone() };
        assert_ne!(sealed.fingerprint(), open.fingerprint());
        let back: LaunchSpec = serde_json::from_str(&serde_json::to_string(&sealed).unwrap()).unwrap();
        assert!(back.sealed);
    }

    #[test]
    fn launch_spec_debug_redacts_env_and_user_data() {
        let mut spec = LaunchSpec { user_data: Some("password=hunter2".into()), ..Default::default() };
        spec.env.insert("DB_PASSWORD".into(), "hunter2".into());
        let shown = format!("{spec:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("DB_PASSWORD"));
    }
}
