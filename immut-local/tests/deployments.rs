//! Deployments on real processes: zero failed requests across a blue/green switch under load,
//! a deployer killed mid-run leaving instances a new deployer can describe, an orphan reaper
//! that never touches a live deployment, and records that live only as long as their process.

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
    let _stop = support::stop_on_drop(provider.state_dir());
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
    let served_by = |version: &'static str| {
        let seen = seen.clone();
        async move { seen.lock().await.2.get(version).copied().unwrap_or(0) }
    };
    support::eventually("requests served by 1.0.0 before the deployment", Duration::from_secs(10), || async {
        (served_by("1.0.0").await >= 20).then_some(())
    })
    .await;
    let outcome = deployer.deploy(v2.clone()).with_previous(v1).run().await;
    let at_end = served_by("2.0.0").await;
    support::eventually("requests served by 2.0.0 after the deployment", Duration::from_secs(10), || async {
        (served_by("2.0.0").await >= at_end + 20).then_some(())
    })
    .await;
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
    let _stop = support::stop_on_drop(&state_dir);
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
    let _stop = support::stop_on_drop(provider.state_dir());
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
    let live = support::eventually("the killed process to be seen dead", Duration::from_secs(10), || async {
        let live = provider.describe(&Query::service("real")).await.unwrap();
        (!live.iter().any(|i| i.id == victim.id)).then_some(live)
    })
    .await;
    assert_eq!(
        live.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&survivor.id],
        "the killed process must not be live"
    );
    let gone = provider.describe(&Query::ids([victim.id.clone()]).with_terminated()).await.unwrap();
    assert_eq!(gone[0].state, immut_core::InstanceState::Terminated);

    // A process started by hand is never managed, even when a record points at its pid (as a
    // reused pid would): the recorded start time does not match.
    let by_hand = support::HandStarted(Command::new(support::sample_path()).env("PORT", "0").spawn().unwrap());
    let mut forged = record.clone();
    forged["id"] = "real-forged".into();
    forged["pid"] = (by_hand.0.id() as i64).into();
    std::fs::write(record_path.with_file_name("real-forged.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let live = provider.describe(&Query::default()).await.unwrap();
    assert_eq!(live.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&survivor.id], "{live:?}");
    drop(by_hand);
    provider.terminate_all(std::slice::from_ref(&survivor.id)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_by_hand_is_adopted_as_release_zero_and_replaced() {
    use immut_core::{Adopt, DeploymentId, Provenance};
    let (provider, balancer) = support::local("adopt").await;
    let _stop = support::stop_on_drop(provider.state_dir());
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

    assert!(support::records(provider.state_dir()).is_empty(), "the terminated seed left its record");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut by_hand = support::HandStarted(Command::new(&exe).env("PORT", port.to_string()).spawn().unwrap());
    // Adopted, it serves at once: it must listen before it is attached.
    support::eventually("the hand-started server to listen", Duration::from_secs(10), || async {
        support::listening(port).await.then_some(())
    })
    .await;
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
    let status = support::eventually("the adopted server to exit", Duration::from_secs(10), || {
        let exited = by_hand.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(status.success(), "the adopted server was stopped gracefully: {status}");
    let live = provider.describe(&Query::service("legacy").with_unmanaged()).await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.release() == Some(v1.id())));
    let ids: Vec<_> = live.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    assert!(support::records(provider.state_dir()).is_empty(), "terminated instances left records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_after_the_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::state_dir("stubborn");
    let _stop = support::stop_on_drop(&dir);
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
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("instances").join(format!("{id}.json"))).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap();
    // The script is ready once its trap is in place: the kernel then lists SIGTERM as ignored.
    support::eventually("the script to ignore SIGTERM", Duration::from_secs(10), || async {
        ignores_sigterm(pid).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    provider.terminate(std::slice::from_ref(&id)).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "SIGTERM was ignored, so SIGKILL came after the timeout ({took:?})");
    assert!(!immut_core::process::is_alive(pid as i32, record["start_ticks"].as_u64()), "SIGKILL stopped it");
    assert!(provider.describe(&Query::ids([id.clone()]).with_terminated()).await.unwrap().is_empty());
    assert!(support::records(&dir).is_empty(), "the terminated instance left its record");
    provider.terminate(std::slice::from_ref(&id)).await.unwrap();
}

/// Whether the kernel lists SIGTERM among the signals `pid` ignores.
fn ignores_sigterm(pid: i64) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(str::trim);
    ignored.and_then(|mask| u64::from_str_radix(mask, 16).ok()).is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_instances_leave_no_record_behind() {
    use immut_core::{DeploymentId, InstanceState, LaunchRequest, LaunchToken};
    let (provider, _balancer) = support::local("records").await;
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    let release = Arc::new(support::release("records", Version::new(1, 0, 0), LaunchSpec::default()));
    let request = |token: &str, count| {
        LaunchRequest::new(release.clone(), count, &DeploymentId::new("d-records"), LaunchToken::new(token))
    };

    let mut terminated = Vec::new();
    for round in 0..4 {
        let ids: Vec<_> =
            provider.launch(&request(&format!("t-{round}"), 3)).await.unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(support::records(&dir).len(), 3, "round {round}: one record per live instance");
        provider.terminate(&ids).await.unwrap();
        assert!(support::records(&dir).is_empty(), "round {round}: records kept: {:?}", support::records(&dir));
        terminated.extend(ids);
    }
    let remembered = provider.describe(&Query::ids(terminated.clone()).with_terminated()).await.unwrap();
    assert!(remembered.is_empty(), "{remembered:?}");
    provider.terminate(&terminated).await.unwrap();

    // A terminate that died between its signal and the deletion leaves a record marked as
    // terminating: the first describe that finds the process gone deletes it.
    let half = provider.launch(&request("t-half", 1)).await.unwrap().remove(0);
    let path = dir.join("instances").join(format!("{}.json", half.id));
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["terminated"] = true.into();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let by_id = Query::ids([half.id.clone()]).with_terminated();
    let terminating = provider.describe(&by_id).await.unwrap();
    assert_eq!(terminating[0].state, InstanceState::Terminating, "its process still runs");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record["pid"].as_i64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    support::eventually("the half-terminated record to go", Duration::from_secs(10), || async {
        let seen = provider.describe(&by_id).await.unwrap();
        assert!(seen.iter().all(|i| !i.state.is_live()), "{seen:?}");
        support::records(&dir).is_empty().then_some(())
    })
    .await;

    // A process that died on its own stays described as terminated for a while (its record
    // tells what crashed), then its record goes too.
    let crashed = provider.launch(&request("t-crashed", 1)).await.unwrap().remove(0);
    let path = dir.join("instances").join(format!("{}.json", crashed.id));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record["pid"].as_i64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let by_id = Query::ids([crashed.id.clone()]).with_terminated();
    support::eventually("the crashed process to be seen dead", Duration::from_secs(10), || async {
        let seen = provider.describe(&by_id).await.unwrap();
        (seen.len() == 1 && seen[0].state == InstanceState::Terminated).then_some(())
    })
    .await;
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(record["gone_at_ms"].as_u64().is_some(), "describe noted when it found the process gone: {record}");
    assert_eq!(provider.describe(&by_id).await.unwrap()[0].state, InstanceState::Terminated, "still remembered");
    record["gone_at_ms"] = 0.into(); // long ago
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    provider.describe(&Query::default()).await.unwrap();
    assert!(support::records(&dir).is_empty(), "an old crash keeps its record: {:?}", support::records(&dir));
}

/// The README's reaper, `Audit::new(..).journal(&journal).reap(&serving_release, true)`, run
/// over and over while a blue/green deployment journaled to files runs. The journal's lock says
/// which deployment runs, so its launched but not yet attached instances are never orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reaper_never_touches_a_live_deployment_journaled_to_files() {
    use immut_core::audit::Audit;
    use immut_core::journal::FileJournal;
    use immut_core::{InstanceId, LaunchRequest, LaunchToken};
    use std::collections::BTreeSet;

    let (provider, balancer) = support::local("reaper").await;
    let _stop = support::stop_on_drop(provider.state_dir());
    let journal_dir = provider.state_dir().join("journal");
    let v1 = support::release("reaped", Version::new(1, 0, 0), LaunchSpec::default());
    let v2 = support::release("reaped", Version::new(2, 0, 0), LaunchSpec::default());
    // min_ready and the bake keep the new instances unattached, then the old ones detached,
    // for a second each: passes of the reaper land in both windows.
    let deployer = Deployer::builder()
        .provider(provider.clone())
        .traffic(balancer.clone())
        .health(HttpProbe::new("/healthz"))
        .strategy(BlueGreen::new().bake(Duration::from_secs(1)))
        .desired(2)
        .min_ready(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .progress_deadline(Duration::from_secs(30))
        .journal(FileJournal::open(&journal_dir).unwrap())
        .build()
        .unwrap();
    let first = deployer.deploy(v1.clone()).run().await;
    assert!(first.succeeded(), "{}", first.summary());

    #[derive(Default)]
    struct Seen {
        passes: usize,
        reaped: BTreeSet<InstanceId>,
        errors: Vec<String>,
        /// What a reaper without the journal would have called orphaned (it terminates nothing).
        blind: BTreeSet<InstanceId>,
    }
    let deployment = deployer.deploy(v2.clone()).with_previous(v1.clone());
    let cancel = deployment.cancel_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let reaper = tokio::spawn({
        let (provider, balancer, v1, stop) = (provider.clone(), balancer.clone(), v1.clone(), stop.clone());
        async move {
            // Its own handle on the journal files, as the reaper's own process would have.
            let journal = FileJournal::open(&journal_dir).unwrap();
            let mut seen = Seen::default();
            while !stop.load(Ordering::SeqCst) {
                match Audit::new(&provider, &balancer).journal(&journal).reap(&v1, true).await {
                    // End the deployment at the first casualty: the test then fails at once
                    // instead of watching the engine replace what is killed under it.
                    Ok(orphans) if !orphans.is_empty() => {
                        seen.reaped.extend(orphans.into_iter().map(|f| f.id));
                        cancel.cancel();
                        break;
                    }
                    Ok(_) => {}
                    // A lock file caught mid-write is retryable; nothing was terminated.
                    Err(e) if e.is_retryable() => seen.errors.push(e.to_string()),
                    Err(e) => panic!("the reaper failed: {e}"),
                }
                let blind = Audit::new(&provider, &balancer).reap(&v1, false).await.unwrap();
                seen.blind.extend(blind.into_iter().map(|f| f.id));
                seen.passes += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }
    });

    let mut launched = BTreeSet::new();
    let mut terminated_by_engine = BTreeSet::new();
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        deployment.run_with(|event| match event {
            Event::Launched { ids, .. } => launched.extend(ids.iter().cloned()),
            Event::Terminated { ids } => terminated_by_engine.extend(ids.iter().cloned()),
            _ => {}
        }),
    )
    .await
    .expect("the deployment ended");
    stop.store(true, Ordering::SeqCst);
    let seen = reaper.await.unwrap();
    println!("reaper: {} passes, {} retryable errors {:?}", seen.passes, seen.errors.len(), seen.errors);

    assert!(
        seen.reaped.is_empty(),
        "the reaper terminated {:?} (launched by the deployment: {launched:?})",
        seen.reaped
    );
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(
        launched.iter().any(|id| seen.blind.contains(id)),
        "no reaper pass saw the new instances unattached, so the test proved nothing (passes: {})",
        seen.passes
    );
    assert!(launched.is_disjoint(&terminated_by_engine), "the engine terminated its own {terminated_by_engine:?}");
    let live = provider.describe(&Query::service("reaped")).await.unwrap();
    let live_ids: BTreeSet<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
    let serving: BTreeSet<InstanceId> = balancer.serving().await.unwrap().into_iter().collect();
    assert_eq!(live_ids, launched, "every instance the deployment launched still runs");
    assert_eq!(serving, launched, "and serves");
    assert!(live.iter().all(|i| i.release() == Some(v2.id())));
    assert_eq!(terminated_by_engine.len(), 2, "the engine replaced the two old instances: {terminated_by_engine:?}");

    // With no deployment running, a real orphan (an instance of the old release that a
    // crashed deployment left unattached) is reaped: the reaper above was armed.
    let stray = provider
        .launch(&LaunchRequest::new(
            Arc::new(v1.clone()),
            1,
            &immut_core::DeploymentId::new("d-crashed"),
            LaunchToken::new("t-stray"),
        ))
        .await
        .unwrap();
    let journal = FileJournal::open(provider.state_dir().join("journal")).unwrap();
    let reaped = Audit::new(&provider, &balancer).journal(&journal).reap(&v2, true).await.unwrap();
    assert_eq!(reaped.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&stray[0].id]);
    assert!(provider.describe(&Query::ids([stray[0].id.clone()])).await.unwrap().is_empty(), "the orphan was reaped");

    let ids: Vec<_> = live_ids.into_iter().collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    assert!(support::records(provider.state_dir()).is_empty());
}
