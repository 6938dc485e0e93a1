//! When the engine looks up by launch token before a launch: on a backend that honours the
//! token (EC2's ClientToken), a fresh token's first attempt goes straight to the launch; a
//! launch a dead process journaled, and a deployment id the caller chose, are looked up first.
//! On the simulator in virtual time, with call counts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{CrashingJournal, assert_final_fleet, latencies, quiet_simulated_crashes, release};
use immut_core::engine::Event;
use immut_core::journal::{Journal, JournalEntry, MemoryJournal};
use immut_core::sim::SimProvider;
use immut_core::{
    Capabilities, Deployer, DeploymentId, Instance, InstanceId, LaunchRequest, Provider, Query, Result, Rolling,
};

/// The simulator behind a backend that honours the launch token as EC2 honours ClientToken:
/// a launch under a token that already launched returns those instances and launches nothing.
/// Counts the launch calls and the look-ups by token it receives.
#[derive(Debug)]
struct HonoursToken {
    sim: SimProvider,
    honours: bool,
    launches: AtomicUsize,
    by_token: AtomicUsize,
}

impl HonoursToken {
    fn new(sim: &SimProvider, honours: bool) -> Arc<Self> {
        Arc::new(HonoursToken { sim: sim.clone(), honours, launches: 0.into(), by_token: 0.into() })
    }

    fn launches(&self) -> usize {
        self.launches.load(Ordering::SeqCst)
    }

    fn by_token(&self) -> usize {
        self.by_token.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for HonoursToken {
    fn name(&self) -> &str {
        "honours-token"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { honours_token: self.honours, ..self.sim.capabilities() }
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Vec<Instance>> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        if self.honours {
            let done = self.sim.describe(&Query::token(request.token.clone())).await?;
            if !done.is_empty() {
                return Ok(done);
            }
        }
        self.sim.launch(request).await
    }

    async fn describe(&self, query: &Query) -> Result<Vec<Instance>> {
        if query.token.is_some() {
            self.by_token.fetch_add(1, Ordering::SeqCst);
        }
        self.sim.describe(query).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<()> {
        self.sim.terminate(ids).await
    }

    fn next_change(&self) -> Option<tokio::time::Instant> {
        self.sim.next_change()
    }
}

fn deployer(sim: &SimProvider, provider: Arc<HonoursToken>, journal: Option<Arc<dyn Journal>>) -> Deployer {
    let mut b = Deployer::builder()
        .provider_arc(provider)
        .traffic(sim.traffic())
        .health(sim.health())
        .strategy(Rolling::new())
        .desired(4)
        .min_ready(Duration::from_secs(5));
    if let Some(journal) = journal {
        b = b.journal_arc(journal);
    }
    b.build().unwrap()
}

fn seeded() -> SimProvider {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    sim.seed(&release((1, 0, 0)), 4, true);
    sim
}

#[tokio::test(start_paused = true)]
async fn a_fresh_launch_on_a_backend_that_honours_tokens_makes_no_look_up() {
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    let sim = seeded();
    let provider = HonoursToken::new(&sim, true);
    let outcome = deployer(&sim, provider.clone(), None).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
    assert_eq!(provider.launches(), 4, "one launch per wave of the rolling deployment");
    assert_eq!(provider.by_token(), 0, "no look-up by token before a fresh token's first launch");
    assert_eq!(outcome.calls.launch, 4);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_ignores_tokens_is_looked_up_before_every_launch() {
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    let sim = seeded();
    let provider = HonoursToken::new(&sim, false);
    let outcome = deployer(&sim, provider.clone(), None).deploy(v2.clone()).with_previous(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
    assert_eq!((provider.launches(), provider.by_token()), (4, 4), "a look-up before each of the 4 launches");
}

#[tokio::test(start_paused = true)]
async fn a_deployment_id_the_caller_chose_is_looked_up_before_every_launch() {
    // Without a journal nothing says whether an earlier run used this id; its tokens repeat.
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    let sim = seeded();
    let provider = HonoursToken::new(&sim, true);
    let outcome = deployer(&sim, provider.clone(), None)
        .deploy(v2.clone())
        .with_previous(v1.clone())
        .with_id(DeploymentId::new("web-release-7"))
        .run()
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
    assert_eq!((provider.launches(), provider.by_token()), (4, 4), "a look-up before each of the 4 launches");
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_a_launch_then_resume_adopts_it_and_launches_nothing_twice() {
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    // An uninterrupted run shows where each launch's Applied record falls: a crash right
    // before it is a process that launched and died before it could write what it launched.
    let applied_launches: Vec<usize> = {
        let sim = seeded();
        let journal = MemoryJournal::new();
        let d = deployer(&sim, HonoursToken::new(&sim, true), Some(Arc::new(journal.clone())));
        assert!(d.deploy(v2.clone()).with_previous(v1.clone()).run().await.succeeded());
        let records = journal.read("web").unwrap().records;
        records
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.entry, JournalEntry::Applied { token: Some(_), .. }))
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(applied_launches.len(), 4, "one launch per wave");
    quiet_simulated_crashes();
    for crash_at in applied_launches {
        let sim = seeded();
        let provider = HonoursToken::new(&sim, true);
        let journal = MemoryJournal::new();
        let crashing = Arc::new(CrashingJournal::new(journal.clone(), crash_at));
        let run = tokio::spawn(
            deployer(&sim, provider.clone(), Some(crashing)).deploy(v2.clone()).with_previous(v1.clone()).run(),
        );
        assert!(run.await.unwrap_err().is_panic(), "crash {crash_at}: the run should have died");
        let (launched, looked_up) = (provider.launches(), provider.by_token());
        assert_eq!(looked_up, 0, "crash {crash_at}: the dead run's fresh launches made no look-up");

        let resumed = deployer(&sim, provider.clone(), Some(Arc::new(journal))).resume("web").unwrap().unwrap();
        let mut events = Vec::new();
        let outcome = resumed.run_with(|e| events.push(e.clone())).await;
        assert!(outcome.succeeded(), "crash {crash_at}: {}", outcome.summary());
        assert!(matches!(events[0], Event::Resumed { pending_launch: true, .. }), "{:?}", events[0]);
        let adopted: Vec<usize> = events
            .iter()
            .filter_map(|e| if let Event::Launched { adopted, .. } = e { Some(*adopted) } else { None })
            .collect();
        assert_eq!(adopted.first(), Some(&1), "crash {crash_at}: the journaled launch is adopted, {adopted:?}");
        assert!(adopted[1..].iter().all(|a| *a == 0), "crash {crash_at}: later launches are fresh, {adopted:?}");
        let later = adopted.len() - 1;
        assert_eq!(provider.by_token(), 1, "crash {crash_at}: one look-up, for the journaled launch only");
        assert_eq!(provider.launches() - launched, later, "crash {crash_at}: the adopted launch is not sent again");
        // Exactly 4 instances of v2, all serving: nothing launched twice.
        assert_final_fleet(&sim, &outcome, &v2, Some(&v1), 4, 4).await;
    }
}
