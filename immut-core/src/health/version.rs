//! Version-verified health: asks each instance what it runs and compares the answer with the
//! release it should run, so that an instance with the right labels that runs another build
//! (booted from a wrong image, a stale cache) is never counted healthy.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use semver::Version;

use super::{Health, HealthCheck};
use crate::error::Result;
use crate::model::{Instance, Release, ReleaseId};

/// The largest answer read from an instance: a version answer is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Where an instance tells what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// `GET <path>` answers a JSON object whose string fields `version`, `digest` and `image`
    /// say what runs (any may be missing when it is not expected).
    Endpoint {
        /// For example `/version`.
        path: String,
    },
    /// `GET <path>` answers with headers that say what runs.
    Headers {
        /// For example `/healthz`.
        path: String,
        /// The header with the version (for example `x-immut-version`).
        version: String,
        /// The header with the digest (for example `x-immut-digest`), if the instance sends one.
        digest: Option<String>,
        /// The header with the image the instance booted from, as its metadata service names it
        /// (for example `x-immut-image`), if the instance sends one.
        image: Option<String>,
    },
}

impl VersionSource {
    fn path(&self) -> &str {
        match self {
            VersionSource::Endpoint { path } | VersionSource::Headers { path, .. } => path,
        }
    }
}

/// What an instance of a release must say it runs. A field left `None` is not compared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    /// The build's version.
    pub version: Option<Version>,
    /// The `sha256:` digest of what runs (an executable, an image).
    pub digest: Option<String>,
    /// The cloud image the instance must have booted from, as the release's artifact names it
    /// (an AMI id, a Compute Engine image path, an ARM image id); compared with what the
    /// instance's metadata service says, however each cloud writes it (a Compute Engine path
    /// as a URL or project-relative, an ARM id in any case).
    pub image: Option<String>,
}

impl Expected {
    /// The compared fields, `any` for one that is not compared (see [`fields`]).
    fn describe(&self) -> String {
        let version = self.version.as_ref().map_or("any".to_owned(), Version::to_string);
        fields(self, &version, self.digest.as_deref().unwrap_or("any"), self.image.as_deref().unwrap_or("any"))
    }

    fn image_only(&self) -> bool {
        self.image.is_some() && self.version.is_none() && self.digest.is_none()
    }
}

/// The fields `expected` compares, with these values: `version V, digest D` (and `image I`
/// when an image is compared), or `image I` alone when only the image is.
fn fields(expected: &Expected, version: &str, digest: &str, image: &str) -> String {
    match &expected.image {
        Some(_) if expected.image_only() => format!("image {image}"),
        Some(_) => format!("version {version}, digest {digest}, image {image}"),
        None => format!("version {version}, digest {digest}"),
    }
}

/// What an instance said it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Found {
    version: Option<String>,
    digest: Option<String>,
    image: Option<String>,
}

impl Found {
    /// What the instance said, field for field with what `expected` describes.
    fn describe(&self, expected: &Expected) -> String {
        let none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
        fields(expected, &none(&self.version), &none(&self.digest), &none(&self.image))
    }
}

/// Healthy when the instance says it runs the build its release should run.
///
/// The expectation of a release is registered with [`VersionCheck::expect_release`] (the
/// artifact's version and digest), [`VersionCheck::expect_release_image`] (the cloud image the
/// artifact names) or [`VersionCheck::expect`] (any version, digest and image, for example the
/// executable a launcher script starts). For an instance of a release that was not
/// registered, the artifact version of its labels is expected and the digest is not compared
/// (or what [`VersionCheck::unregistered`] says).
///
/// Verdicts:
/// - the answer matches: [`Health::Healthy`];
/// - it names another version or digest, or lacks one that is expected, or is not 2xx, or
///   cannot be read: [`Health::Unhealthy`], with a reason that names what was expected and what
///   was found. Such an instance never counts toward the healthy floor;
/// - the instance cannot be asked (no address, no connection, no answer within the timeout) or
///   carries no provenance to compare with: [`Health::Unknown`], never healthy. A dead instance
///   is the liveness probe's to judge; compose the two with [`super::AllOf`].
///
/// The answer must come from what runs, never from what the launcher passed: the local sample
/// service reports the sha256 of `/proc/self/exe` and its built-in version; on a cloud it
/// reports the image id that the instance's metadata service gives (EC2's IMDSv2 `ami-id`,
/// Compute Engine's `instance/image`, Azure IMDS's `storageProfile.imageReference.id`).
#[derive(Debug, Clone)]
pub struct VersionCheck {
    client: reqwest::Client,
    source: VersionSource,
    releases: HashMap<ReleaseId, Expected>,
    unregistered: Option<Expected>,
}

impl VersionCheck {
    /// Asks `GET <path>` for a JSON answer (see [`VersionSource::Endpoint`]), with a 2 s timeout.
    pub fn endpoint(path: impl Into<String>) -> Self {
        Self::new(VersionSource::Endpoint { path: path.into() })
    }

    /// Reads the headers of the answer to `GET <path>` (see [`VersionSource::Headers`]), with a
    /// 2 s timeout.
    pub fn headers(path: impl Into<String>, version: impl Into<String>, digest: Option<String>) -> Self {
        Self::new(VersionSource::Headers { path: path.into(), version: version.into(), digest, image: None })
    }

    /// Asks where `source` says, with a 2 s timeout.
    pub fn new(source: VersionSource) -> Self {
        let source = match source {
            VersionSource::Endpoint { path } => VersionSource::Endpoint { path: rooted(path) },
            VersionSource::Headers { path, version, digest, image } => {
                VersionSource::Headers { path: rooted(path), version, digest, image }
            }
        };
        VersionCheck { client: client(Duration::from_secs(2)), source, releases: HashMap::new(), unregistered: None }
    }

    /// How long an instance may take to answer before its verdict is unknown.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.client = client(timeout);
        self
    }

    /// Instances of `release` must run its artifact: its version and, when it has one, its
    /// digest.
    pub fn expect_release(self, release: &Release) -> Self {
        let artifact = release.artifact();
        let expected =
            Expected { version: Some(artifact.version.clone()), digest: artifact.digest.clone(), image: None };
        self.expect(release.id().clone(), expected)
    }

    /// Instances of `release` must have booted from the cloud image its artifact names, as
    /// their metadata service says. Nothing else is compared: on a cloud, the version an
    /// instance could report comes from what its launcher passed. The artifact must name the
    /// image itself, not a Compute Engine image family (which moves).
    pub fn expect_release_image(self, release: &Release) -> Self {
        let expected = Expected { version: None, digest: None, image: Some(release.artifact().image.clone()) };
        self.expect(release.id().clone(), expected)
    }

    /// Instances of `release` must say they run `expected`.
    pub fn expect(mut self, release: ReleaseId, expected: Expected) -> Self {
        self.releases.insert(release, expected);
        self
    }

    /// What an instance of a release that was not registered must say it runs, instead of the
    /// artifact version of its labels: for example [`Expected::default`] (nothing compared but
    /// a readable answer) where instances of releases the caller does not know may run, and
    /// their builds do not report the artifact's version.
    pub fn unregistered(mut self, expected: Expected) -> Self {
        self.unregistered = Some(expected);
        self
    }

    /// What `answer` says runs, or why it says nothing usable.
    async fn read(&self, answer: reqwest::Response) -> std::result::Result<Found, String> {
        let header = |name: &str| {
            answer.headers().get(name).map(|v| v.to_str().map(str::to_owned).unwrap_or_else(|_| "<not text>".into()))
        };
        match &self.source {
            VersionSource::Headers { version, digest, image, .. } => Ok(Found {
                version: header(version),
                digest: digest.as_deref().and_then(header),
                image: image.as_deref().and_then(header),
            }),
            VersionSource::Endpoint { path } => {
                let body = bounded_body(answer).await.map_err(|e| format!("GET {path}: the answer broke off: {e}"))?;
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("GET {path} answered no JSON ({e}); it cannot say what it runs"))?;
                let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                Ok(Found { version: field("version"), digest: field("digest"), image: field("image") })
            }
        }
    }
}

fn rooted(mut path: String) -> String {
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        // Each instance is asked on a connection of its own, as a new client would.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client always builds")
}

/// The body, or an error once it passes [`MAX_ANSWER`] bytes.
async fn bounded_body(mut answer: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("it is over {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why `found` is not `expected`, if it is not.
fn mismatch(expected: &Expected, found: &Found) -> Option<&'static str> {
    if let Some(want) = &expected.version {
        match found.version.as_deref().map(|v| Version::parse(v.trim())) {
            None => return Some("it reports no version"),
            Some(Ok(v)) if &v == want => {}
            Some(_) => return Some("it runs another version than its labels say"),
        }
    }
    if let Some(want) = &expected.digest {
        match found.digest.as_deref() {
            None => return Some("it reports no digest"),
            Some(d) if d.trim().eq_ignore_ascii_case(want) => {}
            Some(_) => return Some("it runs another build than its labels say"),
        }
    }
    if let Some(want) = &expected.image {
        match found.image.as_deref() {
            None => return Some("it reports no image"),
            Some(image) if super::image::same(want, image) => {}
            Some(_) if super::image::is_family(want) => {
                return Some("the release names an image family, which moves: pin the image itself");
            }
            Some(_) => return Some("it booted from another image than its labels say"),
        }
    }
    None
}

#[async_trait]
impl HealthCheck for VersionCheck {
    async fn check(&self, instance: &Instance) -> Result<Health> {
        let (Some(address), Some(provenance)) = (&instance.address, &instance.provenance) else {
            return Ok(Health::Unknown);
        };
        let expected =
            self.releases.get(&provenance.release).or(self.unregistered.as_ref()).cloned().unwrap_or_else(|| {
                Expected { version: Some(provenance.artifact_version.clone()), ..Expected::default() }
            });
        let path = self.source.path();
        let answer = match self.client.get(format!("http://{address}{path}")).send().await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(instance = %instance.id, error = %e, "could not ask the instance what it runs");
                return Ok(Health::Unknown);
            }
        };
        if !answer.status().is_success() {
            return Ok(Health::Unhealthy(format!(
                "GET {path} answered {}: it cannot say what it runs; release {} expects {}",
                answer.status(),
                provenance.release,
                expected.describe()
            )));
        }
        let found = match self.read(answer).await {
            Ok(found) => found,
            Err(why) => {
                return Ok(Health::Unhealthy(format!(
                    "{why}; release {} expects {}",
                    provenance.release,
                    expected.describe()
                )));
            }
        };
        Ok(match mismatch(&expected, &found) {
            None => Health::Healthy,
            Some(why) => Health::Unhealthy(format!(
                "{why}: release {} expects {}, the instance reports {}",
                provenance.release,
                expected.describe(),
                found.describe(&expected)
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper::body::Bytes;

    use super::*;
    use crate::health::{AllOf, ProviderStatus};
    use crate::model::{ArtifactSpec, BaselineSpec, DeploymentId, InstanceId, InstanceState, LaunchSpec, LaunchToken};

    const GOOD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn release(version: Version) -> Release {
        let artifact = ArtifactSpec::new("app", version, "/bin/app").with_digest(GOOD);
        let baseline = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
        Release::new("svc", &artifact, &baseline).unwrap()
    }

    fn instance_of(release: &Release, address: Option<String>) -> Instance {
        let provenance = release.provenance(&DeploymentId::new("d-1"), &LaunchToken::new("t-1"));
        Instance {
            id: InstanceId::new("i-1"),
            state: InstanceState::Running,
            provenance: Some(Arc::new(provenance)),
            labels: Arc::new(BTreeMap::new()),
            observed: Arc::new(Default::default()),
            address,
        }
    }

    /// A server on a free loopback port that answers every request with `status`, `headers`
    /// and `body`; it stops when the test's runtime ends.
    async fn answering(status: u16, headers: &[(&'static str, &'static str)], body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let headers = headers.to_vec();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let headers = headers.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let mut answer = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        for (k, v) in &headers {
                            answer.headers_mut().insert(*k, hyper::header::HeaderValue::from_static(v));
                        }
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        address
    }

    fn json(version: &str, digest: &str) -> &'static str {
        Box::leak(
            format!(r#"{{"version":"{version}","digest":"{digest}","release":"whatever the launcher said"}}"#)
                .into_boxed_str(),
        )
    }

    #[tokio::test]
    async fn the_right_build_is_healthy_and_another_build_is_unhealthy_naming_both() {
        let r = release(Version::new(2, 0, 0));
        let check = VersionCheck::endpoint("version").expect_release(&r);
        let right = answering(200, &[], json("2.0.0", GOOD)).await;
        assert_eq!(check.check(&instance_of(&r, Some(right))).await.unwrap(), Health::Healthy);

        let wrong = answering(200, &[], json("2.0.0", OTHER)).await;
        let Health::Unhealthy(reason) = check.check(&instance_of(&r, Some(wrong))).await.unwrap() else {
            panic!("another build must be unhealthy")
        };
        assert!(reason.contains(GOOD) && reason.contains(OTHER) && reason.contains(r.id().as_str()), "{reason}");

        let old = answering(200, &[], json("1.9.0", GOOD)).await;
        let Health::Unhealthy(reason) = check.check(&instance_of(&r, Some(old))).await.unwrap() else {
            panic!("another version must be unhealthy")
        };
        assert!(reason.contains("expects version 2.0.0") && reason.contains("reports version 1.9.0"), "{reason}");
    }

    #[tokio::test]
    async fn answers_that_prove_nothing_are_unhealthy() {
        let r = release(Version::new(2, 0, 0));
        let check = VersionCheck::endpoint("/version").expect_release(&r);
        for address in [
            answering(404, &[], "not found").await,
            answering(200, &[], "version 2.0.0").await,
            answering(200, &[], r#"{"version":"2.0.0"}"#).await,
        ] {
            let verdict = check.check(&instance_of(&r, Some(address))).await.unwrap();
            assert!(matches!(&verdict, Health::Unhealthy(why) if why.contains(GOOD)), "{verdict:?}");
        }
    }

    #[tokio::test]
    async fn an_instance_that_cannot_be_asked_is_unknown_never_healthy() {
        let r = release(Version::new(2, 0, 0));
        let check = VersionCheck::endpoint("/version").expect_release(&r).timeout(Duration::from_millis(500));
        // A port that was free a moment ago: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        assert_eq!(check.check(&instance_of(&r, Some(closed))).await.unwrap(), Health::Unknown);
        assert_eq!(check.check(&instance_of(&r, None)).await.unwrap(), Health::Unknown);
        let mut unlabelled = instance_of(&r, Some(answering(200, &[], json("2.0.0", GOOD)).await));
        unlabelled.provenance = None;
        assert_eq!(check.check(&unlabelled).await.unwrap(), Health::Unknown);
    }

    #[tokio::test]
    async fn headers_can_carry_the_answer() {
        let r = release(Version::new(2, 0, 0));
        let check =
            VersionCheck::headers("/healthz", "x-immut-version", Some("x-immut-digest".into())).expect_release(&r);
        let right = answering(200, &[("x-immut-version", "2.0.0"), ("x-immut-digest", GOOD)], "ok").await;
        assert_eq!(check.check(&instance_of(&r, Some(right))).await.unwrap(), Health::Healthy);
        let wrong = answering(200, &[("x-immut-version", "2.0.0"), ("x-immut-digest", OTHER)], "ok").await;
        assert!(matches!(check.check(&instance_of(&r, Some(wrong))).await.unwrap(), Health::Unhealthy(_)));
        let silent = answering(200, &[], "ok").await;
        let verdict = check.check(&instance_of(&r, Some(silent))).await.unwrap();
        assert!(matches!(&verdict, Health::Unhealthy(why) if why.contains("reports no version")), "{verdict:?}");
    }

    #[tokio::test]
    async fn an_unregistered_release_is_held_to_the_version_of_its_labels() {
        let r = release(Version::new(3, 1, 4));
        let check = VersionCheck::endpoint("/version");
        let same = answering(200, &[], json("3.1.4", OTHER)).await;
        assert_eq!(check.check(&instance_of(&r, Some(same))).await.unwrap(), Health::Healthy);
        let other = answering(200, &[], json("3.1.5", GOOD)).await;
        assert!(matches!(check.check(&instance_of(&r, Some(other.clone()))).await.unwrap(), Health::Unhealthy(_)));
        let lenient = VersionCheck::endpoint("/version").unregistered(Expected::default());
        assert_eq!(lenient.check(&instance_of(&r, Some(other))).await.unwrap(), Health::Healthy);
        let explicit = VersionCheck::endpoint("/version")
            .expect(r.id().clone(), Expected { digest: Some(OTHER.into()), ..Expected::default() });
        let payload = answering(200, &[], json("0.0.1", OTHER)).await;
        assert_eq!(explicit.check(&instance_of(&r, Some(payload))).await.unwrap(), Health::Healthy);
    }

    #[tokio::test]
    async fn a_cloud_instance_is_held_to_the_image_it_booted_from() {
        let image = "projects/shop/global/images/web-v2";
        let artifact = ArtifactSpec::new("web", Version::new(2, 0, 0), "global/images/web-v2");
        let baseline = BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default());
        let r = Release::new("web", &artifact, &baseline).unwrap();
        let check = VersionCheck::endpoint("/version").expect_release_image(&r);
        // The launcher's version is not compared: only the metadata service's image is.
        let right =
            answering(200, &[], Box::leak(format!(r#"{{"version":"unknown","image":"{image}"}}"#).into_boxed_str()))
                .await;
        assert_eq!(check.check(&instance_of(&r, Some(right))).await.unwrap(), Health::Healthy);

        let other = "projects/shop/global/images/web-v1";
        let wrong = answering(200, &[], Box::leak(format!(r#"{{"image":"{other}"}}"#).into_boxed_str())).await;
        let Health::Unhealthy(reason) = check.check(&instance_of(&r, Some(wrong))).await.unwrap() else {
            panic!("another image must be unhealthy")
        };
        assert!(
            reason.contains("another image") && reason.contains("global/images/web-v2") && reason.contains(other),
            "{reason}"
        );

        let silent = answering(200, &[], r#"{"version":"2.0.0"}"#).await;
        let verdict = check.check(&instance_of(&r, Some(silent))).await.unwrap();
        assert!(matches!(&verdict, Health::Unhealthy(why) if why.contains("reports no image")), "{verdict:?}");

        let by_header = VersionCheck::new(VersionSource::Headers {
            path: "/healthz".into(),
            version: "x-immut-version".into(),
            digest: None,
            image: Some("x-immut-image".into()),
        })
        .expect_release_image(&r);
        let right = answering(200, &[("x-immut-image", "projects/shop/global/images/web-v2")], "ok").await;
        assert_eq!(by_header.check(&instance_of(&r, Some(right))).await.unwrap(), Health::Healthy);

        let family = ArtifactSpec::new("web", Version::new(2, 0, 0), "projects/shop/global/images/family/web");
        let moving = Release::new("web", &family, &baseline).unwrap();
        let check = VersionCheck::endpoint("/version").expect_release_image(&moving);
        let answer = answering(200, &[], Box::leak(format!(r#"{{"image":"{image}"}}"#).into_boxed_str())).await;
        let verdict = check.check(&instance_of(&moving, Some(answer))).await.unwrap();
        assert!(matches!(&verdict, Health::Unhealthy(why) if why.contains("pin the image")), "{verdict:?}");
    }

    #[tokio::test]
    async fn it_composes_a_live_instance_of_another_build_is_unhealthy() {
        let r = release(Version::new(2, 0, 0));
        let all = AllOf::default().and(ProviderStatus).and(VersionCheck::endpoint("/version").expect_release(&r));
        let wrong = instance_of(&r, Some(answering(200, &[], json("2.0.0", OTHER)).await));
        let right = instance_of(&r, Some(answering(200, &[], json("2.0.0", GOOD)).await));
        let verdicts = all.check_many(&[wrong, right]).await.unwrap();
        assert!(matches!(&verdicts[0], Health::Unhealthy(why) if why.contains(OTHER)), "{verdicts:?}");
        assert_eq!(verdicts[1], Health::Healthy);
    }
}
