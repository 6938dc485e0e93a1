//! The backends a spec names: each module turns its settings into the library's provider,
//! traffic and health check. Building a backend makes no provider call.

mod local;
mod sim;

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "gcp")]
mod gcp;

use std::sync::Arc;

use immut::health::{AllOf, Expected};
use immut::{
    Adopt, ArtifactSpec, BaselineSpec, HealthCheck, HttpProbe, Provider, ProviderStatus, Release, Result, Traffic,
    VersionCheck,
};

use crate::spec::{HealthSettings, MakeAlarms, ProviderSettings, Spec};
#[cfg(feature = "aws")]
use aws::alarms_from_env;

pub use local::serve_if_requested;
pub use sim::SimFleet;

/// Whether a command only reads the fleet or may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (`status`, `audit`, `plan`, `history`).
    Read,
    /// May launch, terminate or move traffic.
    Write,
}

/// A provider with its traffic and health check.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The compute side.
    pub provider: Arc<dyn Provider>,
    /// The load balancer.
    pub traffic: Arc<dyn Traffic>,
    /// How instances are judged.
    pub health: Arc<dyn HealthCheck>,
    /// The provider, when it can adopt instances launched outside immut.
    pub adopt: Option<Arc<dyn Adopt>>,
    /// Makes the providers of `cloudwatch` metrics: on AWS, the instances' connection; else,
    /// when the analysis reads CloudWatch, one from the standard AWS environment.
    pub alarms: Option<AlarmFactory>,
}

/// See [`Backend::alarms`]: given a metric's alarm names, its provider.
#[derive(Clone)]
pub struct AlarmFactory(pub Arc<MakeAlarms>);

impl std::fmt::Debug for AlarmFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlarmFactory")
    }
}

/// The release the spec describes; the provider resolves the artifact (the local provider
/// computes the executable's digest). Makes no provider call.
pub fn release(spec: &Spec) -> Result<Release> {
    let a = &spec.artifact;
    let (artifact, args) = match &spec.provider {
        ProviderSettings::Local(_) => local::artifact(spec)?,
        _ => {
            let mut artifact = ArtifactSpec::new(&a.name, a.version.clone(), &a.image);
            if let Some(d) = &a.digest {
                artifact = artifact.with_digest(d);
            }
            (artifact, Vec::new())
        }
    };
    let mut launch = spec.launch.clone();
    if !args.is_empty() {
        launch.args.splice(0..0, args);
    }
    let baseline = BaselineSpec::new(&spec.baseline_name, spec.baseline_version.clone(), launch);
    Release::new(&spec.service, &artifact, &baseline)
}

/// Connects to the backend the spec names. `releases` are the releases the command may
/// launch (the simulator's faults are keyed by them); `crash` is the crash tests' kill point
/// in the local provider's spawn loop.
pub async fn connect(
    spec: &Spec,
    access: Access,
    releases: &[&Release],
    crash: Option<immut::local::SpawnCrash>,
) -> Result<Backend> {
    if crash.is_some() && !matches!(spec.provider, ProviderSettings::Local(_)) {
        return Err(immut::Error::invalid("provider.kind", "--kill-at-spawn needs the local provider"));
    }
    if spec.health.verify.is_some() && matches!(spec.provider, ProviderSettings::Sim(_)) {
        return Err(immut::Error::invalid(
            "health.verify",
            "the simulator's instances run nothing that could say what it is; remove health.verify",
        ));
    }
    let mut backend = match &spec.provider {
        ProviderSettings::Local(s) => local::connect(spec, s, access, crash).await,
        ProviderSettings::Sim(s) => sim::connect(s, releases),
        #[cfg(feature = "aws")]
        ProviderSettings::Aws(s) => aws::connect(spec, s).await,
        #[cfg(feature = "gcp")]
        ProviderSettings::Gcp(s) => gcp::connect(spec, s).await,
        #[allow(unreachable_patterns)]
        other => Err(immut::Error::invalid(
            "provider.kind",
            format!("this immut was built without the {} provider", other.kind()),
        )),
    }?;
    if backend.alarms.is_none() && spec.analysis.as_ref().is_some_and(|a| a.reads_cloudwatch()) {
        // A connection that cannot be made fails the commands that build the analysis (before
        // any launch), not those that never measure (destroy, status).
        backend.alarms = Some(alarms_from_env().await.unwrap_or_else(|e| {
            AlarmFactory(Arc::new(move |_: &[String]| Err(immut::Error::new(e.kind(), e.message().to_owned()))))
        }));
    }
    if let Some(path) = &spec.health.verify {
        let verified = verified(path, spec, releases);
        backend.health = Arc::new(AllOf(vec![backend.health, Arc::new(verified)]));
    }
    Ok(backend)
}

#[cfg(not(feature = "aws"))]
async fn alarms_from_env() -> Result<AlarmFactory> {
    Err(immut::Error::invalid(
        "analysis.metrics",
        "a cloudwatch metric needs immut built with the aws feature (cargo install immut-cli --features aws)",
    ))
}

/// `health.verify`: each instance must say it runs its release's executable (the local
/// provider: its digest) or image (a cloud: the boot image its metadata service names). The
/// version an instance reports is not compared: the artifact's version is a name the spec
/// gives, not something the build knows. Instances of releases this command does not know are
/// asked for a readable answer only.
fn verified(path: &str, spec: &Spec, releases: &[&Release]) -> VersionCheck {
    let mut check = VersionCheck::endpoint(path).timeout(spec.health.timeout).unregistered(Expected::default());
    for release in releases {
        let artifact = release.artifact();
        let expected = match spec.provider {
            ProviderSettings::Local(_) => Expected { digest: artifact.digest.clone(), ..Expected::default() },
            _ => Expected { image: Some(artifact.image.clone()), ..Expected::default() },
        };
        check = check.expect(release.id().clone(), expected);
    }
    check
}

/// Stops what a retired service leaves running besides its instances: on the local provider,
/// the service's balancer process. Returns a line saying what was stopped, if anything.
pub async fn retire(spec: &Spec) -> Result<Option<String>> {
    match &spec.provider {
        ProviderSettings::Local(s) => local::retire(spec, s).await,
        _ => Ok(None),
    }
}

/// The health check of `[health]` over a provider's own checks: `extra` (the balancer's target
/// health, for example), the provider status when asked, and the HTTP probe when a path is set.
pub(crate) fn health(settings: &HealthSettings, extra: Vec<Arc<dyn HealthCheck>>) -> Arc<dyn HealthCheck> {
    let mut checks = extra;
    if settings.provider_status {
        checks.push(Arc::new(ProviderStatus));
    }
    if let Some(path) = &settings.http {
        checks.push(Arc::new(HttpProbe::with_timeout(path, settings.timeout)));
    }
    match checks.len() {
        0 => Arc::new(ProviderStatus),
        1 => checks.pop().expect("one check"),
        _ => Arc::new(AllOf(checks)),
    }
}
