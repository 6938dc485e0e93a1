//! Deployments on real processes: zero failed requests across a blue/green switch under load,
//! an orphan reaper that never touches a live deployment, and records that live only as long
//! as their process. (The tests that run the `immut` command are in immut-cli/tests.)

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use immut_core::engine::Event;
use immut_core::health::HttpProbe;
use immut_core::semver::Version;
use immut_core::{BlueGreen, Deployer, LaunchSpec, Provider, ProviderExt, Query, Traffic};
use immut_local::LocalProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switch_under_mixed_keep_alive_load_fails_no_request() {
    let (provider, balancer) = support::local("zero-downtime", "zd").await;
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

    // 8 clients, 4 of them on keep-alive connections that outlive every backend they reach.
    let live = Arc::new(support::Live::default());
    let load = support::Load::start(balancer.addr(), 8, live.clone());
    support::eventually("requests served by 1.0.0 before the deployment", Duration::from_secs(10), || async {
        (live.served_by("1.0.0") >= 50).then_some(())
    })
    .await;
    let outcome = deployer.deploy(v2.clone()).with_previous(v1).run().await;
    let at_end = live.served_by("2.0.0");
    support::eventually("requests served by 2.0.0 after the deployment", Duration::from_secs(10), || async {
        (live.served_by("2.0.0") >= at_end + 50).then_some(())
    })
    .await;
    let seen = load.stop().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(seen.failed, 0, "{} of {} requests failed across the switch: {:?}", seen.failed, seen.sent, seen.errors);
    assert!(seen.served_by("1.0.0") > 0 && seen.served_by("2.0.0") > 0, "{:?}", seen.by_version);
    let status = balancer.status().await.unwrap();
    assert_eq!(status.failed, 0, "the balancer answered errors itself: {status:?}");
    let live_instances = provider.describe(&Query::service("zd")).await.unwrap();
    assert_eq!(live_instances.len(), 3);
    assert!(live_instances.iter().all(|i| i.release() == Some(v2.id())));
    let ids: Vec<_> = live_instances.into_iter().map(|i| i.id).collect();
    balancer.detach(&ids).await.unwrap();
    provider.terminate_all(&ids).await.unwrap();
    balancer.stop().await.unwrap();
    assert!(support::balancers_from(provider.state_dir()).is_empty(), "the balancer process is gone");
}

#[tokio::test]
async fn an_unwritable_state_dir_is_named_before_anything_launches() {
    let e = LocalProvider::builder().state_dir("/proc/immut-cannot-write-here").build().unwrap_err();
    assert_eq!(e.kind(), immut_core::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("state_dir"), "{e}");
}

#[tokio::test]
async fn describe_reflects_reality_for_dead_and_hand_started_processes() {
    let provider = support::provider("reality");
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
    let (provider, balancer) = support::local("adopt", "legacy").await;
    let _stop = support::stop_on_drop(provider.state_dir());
    // An executable of its own, so that no other test's processes look like this service's.
    let exe = provider.state_dir().join("legacy-server");
    std::fs::copy(support::sample_path(), &exe).unwrap();
    // Copies are recognised by content: a few bytes more make this one no other test's.
    std::fs::OpenOptions::new().append(true).open(&exe).unwrap().write_all(b"legacy").unwrap();
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
    let provider = support::provider("records");
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

    let (provider, balancer) = support::local("reaper", "reaped").await;
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

/// Sends one raw request on a balancer's control socket, as any local program could.
async fn control(dir: &std::path::Path, service: &str, request: serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let socket = dir.join("balancers").join(service).join("control.sock");
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::BufReader::new(stream).read_line(&mut answer).await.unwrap();
    serde_json::from_str(&answer).unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Launches `count` sample instances of `service` and waits until they listen.
async fn launch_sample(provider: &LocalProvider, service: &str, count: usize) -> Vec<immut_core::Instance> {
    let release = Arc::new(support::release(service, Version::new(1, 0, 0), LaunchSpec::default()));
    let request = immut_core::LaunchRequest::new(
        release,
        count,
        &immut_core::DeploymentId::new(format!("d-{service}")),
        immut_core::LaunchToken::new(format!("t-{service}")),
    );
    let launched = provider.launch(&request).await.unwrap();
    for i in &launched {
        let port: u16 = i.address.as_deref().unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
        support::eventually("the instance to listen", Duration::from_secs(10), || async move {
            support::listening(port).await.then_some(())
        })
        .await;
    }
    launched
}

/// One balancer process per service, with state of its own; a second handle finds the same
/// process; its control socket is its owner's only and refuses requests for another service;
/// a balancer killed out of band comes back on the next call, on its address, with its set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_has_a_balancer_process_of_its_own() {
    let provider = support::provider("balancers");
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    let alpha = support::balancer(&provider, "alpha").await;
    let beta = support::balancer(&provider, "beta").await;
    assert_ne!(alpha.pid(), beta.pid());
    assert_ne!(alpha.addr(), beta.addr());
    assert_ne!(alpha.pid(), std::process::id() as i32, "a process of its own");
    let again = support::balancer(&provider, "alpha").await;
    assert_eq!((again.pid(), again.addr()), (alpha.pid(), alpha.addr()), "a second deployer finds the same one");
    // Deployers that start a service's balancer at the same moment start one between them.
    let racing: Vec<_> = (0..4)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { support::balancer(&provider, "gamma").await })
        })
        .collect();
    let mut gammas = Vec::new();
    for r in racing {
        gammas.push(r.await.unwrap());
    }
    assert!(gammas.iter().all(|g| (g.pid(), g.addr()) == (gammas[0].pid(), gammas[0].addr())), "one gamma balancer");
    gammas[0].stop().await.unwrap();
    assert_eq!(support::balancers_from(&dir).len(), 2);
    assert_eq!(mode(&dir.join("balancers/alpha")), 0o700);
    assert_eq!(mode(&dir.join("balancers/alpha/control.sock")), 0o600);

    let refused = control(&dir, "alpha", serde_json::json!({"service": "beta", "op": "status"})).await;
    assert_eq!(refused["ok"], false);
    assert!(refused["error"].as_str().unwrap().contains("refused"), "{refused}");
    let garbage = control(&dir, "alpha", serde_json::json!({"op": "stop"})).await;
    assert_eq!(garbage["ok"], false, "a request that names no service is refused: {garbage}");

    let launched = launch_sample(&provider, "alpha", 1).await;
    alpha.attach(&launched).await.unwrap();
    assert_eq!(alpha.serving().await.unwrap(), vec![launched[0].id.clone()]);
    assert!(beta.serving().await.unwrap().is_empty(), "balancers of different services share nothing");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = http.get(format!("http://{}/", alpha.addr())).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(launched[0].id.as_str()), "{body}");
    let empty = http.get(format!("http://{}/", beta.addr())).send().await.unwrap();
    assert_eq!(empty.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE, "no backend: the balancer says so");

    let old_pid = alpha.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    support::eventually("the killed balancer to be gone", Duration::from_secs(10), || async {
        (!support::balancers_from(&dir).contains(&old_pid)).then_some(())
    })
    .await;
    // The first call after the kill may meet the dying balancer's socket: that is Unavailable,
    // which callers (the engine) retry; the next call starts a new balancer.
    let serving = support::eventually("the restarted balancer to answer", Duration::from_secs(10), || async {
        match alpha.serving().await {
            Ok(serving) => Some(serving),
            Err(e) => {
                assert!(e.is_retryable(), "a dead balancer is a retryable error: {e}");
                None
            }
        }
    })
    .await;
    assert_eq!(serving, vec![launched[0].id.clone()], "restarted with its serving set");
    let restarted = immut_local::LocalBalancer::find(&dir, "alpha").unwrap().unwrap();
    assert!(restarted.running && restarted.pid != Some(old_pid));
    assert_eq!(restarted.address, alpha.addr(), "on the same address");

    alpha.detach(&[launched[0].id.clone()]).await.unwrap();
    provider.terminate_all(&[launched[0].id.clone()]).await.unwrap();
    alpha.stop().await.unwrap();
    beta.stop().await.unwrap();
    assert!(alpha.serving().await.is_err(), "a stopped balancer is not started again by its handle");
    assert!(support::balancers_from(&dir).is_empty());
}

/// The HTTP balancer keeps a client's keep-alive connection through every change of the
/// serving set, and retries on another backend a request that a backend refused or closed
/// without answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_never_closes_a_client_connection_and_unanswered_requests_are_retried() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let (provider, balancer) = support::local("keep-alive", "ka").await;
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    let launched = launch_sample(&provider, "ka", 2).await;
    balancer.attach(&launched).await.unwrap();

    // One client connection, kept alive for the whole test.
    let stream = tokio::net::TcpStream::connect(balancer.addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut get = async move |n: usize| -> Vec<String> {
        let mut bodies = Vec::new();
        for _ in 0..n {
            sender.ready().await.expect("the client connection is still open");
            let request = hyper::Request::get("/").header("host", "ka").body(Empty::new()).unwrap();
            let response = sender.send_request(request).await.expect("an answer on the same connection");
            assert!(response.status().is_success(), "{}", response.status());
            bodies.push(String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap());
        }
        bodies
    };
    let served_by =
        |bodies: &[String], id: &immut_core::InstanceId| bodies.iter().filter(|b| b.contains(id.as_str())).count();
    let bodies = get(10).await;
    assert!(served_by(&bodies, &launched[0].id) > 0 && served_by(&bodies, &launched[1].id) > 0, "{bodies:?}");

    // Detached and then stopped (it closes its idle connections on SIGTERM): the client's
    // connection stays, and goes on to the other backend.
    balancer.detach(&[launched[0].id.clone()]).await.unwrap();
    provider.terminate_all(&[launched[0].id.clone()]).await.unwrap();
    let bodies = get(10).await;
    assert_eq!(served_by(&bodies, &launched[1].id), 10, "{bodies:?}");

    // Backends that refuse, or accept and close without a byte of answer, attached behind the
    // client's back through the control socket.
    let closing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closing_addr = closing.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in closing.incoming() {
            drop(stream);
        }
    });
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let attached = control(
        &dir,
        "ka",
        serde_json::json!({"service": "ka", "op": "attach", "backends": [["closing", closing_addr], ["refusing", refusing]]}),
    )
    .await;
    assert_eq!(attached["ok"], true, "{attached}");
    let before = balancer.status().await.unwrap();
    let bodies = get(30).await;
    assert_eq!(served_by(&bodies, &launched[1].id), 30, "every request answered by the one real backend");
    let after = balancer.status().await.unwrap();
    assert!(after.retried >= before.retried + 20, "retried on another backend: {before:?} -> {after:?}");
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(!connection.is_finished(), "the client connection was never closed");

    balancer.detach(&[launched[1].id.clone()]).await.unwrap();
    provider.terminate_all(&[launched[1].id.clone()]).await.unwrap();
    balancer.stop().await.unwrap();
}

/// Signals go to the whole process group of an instance (a wrapper script's children too),
/// and a script artifact is audited by the script's own digest, not its interpreter's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_process_group_and_scripts_are_audited_by_their_own_digest() {
    use immut_core::audit::{Audit, Verdict};
    use std::os::unix::fs::PermissionsExt;
    let provider = support::provider("groups");
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    let script = dir.join("wrapper.sh");
    std::fs::write(&script, "#!/bin/sh\nsleep 600 &\nwait\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let artifact = immut_local::artifact("wrapper", Version::new(1, 0, 0), &script).unwrap();
    let release = immut_core::Release::new(
        "wrapped",
        &artifact,
        &immut_core::BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()),
    )
    .unwrap();
    let request = immut_core::LaunchRequest::new(
        Arc::new(release.clone()),
        1,
        &immut_core::DeploymentId::new("d-wrapped"),
        immut_core::LaunchToken::new("t-wrapped"),
    );
    let id = provider.launch(&request).await.unwrap()[0].id.clone();
    let pids = support::eventually("the wrapper and its child", Duration::from_secs(10), || async {
        support::processes_from(&dir).get(id.as_str()).filter(|p| p.len() >= 2).cloned()
    })
    .await;

    let balancer = support::balancer(&provider, "wrapped").await;
    let audit = Audit::new(&provider, &balancer);
    let report = audit.run(&release).await.unwrap();
    let verdict = &report.findings.iter().find(|f| f.id == id).unwrap().verdict;
    assert!(matches!(verdict, Verdict::Ok), "the script, not /bin/sh, is what is audited: {verdict:?}");
    std::fs::OpenOptions::new().append(true).open(&script).unwrap().write_all(b"# edited in place\n").unwrap();
    let report = audit.run(&release).await.unwrap();
    let verdict = &report.findings.iter().find(|f| f.id == id).unwrap().verdict;
    assert!(matches!(verdict, Verdict::WrongArtifact { .. }), "an edited script is not the artifact: {verdict:?}");

    provider.terminate(std::slice::from_ref(&id)).await.unwrap();
    assert!(support::processes_from(&dir).is_empty(), "the child {pids:?} of the wrapper went with it");
    balancer.stop().await.unwrap();
}

/// A copy of the service's executable started by hand from another path is unmanaged, like
/// one started from the artifact's own path: it is recognised by its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_started_by_hand_from_another_path_is_unmanaged() {
    let provider = support::provider("copies");
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    let managed = launch_sample(&provider, "copies", 1).await;
    let copy = dir.join("elsewhere").join("renamed-server");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(support::sample_path(), &copy).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let by_hand =
        support::HandStarted(Command::new(&copy).env("PORT", port.to_string()).stderr(Stdio::null()).spawn().unwrap());
    let prefix = format!("pid-{}-", by_hand.0.id());
    let found = support::eventually("the copy to show as unmanaged", Duration::from_secs(10), || async {
        let all = provider.describe(&Query::service("copies").with_unmanaged()).await.unwrap();
        all.into_iter().find(|i| i.id.as_str().starts_with(&prefix))
    })
    .await;
    assert!(found.provenance.is_none());
    assert_eq!(found.address.as_deref(), Some(format!("127.0.0.1:{port}").as_str()));
    assert_eq!(found.observed.image.as_deref(), Some(copy.display().to_string().as_str()));
    drop(by_hand);
    provider.terminate_all(&[managed[0].id.clone()]).await.unwrap();
}

/// The last resort of a failing program (the examples' `Drop` guard): everything launched
/// from the state directory, and its balancers, killed at once by pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_now_leaves_nothing_running() {
    let (provider, _balancer) = support::local("kill-all", "doomed").await;
    let dir = provider.state_dir().to_owned();
    let _stop = support::stop_on_drop(&dir);
    launch_sample(&provider, "doomed", 2).await;
    assert_eq!((support::processes_from(&dir).len(), support::balancers_from(&dir).len()), (2, 1));
    assert_eq!(provider.kill_all_now(), 3);
    support::eventually("everything to be gone", Duration::from_secs(10), || async {
        (support::processes_from(&dir).is_empty() && support::balancers_from(&dir).is_empty()).then_some(())
    })
    .await;
    assert!(provider.describe(&Query::service("doomed")).await.unwrap().is_empty(), "describe sees them gone");
}
