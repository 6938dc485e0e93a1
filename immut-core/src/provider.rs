//! The provider contract: launch, describe, terminate. There is no update or patch method:
//! immutability is enforced by the shape of the API.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{
    DeploymentId, Instance, InstanceId, InstanceState, LabelCharset, LaunchToken, Provenance, Release, ReleaseId,
};

/// What a backend can do; drives both runtime guards and test selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The largest `count` one launch call accepts.
    pub max_launch_batch: usize,
    /// The most ids one terminate call accepts; [`ProviderExt::terminate_all`] splits larger sets.
    pub max_terminate_batch: usize,
    /// Whether the backend itself honours the launch token as an idempotency key (EC2's
    /// ClientToken, GCE's requestId). The engine adopts by token either way; where the backend
    /// honours it, a fresh token's first launch attempt goes out without a look-up by token
    /// first, which a retry, a resumed launch and a deployment id the caller chose still make.
    pub honours_token: bool,
    /// Which characters label values may hold.
    pub label_charset: LabelCharset,
    /// The longest label value the backend accepts.
    pub max_label_value_len: usize,
    /// The longest label key the backend accepts.
    pub max_label_key_len: usize,
    /// The most labels one instance may carry (the provenance's eight included).
    pub max_labels: usize,
    /// How long a new instance may stay invisible to describe after its launch returned
    /// (eventual consistency). Until then the engine counts it from its own record, never
    /// launches a shortfall over it and keeps terminating it until it shows.
    pub consistency_window: std::time::Duration,
    /// Whether `Terminating` and `Stopped` instances still hold the account's quota (EC2:
    /// yes, until terminated). When they do, the engine counts them toward the surge ceiling
    /// until they are gone, so the next wave cannot hit the quota.
    pub lingering_holds_quota: bool,
    /// The shortest gap between two observations of one deployment that the backend's read
    /// quotas sustain. The engine polls faster than its poll interval only close to an expected
    /// change (an instance about to turn healthy), and never faster than this.
    pub min_poll_interval: std::time::Duration,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_launch_batch: 1000,
            max_terminate_batch: 1000,
            honours_token: false,
            label_charset: LabelCharset::Any,
            max_label_value_len: 255,
            max_label_key_len: 128,
            max_labels: 50,
            consistency_window: std::time::Duration::ZERO,
            lingering_holds_quota: true,
            min_poll_interval: std::time::Duration::ZERO,
        }
    }
}

/// How much a backend's client-side rate limits held calls back, since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PacingStats {
    /// Calls that waited for a token.
    pub waits: u64,
    /// Total time they waited, in milliseconds.
    pub waited_ms: u64,
}

/// Whether a release could be launched again: what rollback readiness reports before the
/// engine destroys the last instances of a release. See [`Provider::readiness`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the backend checked at all. `false` (the default of backends that do not opt
    /// in) means nothing is known: it neither blocks nor reassures.
    pub checked: bool,
    /// Why the release can no longer be launched (an image deregistered, disabled, obsolete
    /// or deleted; an executable gone or changed). `None` when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking: Option<String>,
    /// What still launches but will not for long (a deprecated image, an end-of-life date).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How many instances a relaunch has room for under the account's quota, where the
    /// backend reports quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<usize>,
}

impl Readiness {
    /// Nothing is known (the backend does not check).
    pub fn unknown() -> Self {
        Readiness::default()
    }

    /// Checked, and the release can be launched.
    pub fn ready() -> Self {
        Readiness { checked: true, ..Readiness::default() }
    }

    /// Checked, and the release can no longer be launched, because of `reason`.
    pub fn blocked(reason: impl Into<String>) -> Self {
        Readiness { checked: true, blocking: Some(reason.into()), ..Readiness::default() }
    }

    /// Adds a warning.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Sets the room a relaunch has.
    pub fn with_room(mut self, room: usize) -> Self {
        self.room = Some(room);
        self
    }

    /// Whether the release can no longer be launched.
    pub fn is_blocked(&self) -> bool {
        self.blocking.is_some()
    }
}

/// A request to launch `count` instances of a release.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// What to launch.
    pub release: Arc<Release>,
    /// How many.
    pub count: usize,
    /// The idempotency token; it is also carried in the provenance.
    pub token: LaunchToken,
    /// The provenance every launched instance carries as labels.
    pub provenance: Provenance,
    /// The provenance's signature under the deployment key, carried as a label too.
    pub signature: Option<String>,
}

impl LaunchRequest {
    /// A request for `count` instances of `release`, launched by `deployment` under `token`.
    pub fn new(release: Arc<Release>, count: usize, deployment: &DeploymentId, token: LaunchToken) -> Self {
        let provenance = release.provenance(deployment, &token);
        LaunchRequest { release, count, token, provenance, signature: None }
    }

    /// The checks made before any backend call: the count against the batch limit, and the
    /// complete label set that will be written (provenance, signature and the baseline's own
    /// labels) against the backend's rules for keys, characters, lengths and count.
    /// [`ProviderExt::ensure_launched`], which the engine launches through, runs it, so no
    /// provider can forget to.
    pub fn validate(&self, caps: &Capabilities) -> Result<()> {
        if self.count == 0 {
            return Err(Error::invalid("count", "must be at least 1"));
        }
        if self.count > caps.max_launch_batch {
            return Err(Error::invalid(
                "count",
                format!(
                    "{} exceeds this provider's launch batch limit of {}; split the launch",
                    self.count, caps.max_launch_batch
                ),
            ));
        }
        let charset = caps.label_charset;
        let labels = self.labels(charset);
        if labels.len() > caps.max_labels {
            return Err(Error::invalid(
                "baseline.labels",
                format!(
                    "{} labels with the provenance; this provider allows {}: remove some of the baseline's labels",
                    labels.len(),
                    caps.max_labels
                ),
            ));
        }
        let own = &self.release.baseline().spec.labels;
        for (key, value) in &labels {
            // The provenance's values are encoded for the charset; only their length can break a rule.
            let (field, theirs) = match own.get(key) {
                Some(v) if v == value => (format!("baseline.labels.{key}"), true),
                _ => (format!("labels.{key}"), false),
            };
            if !charset.valid_key(key) {
                return Err(Error::invalid(
                    &field,
                    format!("is not a valid label key here ({charset:?}): {}", key_rule(charset)),
                ));
            }
            if key.len() > caps.max_label_key_len {
                return Err(Error::invalid(
                    &field,
                    format!("the key is {} characters; this provider allows {}", key.len(), caps.max_label_key_len),
                ));
            }
            if theirs && !charset.valid_value(value) {
                return Err(Error::invalid(
                    &field,
                    format!("the value {value:?} holds characters this provider refuses: {}", value_rule(charset)),
                ));
            }
            if value.len() > caps.max_label_value_len {
                return Err(Error::invalid(
                    &field,
                    format!(
                        "the value is {} characters; this provider allows {}",
                        value.len(),
                        caps.max_label_value_len
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Signs the provenance with `key`.
    pub fn signed(mut self, key: &crate::model::SigningKey) -> Self {
        self.signature = Some(key.sign(&self.provenance));
        self
    }

    /// All labels an instance of this request carries: the baseline's extra labels, then the
    /// provenance labels and the signature (which win on a clash).
    pub fn labels(&self, charset: LabelCharset) -> std::collections::BTreeMap<String, String> {
        let mut labels = self.release.baseline().spec.labels.clone();
        labels.extend(self.provenance.signed_labels(charset, self.signature.as_deref()));
        labels
    }
}

fn key_rule(charset: LabelCharset) -> &'static str {
    match charset {
        LabelCharset::Any => "use a non-empty key without control characters",
        LabelCharset::LowerAlnumDashUnderscore => "start with a lowercase letter and use only a-z, 0-9, _ and -",
    }
}

fn value_rule(charset: LabelCharset) -> &'static str {
    match charset {
        LabelCharset::Any => "remove control characters",
        LabelCharset::LowerAlnumDashUnderscore => "use only a-z, 0-9, _ and -",
    }
}

/// Which instances to describe. Empty fields match everything; set fields are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Instances of this service.
    pub service: Option<String>,
    /// Launched by this deployment.
    pub deployment: Option<DeploymentId>,
    /// Launched under this token.
    pub token: Option<LaunchToken>,
    /// Of this release.
    pub release: Option<ReleaseId>,
    /// Exactly these ids (missing ids are simply absent from the answer).
    pub ids: Option<Vec<InstanceId>>,
    /// Include instances the backend reports gone (`Terminated`) but still remembers. Without
    /// it, describe returns every instance that is not gone: live ones and lingering ones
    /// (`Terminating`, `Stopped`), which still exist and may hold quota.
    pub include_terminated: bool,
    /// Also return instances without provenance that the backend can see (launched outside
    /// immut), whatever the other filters say.
    pub include_unmanaged: bool,
}

impl Query {
    /// Instances of one service.
    pub fn service(service: impl Into<String>) -> Self {
        Query { service: Some(service.into()), ..Query::default() }
    }

    /// Instances with these ids.
    pub fn ids(ids: impl IntoIterator<Item = InstanceId>) -> Self {
        Query { ids: Some(ids.into_iter().collect()), ..Query::default() }
    }

    /// Instances launched under a token.
    pub fn token(token: LaunchToken) -> Self {
        Query { token: Some(token), ..Query::default() }
    }

    /// Narrows to a deployment.
    pub fn with_deployment(mut self, deployment: DeploymentId) -> Self {
        self.deployment = Some(deployment);
        self
    }

    /// Narrows to a release.
    pub fn with_release(mut self, release: ReleaseId) -> Self {
        self.release = Some(release);
        self
    }

    /// Narrows to a token.
    pub fn with_token(mut self, token: LaunchToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Includes terminated instances.
    pub fn with_terminated(mut self) -> Self {
        self.include_terminated = true;
        self
    }

    /// Also returns instances without provenance.
    pub fn with_unmanaged(mut self) -> Self {
        self.include_unmanaged = true;
        self
    }

    /// Whether an instance matches; providers that filter in memory use this.
    /// Filters other than `ids` match only instances with provenance, unless
    /// `include_unmanaged` is set.
    pub fn matches(&self, instance: &Instance) -> bool {
        if !self.include_terminated && instance.state == InstanceState::Terminated {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.contains(&instance.id)
        {
            return false;
        }
        if self.service.is_none() && self.deployment.is_none() && self.token.is_none() && self.release.is_none() {
            return true;
        }
        let Some(p) = &instance.provenance else { return self.include_unmanaged };
        self.service.as_ref().is_none_or(|s| *s == p.service)
            && self.deployment.as_ref().is_none_or(|d| *d == p.deployment)
            && self.token.as_ref().is_none_or(|t| *t == p.token)
            && self.release.as_ref().is_none_or(|r| *r == p.release)
    }
}

/// The minimum contract of a compute backend.
///
/// Conveniences live in [`ProviderExt`], which every provider gets for free.
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// A short name for logs and errors (`sim`, `local`, `aws`).
    fn name(&self) -> &str;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Launches `request.count` instances carrying the request's provenance labels. Rejects a bad
    /// request with [`crate::ErrorKind::InvalidInput`] before any backend call.
    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>>;

    /// The instances that match `query`.
    async fn describe(&self, query: &Query) -> Result<Vec<Instance>>;

    /// Terminates instances. Idempotent: an id that is already gone, or unknown, is `Ok`.
    async fn terminate(&self, ids: &[InstanceId]) -> Result<()>;

    /// When the backend knows the earliest instant at which a describe, serving or health
    /// answer can change (the simulator does), it says so: a promise that nothing changes
    /// before then. The engine then sleeps until that instant instead of polling. Real clouds
    /// return `None` and the engine polls at its interval.
    fn next_change(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Why a failed instance is gone or stopped, in the backend's words (the last lines of its
    /// log, a status message), if the backend knows. The engine quotes it when a deployment
    /// rolls back because its replacement budget ran out.
    async fn failure_detail(&self, id: &InstanceId) -> Option<String> {
        let _ = id;
        None
    }

    /// Whether `release` could be launched again now (rollback readiness): its image or
    /// executable asked for afresh, never from a cache. The engine asks before it destroys the
    /// last instances of a release. The default knows nothing ([`Readiness::unknown`]);
    /// backends opt in.
    async fn readiness(&self, release: &Release) -> Result<Readiness> {
        let _ = release;
        Ok(Readiness::unknown())
    }

    /// How much client-side rate limiting held this backend's calls back so far; the engine
    /// reports growth as [`crate::Event::Paced`]. Backends without pacing report zero.
    fn pacing(&self) -> PacingStats {
        PacingStats::default()
    }
}

/// Conveniences over any [`Provider`].
#[async_trait]
pub trait ProviderExt: Provider {
    /// Validates `request` ([`LaunchRequest::validate`]), then launches what is missing of it:
    /// describes by the token first and adopts what
    /// already exists, then launches only the shortfall. This is what makes a retried launch safe
    /// on backends that ignore idempotency tokens. Returns all instances and how many were adopted.
    async fn ensure_launched(&self, request: &LaunchRequest) -> Result<(Vec<Instance>, usize)> {
        request.validate(&self.capabilities())?;
        let mut existing = self.describe(&Query::token(request.token.clone())).await?;
        let adopted = existing.len().min(request.count);
        existing.truncate(request.count);
        let missing = request.count - existing.len();
        if missing > 0 {
            let rest = LaunchRequest { count: missing, ..request.clone() };
            existing.extend(self.launch(&rest).await?);
        }
        Ok((existing, adopted))
    }

    /// Terminates any number of ids in batches of the provider's limit.
    async fn terminate_all(&self, ids: &[InstanceId]) -> Result<()> {
        let batch = self.capabilities().max_terminate_batch.max(1);
        for chunk in ids.chunks(batch) {
            self.terminate(chunk).await?;
        }
        Ok(())
    }

    /// The live instances of a service.
    async fn describe_service(&self, service: &str) -> Result<Vec<Instance>> {
        self.describe(&Query::service(service)).await
    }
}

impl<P: Provider + ?Sized> ProviderExt for P {}

/// Backends that can import instances launched outside immut: they label them with a
/// provenance (release zero, see [`Provenance::adopted`]) so the next deployment replaces them.
/// Labelling is the only change made to them.
#[async_trait]
pub trait Adopt: Provider {
    /// Labels the instances `ids` with `provenance` (and `signature`); returns them described.
    async fn adopt(
        &self,
        ids: &[InstanceId],
        provenance: &Provenance,
        signature: Option<&str>,
    ) -> Result<Vec<Instance>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ArtifactSpec, BaselineSpec, LaunchSpec, SIGNATURE_LEN, SigningKey};
    use semver::Version;

    /// GCE's label rules: restricted charset, 63-character keys and values, 64 labels.
    fn gce() -> Capabilities {
        Capabilities {
            label_charset: LabelCharset::LowerAlnumDashUnderscore,
            max_label_value_len: 63,
            max_label_key_len: 63,
            max_labels: 64,
            ..Capabilities::default()
        }
    }

    fn request(labels: &[(&str, &str)], version: &str) -> LaunchRequest {
        let mut spec = LaunchSpec::default();
        spec.labels.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let release = Release::new(
            "web",
            &ArtifactSpec::new("web", Version::parse(version).unwrap(), "img"),
            &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
        )
        .unwrap();
        let deployment = DeploymentId::new("d0123456789ab");
        let token = LaunchToken::new(format!("{deployment}-rb{}-{}", u32::MAX, u32::MAX));
        LaunchRequest::new(Arc::new(release), 1, &deployment, token).signed(&SigningKey::new([7u8; 32]).unwrap())
    }

    #[test]
    fn a_signed_provenance_fits_gce_label_rules() {
        let r = request(&[("team", "payments")], "1.4.2-rc.1+build.5");
        assert_eq!(r.signature.as_ref().map(String::len), Some(SIGNATURE_LEN));
        r.validate(&gce()).unwrap();
    }

    #[test]
    fn each_broken_label_rule_names_the_label_and_the_fix() {
        let (long_value, long_key) = ("x".repeat(64), "k".repeat(64));
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("Team", "x")], "baseline.labels.Team"),
            (&[("team", "Payments")], "baseline.labels.team"),
            (&[("team", &long_value)], "63"),
            (&[(&long_key, "x")], "the key is 64 characters"),
        ];
        for (labels, expect) in cases {
            let e = request(labels, "1.0.0").validate(&gce()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.message().contains(expect), "{labels:?}: {e}");
        }
        let many: Vec<(String, String)> = (0..60).map(|i| (format!("l{i}"), "x".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let e = request(&many, "1.0.0").validate(&gce()).unwrap_err();
        assert!(e.message().starts_with("baseline.labels:") && e.message().contains("allows 64"), "{e}");
    }
}
