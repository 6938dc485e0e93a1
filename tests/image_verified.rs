//! Version-verified health on the clouds: an instance is held to the image it booted from, as
//! its metadata service names it, never to what its labels or its launcher say.
//!
//! For each cloud the test launches two instances through the provider, both labelled as
//! release A: one from A's image, and one from B's image under A's provenance (a launcher that
//! wrote the right labels over another build). On each, as its software, it starts the sample
//! service (this very executable) with `SAMPLE_IMAGE_FROM`, pointed at the instance's own
//! metadata service: the fake Compute API's metadata server, the fake ARM's IMDS, and moto's
//! IMDS. Then `VersionCheck::expect_release_image(A)` must find the first healthy and the
//! second unhealthy, naming both images.
//!
//! moto's metadata service names `ami-moto-virtual` for every instance, whatever it was
//! launched from, so on moto both instances are unhealthy and the reason names the AMI of A
//! and `ami-moto-virtual`: the IMDSv2 exchange and the verdict are what it shows there.
//!
//! It runs without the test harness, because the executable must also be able to serve as the
//! sample (`immut::local::serve_if_requested` first thing in `main`). Filter arguments are
//! ignored: every case runs.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use immut::health::{Health, HealthCheck};
use immut::local::sample;
use immut::prelude::*;
use immut::{DeploymentId, Instance, InstanceId, LaunchRequest, LaunchToken, VersionCheck};

fn main() {
    immut::local::serve_if_requested();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        gce().await;
        println!("image_verified: gce ok");
        azure().await;
        println!("image_verified: azure ok");
        ec2().await;
        println!("image_verified: ec2 (moto) ok");
    });
    println!("image_verified: 3 clouds passed");
}

/// The sample service as an instance's software, stopped (SIGTERM, by pid) when dropped.
struct Guest {
    child: Child,
    address: String,
}

impl Guest {
    /// Starts the sample with `env` on a free loopback port and waits for `/version`.
    async fn start(cloud: &str, env: &[(&str, String)], launcher_version: &Version) -> Guest {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .arg(sample::SAMPLE_FLAG)
            .env("PORT", port.to_string())
            .env(sample::IMAGE_FROM, cloud)
            // What a launcher would pass: the labels' version. It is not what is compared.
            .env("IMMUT_ARTIFACT_VERSION", launcher_version.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let guest = Guest { child: command.spawn().unwrap(), address: format!("127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client.get(format!("http://{}/version", guest.address)).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return guest;
            }
            assert!(Instant::now() < deadline, "the sample on {} did not answer within 30 s", guest.address);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the check sees: the instance, at the guest's address (the test stands in for the
    /// network between the checker and the instance).
    fn seen_as(&self, instance: &Instance) -> Instance {
        Instance { address: Some(self.address.clone()), ..instance.clone() }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn release(image: &str, version: Version, machine_type: &str) -> Arc<Release> {
    let spec = LaunchSpec { machine_type: Some(machine_type.into()), ..LaunchSpec::default() };
    let baseline = BaselineSpec::new("base", Version::new(1, 0, 0), spec);
    Arc::new(Release::new("web", &ArtifactSpec::new("web", version, image), &baseline).unwrap())
}

/// Launches one instance of `a`, and one of `b`'s build under `a`'s provenance; returns them
/// as describe sees them (both labelled as `a`), right first.
async fn launch_pair(provider: &impl Provider, a: &Arc<Release>, b: &Arc<Release>) -> (Instance, Instance) {
    let deployment = DeploymentId::new("d-image");
    let right = LaunchRequest::new(a.clone(), 1, &deployment, LaunchToken::new("t-right"));
    let token = LaunchToken::new("t-wrong");
    let wrong = LaunchRequest {
        release: b.clone(),
        count: 1,
        provenance: a.provenance(&deployment, &token),
        token,
        signature: None,
    };
    let right = provider.launch(&right).await.unwrap().remove(0);
    let wrong = provider.launch(&wrong).await.unwrap().remove(0);
    let all = provider.describe(&Query::service("web")).await.unwrap();
    let find = |id: &InstanceId| all.iter().find(|i| &i.id == id).cloned().expect("launched instances are described");
    let (right, wrong) = (find(&right.id), find(&wrong.id));
    assert_eq!(right.release(), Some(a.id()));
    assert_eq!(wrong.release(), Some(a.id()), "the wrong build must carry the right labels");
    (right, wrong)
}

async fn verdicts(check: &VersionCheck, pairs: [(&Guest, &Instance); 2]) -> [Health; 2] {
    let mut out = Vec::new();
    for (guest, instance) in pairs {
        out.push(check.check(&guest.seen_as(instance)).await.unwrap());
    }
    out.try_into().unwrap()
}

fn unhealthy_naming(verdict: &Health, names: &[&str]) {
    match verdict {
        Health::Unhealthy(why) => {
            println!("unhealthy: {why}");
            for name in names {
                assert!(why.contains(name), "the reason must name {name}: {why}");
            }
        }
        other => panic!("expected unhealthy naming {names:?}, got {other:?}"),
    }
}

async fn gce() {
    use immut::gcp::GcpBuilder;
    use immut::gcp::fake::FakeGce;
    const PROJECT: &str = "images";
    let fake = FakeGce::start().await.unwrap();
    fake.add_image(PROJECT, "web-v1", Some("web"));
    fake.add_image(PROJECT, "web-v2", Some("web"));
    let provider = GcpBuilder::new()
        .project(PROJECT)
        .zone("us-central1-a")
        .endpoint(fake.url())
        .anonymous()
        .operation_poll(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    // The artifact may name its image project-relative; the metadata server names it in full.
    let a = release("global/images/web-v1", Version::new(1, 0, 0), "e2-small");
    let b = release(&format!("projects/{PROJECT}/global/images/web-v2"), Version::new(2, 0, 0), "e2-small");
    let (right, wrong) = launch_pair(&provider, &a, &b).await;

    let mut guests = Vec::new();
    let mut servers = Vec::new();
    for instance in [&right, &wrong] {
        let (zone, name) = instance.id.as_str().split_once('/').unwrap();
        let server = fake.metadata_server(PROJECT, zone, name).await.unwrap();
        // The standard override Google's own libraries read.
        guests.push(Guest::start("gce", &[("GCE_METADATA_HOST", server.host())], &a.artifact().version).await);
        servers.push(server);
    }
    let refused = reqwest::get(format!("{}/computeMetadata/v1/instance/image", servers[0].url())).await.unwrap();
    assert_eq!(refused.status(), 403, "the metadata server requires Metadata-Flavor: Google");
    for server in &servers {
        assert_eq!(server.calls().get("metadata.instance.image"), Some(&1), "{:?}", server.calls());
    }
    let ask = |key: &str| {
        let url = format!("{}/computeMetadata/v1/{key}", servers[1].url());
        async move { reqwest::Client::new().get(url).header("Metadata-Flavor", "Google").send().await.unwrap() }
    };
    let name = ask("instance/name").await;
    assert_eq!(name.headers()["metadata-flavor"], "Google");
    assert_eq!(name.text().await.unwrap(), wrong.id.as_str().split_once('/').unwrap().1);
    assert_eq!(ask("instance/no-such-key").await.status(), 404);

    let check = VersionCheck::endpoint("/version").expect_release_image(&a);
    let [r, w] = verdicts(&check, [(&guests[0], &right), (&guests[1], &wrong)]).await;
    assert_eq!(r, Health::Healthy);
    unhealthy_naming(&w, &["another image", "global/images/web-v1", "projects/images/global/images/web-v2"]);
}

async fn azure() {
    use immut::azure::AzureBuilder;
    use immut::azure::fake::FakeArm;
    const SUB: &str = "00000000-0000-0000-0000-0000000000a1";
    const GROUP: &str = "rg-images";
    let image = |v: u32| {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/galleries/g/images/web/versions/{v}.0.0"
        )
    };
    let fake = FakeArm::start().await.unwrap();
    for v in [1, 2] {
        fake.publish_image(&image(v), "westeurope");
    }
    let provider = AzureBuilder::new()
        .subscription(SUB)
        .resource_group(GROUP)
        .location("westeurope")
        .subnet(format!(
            "/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/v/subnets/default"
        ))
        .endpoint(fake.url())
        .static_token("fake-token")
        .operation_poll(Duration::from_millis(50))
        .build()
        .unwrap();
    let a = release(&image(1), Version::new(1, 0, 0), "Standard_B2s");
    let b = release(&image(2), Version::new(2, 0, 0), "Standard_B2s");
    let (right, wrong) = launch_pair(&provider, &a, &b).await;

    let mut guests = Vec::new();
    let mut servers = Vec::new();
    for instance in [&right, &wrong] {
        let server = fake.metadata_server(SUB, GROUP, instance.id.as_str()).await.unwrap();
        guests.push(
            Guest::start("azure", &[("SAMPLE_METADATA_ENDPOINT", server.url().to_owned())], &a.artifact().version)
                .await,
        );
        servers.push(server);
    }
    let refused = reqwest::get(format!("{}/metadata/instance?api-version=2021-02-01", servers[0].url())).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("metadata header"), "{body}");
    let imds = |query: &str| {
        let url = format!("{}/metadata/instance{query}", servers[1].url());
        async move { reqwest::Client::new().get(url).header("Metadata", "true").send().await.unwrap() }
    };
    let unversioned = imds("").await;
    assert_eq!(unversioned.status(), 400);
    let body: serde_json::Value = unversioned.json().await.unwrap();
    assert!(body["newest-versions"].as_array().is_some_and(|v| !v.is_empty()), "{body}");
    let leaf = imds("/compute/storageProfile/imageReference/id?api-version=2021-02-01&format=text").await;
    assert_eq!(leaf.text().await.unwrap(), image(2), "IMDS names the image the VM was made from");

    let check = VersionCheck::endpoint("/version").expect_release_image(&a);
    let [r, w] = verdicts(&check, [(&guests[0], &right), (&guests[1], &wrong)]).await;
    assert_eq!(r, Health::Healthy);
    unhealthy_naming(&w, &["another image", "versions/1.0.0", "versions/2.0.0"]);
}

async fn ec2() {
    use immut::aws::AwsBuilder;
    let moto = immut_core::test_tools::start_moto().unwrap_or_else(|e| panic!("{e}"));
    let provider = AwsBuilder::new()
        .endpoint_url(moto.endpoint())
        .region("us-east-1")
        .credentials("testing", "testing")
        .honours_client_token(false)
        .consistency_window(Duration::ZERO)
        .build()
        .await
        .unwrap();
    // Two of moto's built-in AMIs.
    let a = release("ami-1e749f67", Version::new(1, 0, 0), "t3.micro");
    let b = release("ami-03cf127a", Version::new(2, 0, 0), "t3.micro");
    let (right, wrong) = launch_pair(&provider, &a, &b).await;
    let mut guests = Vec::new();
    for _ in [&right, &wrong] {
        // The standard override the AWS SDKs read.
        let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto.endpoint().to_owned())];
        guests.push(Guest::start("ec2", &env, &a.artifact().version).await);
    }
    let check = VersionCheck::endpoint("/version").expect_release_image(&a);
    for verdict in verdicts(&check, [(&guests[0], &right), (&guests[1], &wrong)]).await {
        unhealthy_naming(&verdict, &["another image", "ami-1e749f67", "ami-moto-virtual"]);
    }
}
