//! Drift audit and reconcile: find what changed outside the pipeline, and replace it.
//!
//! ```text
//! cargo run --example local_audit
//! ```
//!
//! 1. Deploys 1.0.0 of the sample service on 3 processes. The deployer signs every instance's
//!    provenance labels with a key (HMAC), journals every step and records the deployment in
//!    a hash-chained ledger (all in `.immut/local_audit`).
//! 2. Audits: all 3 instances are ok.
//! 3. Plays the intruder: starts a 4th server by hand from the same executable, and edits one
//!    instance's labels so that it claims to run 1.0.1.
//! 4. Audits again: the hand-started process is `unmanaged` (no provenance) and the edited
//!    instance is `tampered` (its labels no longer match their signature).
//! 5. Reconciles: a rolling deployment of 1.0.0 that replaces the two offenders, launching and
//!    proving replacements before it drains and terminates them. Nothing is patched in place.
//! 6. Audits a last time (clean), and verifies the ledger's hash chain.
//!
//! Exits 0 only when the audits find exactly that and the reconcile succeeds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Demo;
use immut::SigningKey;
use immut::audit::{Audit, Verdict};
use immut::health::HttpProbe;
use immut::journal::FileJournal;
use immut::ledger::Ledger;
use immut::local::sample;
use immut::model::label_keys;
use immut::prelude::*;

fn main() -> std::process::ExitCode {
    common::main(async {
        let demo = Demo::start("local_audit").await?;
        let state = demo.provider.state_dir().to_owned();
        // A real deployment takes the key from a secret store; IMMUT_SIGNING_KEY overrides it.
        let key = SigningKey::from_env("IMMUT_SIGNING_KEY")
            .or_else(|_| SigningKey::new("local-audit-example-signing-key"))?;
        let ledger = Arc::new(Ledger::open(state.join("ledger.jsonl"))?);
        let deployer = demo
            .builder(3, Rolling::new().max_surge(Count::Count(1)))
            .signing_key(key.clone())
            .journal(FileJournal::open(state.join("journal"))?)
            .ledger(ledger.clone())
            .build()?;
        let v1 = demo.release(Version::new(1, 0, 0), true)?;

        println!("\n== deploying {v1}, signed, journaled and recorded in the ledger");
        let first = demo.deploy(&deployer, v1.clone(), None).await;
        if !first.succeeded() {
            demo.finish().await?;
            return Err(format!("the deployment failed: {}", first.summary()).into());
        }

        let probe = HttpProbe::new("/healthz");
        let audit = Audit::new(&demo.provider, &demo.balancer).health(&probe).signing_key(&key);
        let before = audit.run(&v1).await?;
        println!("\n{}", before.table());

        println!("\n== someone works around the pipeline");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut by_hand = HandStarted(
            std::process::Command::new(std::env::current_exe()?)
                .arg(sample::SAMPLE_FLAG)
                .env("PORT", port.to_string())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        println!("started a server by hand: pid {} on 127.0.0.1:{port}", by_hand.0.id());
        // The audit must find a server that answers, not one still starting.
        if !poll(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await
        {
            demo.finish().await?;
            return Err(format!("the server started by hand never listened on 127.0.0.1:{port}").into());
        }
        let victim = demo.live().await?.into_iter().next().ok_or("no instance to tamper with")?;
        let record = state.join("instances").join(format!("{}.json", victim.id));
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
        json["labels"][label_keys::VERSION] = "1.0.1".into();
        std::fs::write(&record, serde_json::to_vec_pretty(&json)?)?;
        println!("edited {}'s labels to claim version 1.0.1", victim.id);

        let found = audit.run(&v1).await?;
        println!("\n{}", found.table());
        let names: Vec<&str> = found.findings.iter().map(|f| f.verdict.name()).collect();
        let flagged_both = found.offenders().len() == 2
            && names.contains(&"unmanaged")
            && found.findings.iter().any(|f| f.id == victim.id && matches!(f.verdict, Verdict::Tampered { .. }));
        println!("offenders found: {} (unmanaged and tampered: {flagged_both})", found.offenders().len());

        println!("\n== reconcile: replace the offenders through the rolling strategy");
        let outcome = {
            let mut printer = common::Printer::default();
            deployer.reconcile(&found, v1.clone()).run_with(|e| printer.print(e)).await
        };
        // The reconcile replaced the hand-started server too: it exits on its SIGTERM.
        let stopped = poll(Duration::from_secs(15), || {
            let exited = matches!(by_hand.0.try_wait(), Ok(Some(_)));
            async move { exited }
        })
        .await;
        if !stopped {
            println!("the server started by hand still runs after the reconcile");
        }

        let after = audit.run(&v1).await?;
        println!("\n{}", after.table());
        let verification = ledger.verify()?;
        println!(
            "\nledger: {} entries, chain {} (head {})",
            verification.entries,
            if verification.is_intact() { "intact" } else { "BROKEN" },
            &verification.head[..16]
        );
        demo.finish().await?;
        Ok(before.is_clean()
            && flagged_both
            && stopped
            && outcome.succeeded()
            && after.is_clean()
            && after.findings.len() == 3
            && verification.is_intact())
    })
}

/// A process started by hand; killed by its pid when dropped, so that an early return or a
/// failure leaves nothing running.
struct HandStarted(std::process::Child);

impl Drop for HandStarted {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; says whether it held.
async fn poll<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
