//! What the local examples share: setting up the local provider, a load generator, readable
//! progress lines from the engine's events, and the summary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use immut::engine::Outcome;
use immut::health::HttpProbe;
use immut::local::{LocalBalancer, LocalProvider, sample};
use immut::prelude::*;
use immut::strategy::ReplacementStrategy;
use immut::{BaselineSpec, InstanceId};
use tokio::sync::Mutex;

#[path = "../progress/mod.rs"]
mod progress;
pub use progress::Printer;

/// The progress deadline of the examples' deployers; the balancer's drain timeout must fit in it.
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(15);
/// How long a detach waits for the detached instances' in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The local provider, its balancer and the releases of the sample service.
///
/// The balancer is a process of its own (this executable, started again with a hidden flag),
/// which outlives the example when it is run with `--keep`. Whatever happens, dropping the demo
/// without `--keep` kills what it started, by pid: its instances and its balancer.
pub struct Demo {
    pub name: &'static str,
    pub provider: LocalProvider,
    pub balancer: LocalBalancer,
    pub service: &'static str,
    artifact_path: std::path::PathBuf,
    keep: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.keep {
            // After `finish` nothing is left and this finds nothing; on a failure path it
            // stops what the example started.
            let killed = self.provider.kill_all_now();
            if killed > 0 {
                eprintln!("stopped {killed} processes left by a failed run (instances and balancer, by pid)");
            }
        }
    }
}

impl Demo {
    /// State in `.immut/<name>`; anything a previous interrupted run left is cleaned first. The
    /// balancer of a previous `--keep` run is found and reused, on its address.
    pub async fn start(name: &'static str) -> immut::Result<Demo> {
        let provider = LocalProvider::builder().state_dir(format!(".immut/{name}")).build()?;
        let balancer = provider.balancer("web").drain_timeout(DRAIN_TIMEOUT).build().await?;
        if balancer.drain_timeout() >= PROGRESS_DEADLINE {
            return Err(immut::Error::invalid(
                "drain_timeout",
                format!("{DRAIN_TIMEOUT:?} does not fit in the progress deadline ({PROGRESS_DEADLINE:?})"),
            ));
        }
        let demo = Demo {
            name,
            provider,
            balancer,
            service: "web",
            // This very executable is the artifact: launched with the sample flag, it serves.
            artifact_path: std::env::current_exe().expect("the example knows its own path"),
            keep: std::env::args().any(|a| a == "--keep"),
        };
        let leftovers = demo.live().await?;
        if !leftovers.is_empty() {
            println!("cleaning up {} instances left by a previous run", leftovers.len());
            demo.cleanup().await?;
        }
        println!(
            "balancer listening on http://{} (pid {}, a process of its own; log {})",
            demo.balancer.addr(),
            demo.balancer.pid(),
            demo.balancer.log_path().display()
        );
        Ok(demo)
    }

    /// A release of the sample service. `healthy: false` makes `/healthz` fail.
    pub fn release(&self, version: Version, healthy: bool) -> immut::Result<Release> {
        let artifact = immut::local::artifact("sample", version, &self.artifact_path)?;
        let mut spec = LaunchSpec { args: vec![sample::SAMPLE_FLAG.into()], ..LaunchSpec::default() };
        if !healthy {
            spec.env.insert(sample::FAIL_HEALTH.into(), "1".into());
        }
        let baseline = BaselineSpec::new(if healthy { "sample" } else { "sample-broken" }, Version::new(1, 0, 0), spec);
        Release::new(self.service, &artifact, &baseline)
    }

    /// A release of the sample service whose baseline sets these variables (a fault setting
    /// such as `SAMPLE_ERROR_SHARE` is part of the release).
    pub fn release_with_env(&self, version: Version, baseline: &str, env: &[(&str, &str)]) -> immut::Result<Release> {
        let artifact = immut::local::artifact("sample", version, &self.artifact_path)?;
        let mut spec = LaunchSpec { args: vec![sample::SAMPLE_FLAG.into()], ..LaunchSpec::default() };
        spec.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Release::new(self.service, &artifact, &BaselineSpec::new(baseline, Version::new(1, 0, 0), spec))
    }

    /// A deployer of `desired` instances with `strategy`, probing `/healthz`.
    pub fn deployer(&self, desired: usize, strategy: impl ReplacementStrategy + 'static) -> immut::Result<Deployer> {
        self.builder(desired, strategy).build()
    }

    /// The builder behind [`Demo::deployer`], for examples that add to it.
    pub fn builder(&self, desired: usize, strategy: impl ReplacementStrategy + 'static) -> immut::DeployerBuilder {
        Deployer::builder()
            .provider(self.provider.clone())
            .traffic(self.balancer.clone())
            .health(HttpProbe::with_timeout("/healthz", Duration::from_millis(500)))
            .strategy(strategy)
            .desired(desired)
            .min_ready(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(200))
            .progress_deadline(PROGRESS_DEADLINE)
    }

    /// Runs a deployment, printing its progress; Ctrl-C cancels it (and it rolls back).
    pub async fn deploy(&self, deployer: &Deployer, release: Release, previous: Option<Release>) -> Outcome {
        let mut deployment = deployer.deploy(release);
        if let Some(previous) = previous {
            deployment = deployment.with_previous(previous);
        }
        let cancel = deployment.cancel_handle();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                println!("\ninterrupted: cancelling, the deployment rolls back");
                cancel.cancel();
            }
        });
        let mut printer = Printer::default();
        let outcome = deployment.run_with(|e| printer.print(e)).await;
        ctrl_c.abort();
        outcome
    }

    /// Live instances of the service.
    pub async fn live(&self) -> immut::Result<Vec<immut::Instance>> {
        self.provider.describe(&Query::service(self.service)).await
    }

    /// Checks every live instance serves and belongs to `release`: no orphans.
    pub async fn orphans(&self, release: &Release) -> immut::Result<Vec<InstanceId>> {
        let serving = self.balancer.serving().await?;
        Ok(self
            .live()
            .await?
            .into_iter()
            .filter(|i| i.release() != Some(release.id()) || !serving.contains(&i.id))
            .map(|i| i.id)
            .collect())
    }

    /// Detaches and terminates every instance of the service.
    pub async fn cleanup(&self) -> immut::Result<usize> {
        let ids: Vec<InstanceId> = self.live().await?.into_iter().map(|i| i.id).collect();
        // Everything the balancer serves, not only what runs: an entry left by an earlier run
        // that was killed would otherwise be restored by the next balancer, and counted.
        let mut serving = self.balancer.serving().await?;
        serving.extend(ids.iter().cloned());
        serving.sort();
        serving.dedup();
        self.balancer.detach(&serving).await?;
        self.provider.terminate_all(&ids).await?;
        Ok(ids.len())
    }

    /// Cleans up unless `--keep` was given (instances, then the balancer process), and says
    /// what was left.
    pub async fn finish(&self) -> immut::Result<()> {
        if self.keep {
            println!(
                "--keep: instances and the balancer (pid {}, http://{}) left running; state in .immut/{}",
                self.balancer.pid(),
                self.balancer.addr(),
                self.name
            );
        } else {
            let n = self.cleanup().await?;
            self.balancer.stop().await?;
            println!("cleaned up {n} instances and stopped the balancer");
        }
        Ok(())
    }
}

/// Requests sent through the balancer by concurrent clients: half of them keep their
/// connection alive across requests (as most HTTP clients do), half open a new connection for
/// each. Every error a client sees counts as a failure: a refused or reset connection, an
/// answer cut short, a non-2xx status.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load generator saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub clients: usize,
    pub keep_alive_clients: usize,
    pub sent: u64,
    pub failed: u64,
    pub by_version: BTreeMap<String, u64>,
    pub first_errors: Vec<String>,
}

impl Load {
    /// `clients` clients against `addr`; the first half use keep-alive connections.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let keep_alive_clients = clients / 2;
        let stats = Arc::new(Mutex::new(Stats { clients, keep_alive_clients, ..Stats::default() }));
        let workers = (0..clients)
            .map(|n| {
                let keep_alive = n < keep_alive_clients;
                let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy();
                if !keep_alive {
                    builder = builder.pool_max_idle_per_host(0);
                }
                let http = builder.build().expect("client builds");
                let (stop, stats) = (stop.clone(), stats.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let result = async {
                            let r = http.get(format!("http://{addr}/")).send().await?.error_for_status()?;
                            r.text().await
                        }
                        .await;
                        let mut s = stats.lock().await;
                        s.sent += 1;
                        match result {
                            Ok(body) => {
                                let version = body.split_whitespace().nth(1).unwrap_or("?").to_owned();
                                *s.by_version.entry(version).or_default() += 1;
                            }
                            Err(e) => {
                                s.failed += 1;
                                if s.first_errors.len() < 5 {
                                    let mut text = e.to_string();
                                    let mut source = std::error::Error::source(&e);
                                    while let Some(cause) = source {
                                        text.push_str(&format!(": {cause}"));
                                        source = cause.source();
                                    }
                                    let kind = if keep_alive { "keep-alive" } else { "new connection" };
                                    s.first_errors.push(format!("{kind} client: {text}"));
                                }
                            }
                        }
                        drop(s);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, stats, workers }
    }

    pub async fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        self.stats.lock().await.clone()
    }
}

/// What an upgrade under load saw.
pub struct Upgrade {
    pub outcome: Outcome,
    pub stats: Stats,
    pub orphans: Vec<InstanceId>,
}

impl Demo {
    /// Deploys `from` (a first deployment), then `to` over it while 8 clients (4 of them on
    /// keep-alive connections) send requests through the balancer; prints both deployments
    /// and the summary.
    pub async fn upgrade_under_load(
        &self,
        deployer: &Deployer,
        from: &Release,
        to: &Release,
        title: &str,
    ) -> Result<Upgrade, Box<dyn std::error::Error>> {
        println!("\n== deploying {from}");
        let first = self.deploy(deployer, from.clone(), None).await;
        if !first.succeeded() {
            self.finish().await?;
            return Err(format!("the first deployment failed: {}", first.summary()).into());
        }
        println!("\n== {title}: {to}, under load");
        let load = Load::start(self.balancer.addr(), 8);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcome = self.deploy(deployer, to.clone(), Some(from.clone())).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = load.stop().await;
        let orphans = self.orphans(if outcome.succeeded() { to } else { from }).await?;
        summary(title, &stats, &outcome, &orphans);
        Ok(Upgrade { outcome, stats, orphans })
    }
}

impl Upgrade {
    /// The deployment succeeded, requests flowed, none failed, nothing was left over.
    pub fn clean_success(&self) -> bool {
        self.outcome.succeeded() && self.stats.failed == 0 && self.stats.sent > 0 && self.orphans.is_empty()
    }
}

/// Prints the summary and says whether the run met its goal.
pub fn summary(title: &str, stats: &Stats, outcome: &Outcome, orphans: &[InstanceId]) {
    println!();
    println!("== {title}");
    println!("clients            {} ({} keep-alive)", stats.clients, stats.keep_alive_clients);
    println!("requests sent      {}", stats.sent);
    println!("requests failed    {}", stats.failed);
    for (version, n) in &stats.by_version {
        println!("served by {version:<8} {n}");
    }
    println!(
        "deployment         {:?} in {:.1}s ({} waves)",
        phase_name(outcome),
        outcome.elapsed.as_secs_f64(),
        outcome.waves
    );
    println!("orphan instances   {}", orphans.len());
    for e in &stats.first_errors {
        println!("  error: {e}");
    }
}

fn phase_name(outcome: &Outcome) -> &'static str {
    match outcome.phase {
        immut::Phase::Succeeded => "succeeded",
        immut::Phase::RolledBack { .. } => "rolled back",
        immut::Phase::RollbackFailed { .. } => "ROLLBACK FAILED",
        immut::Phase::Refused { .. } => "refused",
        immut::Phase::NoWayBack { .. } => "stopped: no way back",
        _ => "unfinished",
    }
}

/// Runs an example body, unless this process is an instance of the sample service or a
/// balancer (both are this executable, started again with a hidden flag).
pub fn main(
    body: impl std::future::Future<Output = Result<bool, Box<dyn std::error::Error>>>,
) -> std::process::ExitCode {
    immut::local::serve_if_requested();
    progress::run(body)
}
