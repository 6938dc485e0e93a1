//! The sample service as a workload (metrics, a version endpoint, faults a liveness probe
//! cannot see) and version-verified health on real processes: an instance that carries the
//! right labels and environment but runs another build is never counted healthy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use immut_core::engine::{Event, ReplacementBudget};
use immut_core::health::{AllOf, Expected, Health, HealthCheck, HttpProbe, VersionCheck};
use immut_core::semver::Version;
use immut_core::{BaselineSpec, BlueGreen, Deployer, Instance, InstanceId, LaunchSpec, Release};
use immut_local::sample::{DIGEST_HEADER, RELEASE_HEADER, VERSION, VERSION_HEADER};
use immut_local::{LocalBalancer, LocalProvider};
use sha2::{Digest, Sha256};

fn sample_path() -> &'static str {
    env!("CARGO_BIN_EXE_immut-sample")
}

/// A fresh directory under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "immut-workload-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `sha256:` digest of a file, computed here rather than by the code under test.
fn digest_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!("sha256:{}", Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A copy of the sample executable; with `extra` bytes appended it is another build (another
/// digest) that still runs.
fn build(dir: &Path, name: &str, extra: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(sample_path(), &path).unwrap();
    if !extra.is_empty() {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(extra).unwrap();
    }
    path
}

/// A sample process started by hand; killed by its pid when dropped.
struct Sample {
    child: Child,
    address: String,
}

impl Drop for Sample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_sample(executable: &Path, env: &[(&str, &str)]) -> Sample {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(executable)
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sample = Sample { child, address: format!("127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&sample.address).await.is_err() {
        assert!(Instant::now() < deadline, "the sample never listened on {}", sample.address);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sample
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(address: &str, path: &str) -> reqwest::Response {
    client().get(format!("http://{address}{path}")).send().await.unwrap()
}

async fn scrape(address: &str) -> prometheus_parse::Scrape {
    let answer = get(address, "/metrics").await;
    assert_eq!(answer.status(), 200);
    let content_type = answer.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = answer.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn counter(scrape: &prometheus_parse::Scrape, status: &str) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sample_http_requests_total" && s.labels.get("status") == Some(status));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v)) => *v,
        None => 0.0,
        other => panic!("sample_http_requests_total is not a counter: {other:?}"),
    }
}

fn histogram(scrape: &prometheus_parse::Scrape) -> (&prometheus_parse::Sample, Vec<prometheus_parse::HistogramCount>) {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sample_http_request_duration_seconds")
        .expect("the latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &sample.value else { panic!("not a histogram: {sample:?}") };
    (sample, buckets.clone())
}

#[tokio::test]
async fn metrics_are_prometheus_text_by_version_and_status_with_a_latency_histogram() {
    let sample =
        start_sample(Path::new(sample_path()), &[("SAMPLE_ERROR_SHARE", "0.1"), ("IMMUT_RELEASE", "r-metrics")]).await;
    for _ in 0..20 {
        get(&sample.address, "/").await;
    }
    for path in ["/healthz", "/version", "/metrics"] {
        get(&sample.address, path).await;
    }
    let scrape = scrape(&sample.address).await;
    assert_eq!(counter(&scrape, "200"), 18.0, "{:?}", scrape.samples);
    assert_eq!(counter(&scrape, "500"), 2.0, "{:?}", scrape.samples);
    let served = scrape.samples.iter().find(|s| s.metric == "sample_http_requests_total").unwrap();
    assert_eq!(served.labels.get("version"), Some(VERSION));
    assert_eq!(served.labels.get("release"), Some("r-metrics"));
    let (latency, buckets) = histogram(&scrape);
    assert_eq!(latency.labels.get("version"), Some(VERSION));
    let all = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("the +Inf bucket");
    assert_eq!(all.count, 20.0, "only served requests are timed: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count), "{buckets:?}");
    let count = scrape.samples.iter().find(|s| s.metric == "sample_http_request_duration_seconds_count");
    assert!(matches!(count.map(|s| &s.value), Some(prometheus_parse::Value::Untyped(n)) if *n == 20.0), "{count:?}");
}

#[tokio::test]
async fn a_share_of_served_requests_fails_or_is_slow_while_healthz_passes() {
    let sample = start_sample(Path::new(sample_path()), &[("SAMPLE_ERROR_SHARE", "5%")]).await;
    let (mut failed, mut healthz_failed) = (0, 0);
    for _ in 0..200 {
        let answer = get(&sample.address, "/").await;
        match answer.status().as_u16() {
            200 => {}
            500 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
        if !get(&sample.address, "/healthz").await.status().is_success() {
            healthz_failed += 1;
        }
    }
    assert_eq!(failed, 10, "5 % of 200 requests, by the request count");
    assert_eq!(healthz_failed, 0, "the liveness probe sees nothing wrong");

    // Slow answers wait at least the delay: half of them land above the 0.25 s bucket.
    let slow = start_sample(Path::new(sample_path()), &[("SAMPLE_SLOW_SHARE", "0.5"), ("SAMPLE_SLOW_MS", "300")]).await;
    for _ in 0..6 {
        assert!(get(&slow.address, "/").await.status().is_success());
    }
    let (_, buckets) = histogram(&scrape(&slow.address).await);
    let quick = buckets.iter().find(|b| b.less_than == 0.25).unwrap();
    assert!(quick.count <= 3.0, "3 of 6 requests waited 300 ms: {buckets:?}");
    assert_eq!(buckets.last().unwrap().count, 6.0);
}

#[tokio::test]
async fn errors_can_begin_only_after_a_number_of_served_requests() {
    let sample =
        start_sample(Path::new(sample_path()), &[("SAMPLE_ERROR_SHARE", "10%"), ("SAMPLE_ERRORS_AFTER", "50")]).await;
    let mut statuses = Vec::new();
    for _ in 0..150 {
        statuses.push(get(&sample.address, "/").await.status().as_u16());
    }
    assert!(statuses[..50].iter().all(|s| *s == 200), "the first 50 are served well: {statuses:?}");
    assert_eq!(statuses[50..].iter().filter(|s| **s == 500).count(), 10, "then 10 % of the next 100 fail");
    let output = Command::new(sample_path())
        .env("PORT", "1")
        .env("SAMPLE_ERRORS_AFTER", "soon")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SAMPLE_ERRORS_AFTER") && stderr.contains("whole number"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_fault_setting_stops_the_sample_naming_the_variable() {
    let output = Command::new(sample_path())
        .env("PORT", "1")
        .env("SAMPLE_ERROR_SHARE", "lots")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SAMPLE_ERROR_SHARE") && stderr.contains("fraction from 0 to 1"), "{stderr}");
}

#[tokio::test]
async fn the_version_endpoint_and_headers_say_what_runs_not_what_the_launcher_said() {
    let dir = scratch("version");
    let other = build(&dir, "build-2", b"\nanother build\n");
    let lies = [("IMMUT_RELEASE", "r-told"), ("IMMUT_ARTIFACT_VERSION", "9.9.9")];
    let sample = start_sample(&other, &lies).await;
    let answer = get(&sample.address, "/version").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let said: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(said["version"], VERSION);
    assert_eq!(said["digest"], digest_of(&other));
    assert_ne!(said["digest"], digest_of(Path::new(sample_path())), "the copy is another build");
    assert_eq!(said["release"], "r-told", "the release is reported as the launcher named it");
    for path in ["/", "/healthz", "/metrics"] {
        let answer = get(&sample.address, path).await;
        assert_eq!(answer.headers()[VERSION_HEADER], VERSION, "{path}");
        assert_eq!(answer.headers()[DIGEST_HEADER].to_str().unwrap(), digest_of(&other), "{path}");
        assert_eq!(answer.headers()[RELEASE_HEADER], "r-told", "{path}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every verdict of the check, by instance: what the deployment was told.
#[derive(Debug)]
struct Recording {
    inner: AllOf,
    verdicts: Mutex<Vec<(InstanceId, Health)>>,
}

#[async_trait]
impl HealthCheck for Recording {
    async fn check(&self, instance: &Instance) -> immut_core::Result<Health> {
        let verdict = self.inner.check(instance).await?;
        self.verdicts.lock().unwrap().push((instance.id.clone(), verdict.clone()));
        Ok(verdict)
    }
}

/// SIGKILLs whatever the state directory launched (instances and balancers) when dropped, so
/// that a failing test leaves nothing running.
struct KillAll(LocalProvider);

impl Drop for KillAll {
    fn drop(&mut self) {
        self.0.kill_all_now();
    }
}

/// Ground truth, without the provider: the instance processes launched from `state_dir` (they
/// carry it and their instance id in their environment), each with the digest of the
/// executable it runs.
fn running(state_dir: &Path) -> Vec<(String, String)> {
    let wanted = std::fs::canonicalize(state_dir).unwrap().display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<(String, String)> = environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok()?.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let get = |k: &str| vars.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if get(immut_local::env::STATE_DIR).as_deref() == Some(wanted.as_str())
            && get(immut_local::env::BALANCER).is_none()
            && let Some(id) = get(immut_local::env::INSTANCE_ID)
            && let Ok(bytes) = std::fs::read(format!("/proc/{pid}/exe"))
        {
            let digest =
                format!("sha256:{}", Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>());
            found.push((id, digest));
        }
    }
    found.sort();
    found
}

/// A release whose artifact is a launcher script that starts a build from a cache, as a
/// deploy of a wrapper or a cached image does. The provider launches it with the release's
/// labels and environment and verifies the script's digest; what then runs is whatever the
/// cache holds. `stale_first` instances find the cache stale and run `stale` instead of
/// `fresh`; the script notes their instance ids in `<dir>/stale-instances`.
fn launcher_release(dir: &Path, version: Version, fresh: &Path, stale: &Path, stale_first: usize) -> Release {
    let script = dir.join("launch.sh");
    std::fs::create_dir_all(dir.join("turns")).unwrap();
    // Each instance claims the next free turn with mkdir, which is atomic, so instances that
    // start at once still get a turn each.
    let text = format!(
        "#!/bin/sh\n\
         turn=1\n\
         while ! mkdir '{dir}/turns/'$turn 2>/dev/null; do turn=$((turn + 1)); done\n\
         if [ $turn -le {stale_first} ]; then\n\
           echo \"$IMMUT_INSTANCE_ID\" >> '{dir}/stale-instances'\n\
           exec '{stale}' \"$@\"\n\
         fi\n\
         exec '{fresh}' \"$@\"\n",
        dir = dir.display(),
        stale = stale.display(),
        fresh = fresh.display(),
    );
    std::fs::write(&script, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let artifact = immut_local::artifact("sample", version, &script).unwrap();
    Release::new("verified", &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()))
        .unwrap()
}

/// The instances of `ids` that `events` show in any list selected by `pick`.
fn named_in(events: &[Event], pick: impl Fn(&Event) -> Vec<&InstanceId>) -> Vec<InstanceId> {
    events.iter().flat_map(&pick).cloned().collect()
}

fn attached(events: &[Event]) -> Vec<InstanceId> {
    named_in(events, |e| match e {
        Event::Attached { ids } => ids.iter().collect(),
        Event::Switched { attached, .. } => attached.iter().collect(),
        _ => Vec::new(),
    })
}

fn terminated(events: &[Event]) -> Vec<InstanceId> {
    named_in(events, |e| match e {
        Event::Terminated { ids } => ids.iter().collect(),
        _ => Vec::new(),
    })
}

struct Fleet {
    provider: LocalProvider,
    balancer: LocalBalancer,
    builds: PathBuf,
    v1: Release,
    v1_digest: String,
    v2_digest: String,
    v2_build: PathBuf,
    _kill: KillAll,
}

/// A provider, a balancer (the sample binary serves as one) and 3 instances of build 1 serving,
/// deployed with the version check.
async fn fleet(tag: &str) -> Fleet {
    let state_dir = scratch(tag);
    let builds = scratch(&format!("{tag}-builds"));
    let provider = LocalProvider::builder().state_dir(&state_dir).build().unwrap();
    let kill = KillAll(provider.clone());
    let balancer = provider
        .balancer("verified")
        .executable(sample_path())
        .drain_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let v1_build = build(&builds, "build-1", b"");
    let v2_build = build(&builds, "build-2", b"\nimmut test: build 2\n");
    // The artifact is the build itself, versioned as the build says it is.
    let artifact = immut_local::artifact("sample", Version::parse(VERSION).unwrap(), &v1_build).unwrap();
    let v1 =
        Release::new("verified", &artifact, &BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()))
            .unwrap();
    let check =
        AllOf::default().and(HttpProbe::new("/healthz")).and(VersionCheck::endpoint("/version").expect_release(&v1));
    let outcome = deployer(&provider, &balancer, Arc::new(check)).deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let (v1_digest, v2_digest) = (digest_of(&v1_build), digest_of(&v2_build));
    Fleet { provider, balancer, builds, v1, v1_digest, v2_digest, v2_build, _kill: kill }
}

fn deployer(provider: &LocalProvider, balancer: &LocalBalancer, health: Arc<dyn HealthCheck>) -> Deployer {
    Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health_arc(health)
        .strategy(BlueGreen::new().bake(Duration::from_millis(300)))
        .desired(3)
        .poll_interval(Duration::from_millis(100))
        .instance_deadline(Duration::from_secs(4))
        .progress_deadline(Duration::from_secs(30))
        .replacement_budget(ReplacementBudget {
            per_wave: immut_core::Count::Count(1),
            per_deployment: immut_core::Count::Count(1),
        })
        .build()
        .unwrap()
}

/// Deploys `v2` over the fleet with liveness and version checks, recording every verdict.
async fn deploy_verified(fleet: &Fleet, v2: &Release) -> (immut_core::Outcome, Vec<Event>, Vec<(InstanceId, Health)>) {
    let expected = Expected {
        version: Some(Version::parse(VERSION).unwrap()),
        digest: Some(fleet.v2_digest.clone()),
        image: None,
    };
    // Build 2 is what the launcher script must start: that is the expectation, not the
    // script's own digest.
    let version = VersionCheck::endpoint("/version").expect_release(&fleet.v1).expect(v2.id().clone(), expected);
    let recording = Arc::new(Recording {
        inner: AllOf::default().and(HttpProbe::new("/healthz")).and(version),
        verdicts: Mutex::new(Vec::new()),
    });
    let mut events = Vec::new();
    let outcome = deployer(&fleet.provider, &fleet.balancer, recording.clone())
        .deploy(v2.clone())
        .with_previous(fleet.v1.clone())
        .run_with(|e| events.push(e.clone()))
        .await;
    let verdicts = recording.verdicts.lock().unwrap().clone();
    (outcome, events, verdicts)
}

fn stale_instances(builds: &Path) -> Vec<InstanceId> {
    let text = std::fs::read_to_string(builds.join("stale-instances")).unwrap_or_default();
    text.lines().map(InstanceId::new).collect()
}

/// The verdicts on a stale instance: none healthy, and the unhealthy ones name both builds.
fn assert_never_healthy(verdicts: &[(InstanceId, Health)], id: &InstanceId, fleet: &Fleet) {
    let on: Vec<&Health> = verdicts.iter().filter(|(i, _)| i == id).map(|(_, h)| h).collect();
    assert!(!on.iter().any(|h| h.is_healthy()), "{id} runs build 1 and was judged healthy: {on:?}");
    let named_both = on.iter().any(
        |h| matches!(h, Health::Unhealthy(why) if why.contains(&fleet.v1_digest) && why.contains(&fleet.v2_digest)),
    );
    assert!(named_both, "no verdict on {id} names the expected and the found digest: {on:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_running_another_build_is_never_counted_and_is_replaced() {
    let fleet = fleet("replaced").await;
    let v2 = launcher_release(&fleet.builds, Version::new(2, 0, 0), &fleet.v2_build, &fleet.builds.join("build-1"), 1);
    let (outcome, events, verdicts) = deploy_verified(&fleet, &v2).await;
    assert!(outcome.succeeded(), "{}", outcome.summary());

    let stale = stale_instances(&fleet.builds);
    assert_eq!(stale.len(), 1, "the first instance found the cache stale");
    let stale = &stale[0];
    assert_never_healthy(&verdicts, stale, &fleet);
    assert!(!attached(&events).contains(stale), "{stale} was given traffic");
    assert!(terminated(&events).contains(stale), "{stale} was not replaced");

    // Ground truth: 3 processes run build 2, and they are what the balancer serves.
    let running = running(fleet.provider.state_dir());
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(running.iter().all(|(_, digest)| digest == &fleet.v2_digest), "{running:?}");
    let mut serving: Vec<String> =
        immut_core::Traffic::serving(&fleet.balancer).await.unwrap().iter().map(|i| i.to_string()).collect();
    serving.sort();
    assert_eq!(serving, running.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
    fleet.balancer.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(fleet.provider.state_dir());
    let _ = std::fs::remove_dir_all(&fleet.builds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_instances_all_run_another_build_rolls_back() {
    let fleet = fleet("rolled-back").await;
    let before = running(fleet.provider.state_dir());
    let v2 = launcher_release(&fleet.builds, Version::new(2, 0, 0), &fleet.v2_build, &fleet.builds.join("build-1"), 99);
    let (outcome, events, verdicts) = deploy_verified(&fleet, &v2).await;
    assert!(!outcome.succeeded(), "a release that runs another build must not succeed: {}", outcome.summary());
    assert!(events.iter().any(|e| matches!(e, Event::RollbackStarted { .. })), "{events:?}");

    let stale = stale_instances(&fleet.builds);
    assert!(stale.len() >= 3, "every instance of the release ran build 1: {stale:?}");
    for id in &stale {
        assert_never_healthy(&verdicts, id, &fleet);
        assert!(!attached(&events).contains(id), "{id} was given traffic");
    }
    // Ground truth: the fleet of build 1 is the one that ran before, and it serves.
    let after = running(fleet.provider.state_dir());
    assert_eq!(after, before, "the previous fleet stays as it was");
    assert!(after.iter().all(|(_, digest)| digest == &fleet.v1_digest), "{after:?}");
    let mut serving: Vec<String> =
        immut_core::Traffic::serving(&fleet.balancer).await.unwrap().iter().map(|i| i.to_string()).collect();
    serving.sort();
    assert_eq!(serving, after.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
    fleet.balancer.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(fleet.provider.state_dir());
    let _ = std::fs::remove_dir_all(&fleet.builds);
}
