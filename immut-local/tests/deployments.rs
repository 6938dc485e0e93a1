//! Deployments on real processes: zero failed requests across a blue/green switch under load,
//! and a deployer killed mid-run leaving instances a new deployer can describe.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use immut_core::engine::Event;
use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::{BlueGreen, Deployer, LaunchSpec, Provider, ProviderExt, Query, Traffic};
use immut_local::LocalProvider;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switch_under_continuous_load_fails_no_request() {
    let (provider, balancer) = support::local("zero-downtime").await;
    let v1 = support::release("zd", Version::new(1, 0, 0), LaunchSpec::default());
    let v2 = support::release("zd", Version::new(2, 0, 0), LaunchSpec::default());
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(BlueGreen::new().bake(Duration::from_millis(500)))
        .desired(3)
        .min_ready(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(20))
        .build()
        .unwrap();
    assert!(deployer.deploy(v1.clone()).run().await.succeeded());

    let stop = Arc::new(AtomicBool::new(false));
    type Seen = (u64, u64, BTreeMap<String, u64>); // sent, failed, served by version
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let addr = balancer.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().pool_max_idle_per_host(0).no_proxy().build().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let result =
                        async { http.get(format!("http://{addr}/")).send().await?.error_for_status()?.text().await }
                            .await;
                    let mut s = seen.lock().await;
                    s.0 += 1;
                    match result {
                        Ok(body) => {
                            *s.2.entry(body.split_whitespace().nth(1).unwrap_or("?").to_owned()).or_default() += 1
                        }
                        Err(_) => s.1 += 1,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = deployer.deploy(v2.clone()).with_previous(v1).run().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, failed, by_version) = seen.lock().await.clone();
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(failed, 0, "{failed} of {sent} requests failed across the switch");
    assert!(
        by_version.get("1.0.0").copied().unwrap_or(0) > 0 && by_version.get("2.0.0").copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    let live = provider.describe(&Query::service("zd")).await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|i| i.release() == Some(v2.id())));
    let ids: Vec<_> = live.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_deployer_leaves_instances_a_new_deployer_can_describe() {
    let state_dir = support::state_dir("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_immut-local-deploy"))
        .args(["--state-dir", state_dir.to_str().unwrap(), "--artifact", support::sample_path(), "--version", "1.0.0"])
        .args(["--service", "killed", "--desired", "3", "--deployment-id", "d-killed"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut launched = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Event::Launched { ids, .. } = serde_json::from_str(&line.unwrap()).unwrap() {
            launched = ids;
            break;
        }
    }
    assert_eq!(launched.len(), 3, "the deployer reported its wave");
    child.kill().unwrap(); // SIGKILL: no cleanup, no goodbye
    child.wait().unwrap();

    let provider = LocalProvider::builder().state_dir(&state_dir).build().unwrap();
    let described = provider.describe(&Query::service("killed")).await.unwrap();
    let mut ids: Vec<_> = described.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    launched.sort();
    assert_eq!(ids, launched, "a new deployer sees exactly the instances the killed one launched");
    for i in &described {
        assert_eq!(i.state, immut_core::InstanceState::Running);
        assert_eq!(i.provenance.as_ref().unwrap().deployment.as_str(), "d-killed");
    }
    let by_token =
        provider.describe(&Query::token(described[0].provenance.as_ref().unwrap().token.clone())).await.unwrap();
    assert_eq!(by_token.len(), 3, "they can be adopted by their launch token");
    provider.terminate_all(&ids).await.unwrap();
    assert!(provider.describe(&Query::service("killed")).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unwritable_state_dir_is_named_before_anything_launches() {
    let e = LocalProvider::builder().state_dir("/proc/immut-cannot-write-here").build().unwrap_err();
    assert_eq!(e.kind(), immut_core::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("state_dir"), "{e}");
}

#[tokio::test]
async fn describe_reflects_reality_for_dead_and_hand_started_processes() {
    let (provider, _balancer) = support::local("reality").await;
    let release = support::release("real", Version::new(1, 0, 0), LaunchSpec::default());
    let request = immut_core::LaunchRequest::new(
        Arc::new(release),
        2,
        &immut_core::DeploymentId::new("d-real"),
        immut_core::LaunchToken::new("t-real"),
    );
    let launched = provider.launch(&request).await.unwrap();
    let (victim, survivor) = (&launched[0], &launched[1]);

    // Killed out of band: describe shows it terminated, not running.
    let record_path = provider.state_dir().join("instances").join(format!("{}.json", victim.id));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = provider.describe(&Query::service("real")).await.unwrap();
    assert_eq!(
        live.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&survivor.id],
        "the killed process must not be live"
    );
    let gone = provider.describe(&Query::ids([victim.id.clone()]).with_terminated()).await.unwrap();
    assert_eq!(gone[0].state, immut_core::InstanceState::Terminated);

    // A process started by hand is never managed, even when a record points at its pid (as a
    // reused pid would): the recorded start time does not match.
    let mut by_hand = Command::new(support::sample_path()).env("PORT", "0").spawn().unwrap();
    let mut forged = record.clone();
    forged["id"] = "real-forged".into();
    forged["pid"] = (by_hand.id() as i64).into();
    std::fs::write(record_path.with_file_name("real-forged.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let live = provider.describe(&Query::default()).await.unwrap();
    assert_eq!(live.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&survivor.id], "{live:?}");
    let _ = by_hand.kill();
    let _ = by_hand.wait();
    provider.terminate_all(std::slice::from_ref(&survivor.id)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_by_hand_is_adopted_as_release_zero_and_replaced() {
    use immut_core::{Adopt, DeploymentId, Provenance};
    let (provider, balancer) = support::local("adopt").await;
    // An executable of its own, so that no other test's processes look like this service's.
    let exe = provider.state_dir().join("legacy-server");
    std::fs::copy(support::sample_path(), &exe).unwrap();
    let artifact = immut_local::artifact("sample", Version::new(1, 0, 0), &exe).unwrap();
    let v1 = immut_core::Release::new(
        "legacy",
        &artifact,
        &immut_core::BaselineSpec::new("sample-base", Version::new(1, 0, 0), LaunchSpec::default()),
    )
    .unwrap();
    // One managed instance tells the provider which executable belongs to the service.
    let seed = immut_core::LaunchRequest::new(
        Arc::new(v1.clone()),
        1,
        &DeploymentId::new("d-seed"),
        immut_core::LaunchToken::new("t-seed"),
    );
    let seeded = provider.launch(&seed).await.unwrap();
    provider.terminate_all(&[seeded[0].id.clone()]).await.unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut by_hand = Command::new(&exe).env("PORT", port.to_string()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let unmanaged = provider.describe(&Query::service("legacy").with_unmanaged()).await.unwrap();
    assert_eq!(unmanaged.len(), 1, "{unmanaged:?}");
    assert!(unmanaged[0].provenance.is_none());
    assert_eq!(unmanaged[0].address.as_deref(), Some(format!("127.0.0.1:{port}").as_str()));

    let provenance = Provenance::adopted("legacy", &DeploymentId::new("adoption"));
    let adopted = provider.adopt(&[unmanaged[0].id.clone()], &provenance, None).await.unwrap();
    balancer.attach(&adopted).await.unwrap();
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(BlueGreen::new())
        .desired(2)
        .min_ready(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let outcome = deployer.deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(outcome.previous.as_ref().map(|r| r.as_str()), Some("r0"));
    let status = by_hand.wait().unwrap();
    assert!(status.success(), "the adopted server was stopped gracefully: {status}");
    let live = provider.describe(&Query::service("legacy").with_unmanaged()).await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.release() == Some(v1.id())));
    let ids: Vec<_> = live.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_after_the_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::state_dir("stubborn");
    let provider = LocalProvider::builder().state_dir(&dir).term_timeout(Duration::from_millis(500)).build().unwrap();
    let script = dir.join("stubborn.sh");
    std::fs::write(&script, "#!/bin/sh\ntrap '' TERM\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let artifact = immut_local::artifact("stubborn", Version::new(1, 0, 0), &script).unwrap();
    let release = immut_core::Release::new(
        "stubborn",
        &artifact,
        &immut_core::BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()),
    )
    .unwrap();
    let request = immut_core::LaunchRequest::new(
        Arc::new(release),
        1,
        &immut_core::DeploymentId::new("d"),
        immut_core::LaunchToken::new("t"),
    );
    let id = provider.launch(&request).await.unwrap()[0].id.clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    provider.terminate(std::slice::from_ref(&id)).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "SIGTERM was ignored, so SIGKILL came after the timeout ({took:?})");
    let gone = provider.describe(&Query::ids([id.clone()]).with_terminated()).await.unwrap();
    assert_eq!(gone[0].state, immut_core::InstanceState::Terminated);
    provider.terminate(std::slice::from_ref(&id)).await.unwrap();
}
