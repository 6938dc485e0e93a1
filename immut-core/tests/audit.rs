//! Drift audit, forged labels, orphans, reconcile and adoption on the simulator.

mod common;

use std::time::Duration;

use common::{latencies, release};
use immut_core::audit::{Audit, Verdict};
use immut_core::journal::MemoryJournal;
use immut_core::model::{AccessPath, label_keys};
use immut_core::sim::SimProvider;
use immut_core::{Adopt, Deployer, DeploymentId, Provenance, Provider, Query, Rolling, SigningKey, Traffic};

fn key() -> SigningKey {
    SigningKey::new("test-signing-key-0123456789").unwrap()
}

fn deployer(sim: &SimProvider) -> Deployer {
    sim.deployer()
        .strategy(Rolling::new())
        .desired(3)
        .min_ready(Duration::from_secs(1))
        .signing_key(key())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_clean_fleet_audits_ok_and_drift_is_named() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    assert!(deployer(&sim).deploy(v1.clone()).run().await.succeeded());
    let (provider, traffic, health, k) = (sim.clone(), sim.traffic(), sim.health(), key());
    let audit = Audit::new(&provider, &traffic).health(&health).signing_key(&k);
    let report = audit.run(&v1).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());
    assert_eq!(report.counts.get("ok"), Some(&3));

    let ids: Vec<_> = sim.describe(&Query::service("web")).await.unwrap().into_iter().map(|i| i.id).collect();
    // Someone resizes one instance in place, and starts a server by hand behind the balancer.
    sim.resize(&ids[0], "m5.24xlarge");
    sim.launch_unmanaged(1, "ami-handmade", true);
    let report = audit.run(&v1).await.unwrap();
    assert_eq!(report.counts.get("wrong_baseline"), Some(&1), "{}", report.table());
    assert_eq!(report.counts.get("unmanaged"), Some(&1), "{}", report.table());
    assert_eq!(report.offenders().len(), 2);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["findings"].as_array().unwrap().len(), 4);
    assert!(report.table().contains("m5.24xlarge"), "{}", report.table());
}

fn sealed(r: &immut_core::Release) -> immut_core::Release {
    let mut baseline = r.baseline().clone();
    baseline.spec.sealed = true;
    immut_core::Release::new(r.service(), r.artifact(), &baseline).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_sealed_instance_that_gains_a_way_in_is_unsealed_and_replaced() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = sealed(&release((1, 0, 0)));
    assert!(deployer(&sim).deploy(v1.clone()).run().await.succeeded());
    let (provider, traffic, health, k) = (sim.clone(), sim.traffic(), sim.health(), key());
    let audit = Audit::new(&provider, &traffic).health(&health).signing_key(&k);
    let report = audit.run(&v1).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());

    let ids: Vec<_> = sim.describe(&Query::service("web")).await.unwrap().into_iter().map(|i| i.id).collect();
    assert!(sim.open_access(&ids[1], AccessPath::LoginKey, "KeyName=ops"));
    assert!(sim.open_access(&ids[1], AccessPath::SerialConsole, "serial-port-enable=TRUE"));
    let report = audit.run(&v1).await.unwrap();
    let finding = report.findings.iter().find(|f| f.id == ids[1]).unwrap();
    assert_eq!(
        finding.verdict,
        Verdict::Unsealed {
            opened: vec!["login key (KeyName=ops)".to_owned(), "serial console (serial-port-enable=TRUE)".to_owned()]
        }
    );
    assert_eq!(report.counts.get("unsealed"), Some(&1), "{}", report.table());
    assert_eq!(report.offenders(), vec![ids[1].clone()]);
    assert!(report.table().contains("KeyName=ops"), "{}", report.table());
    let json = serde_json::to_value(&report).unwrap();
    let unsealed = json["findings"].as_array().unwrap().iter().find(|f| f["verdict"] == "unsealed").unwrap();
    assert_eq!(unsealed["opened"][0], "login key (KeyName=ops)");

    // Reconcile replaces the opened instance with a sealed one; nothing is patched.
    assert!(deployer(&sim).reconcile(&report, v1.clone()).run().await.succeeded());
    let report = audit.run(&v1).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());
    assert!(report.findings.iter().all(|f| f.id != ids[1]));
}

#[tokio::test(start_paused = true)]
async fn an_unsealed_baseline_ignores_open_access() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    assert!(deployer(&sim).deploy(v1.clone()).run().await.succeeded());
    let id = sim.describe(&Query::service("web")).await.unwrap()[0].id.clone();
    sim.open_access(&id, AccessPath::LoginKey, "KeyName=ops");
    let (provider, traffic, k) = (sim.clone(), sim.traffic(), key());
    let report = Audit::new(&provider, &traffic).signing_key(&k).run(&v1).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());
}

#[tokio::test(start_paused = true)]
async fn hand_edited_labels_are_forged_provenance() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    assert!(deployer(&sim).deploy(v1.clone()).run().await.succeeded());
    let id = sim.describe(&Query::service("web")).await.unwrap()[0].id.clone();
    // Claim the instance runs another version, by editing its labels.
    sim.edit_label(&id, label_keys::VERSION, "1.0.1");
    let (provider, traffic, k) = (sim.clone(), sim.traffic(), key());
    let signed = Audit::new(&provider, &traffic).signing_key(&k).run(&v1).await.unwrap();
    let finding = signed.findings.iter().find(|f| f.id == id).unwrap();
    assert!(matches!(finding.verdict, Verdict::Tampered { .. }), "{}", signed.table());
    // Even without the key the claim does not match the expected release.
    let unsigned = Audit::new(&provider, &traffic).run(&v1).await.unwrap();
    assert!(matches!(unsigned.findings.iter().find(|f| f.id == id).unwrap().verdict, Verdict::WrongArtifact { .. }));
    // A forger who also edits the signature label gets no further.
    sim.edit_label(&id, label_keys::SIGNATURE, &"ab".repeat(32));
    let again = Audit::new(&provider, &traffic).signing_key(&k).run(&v1).await.unwrap();
    assert!(matches!(again.findings.iter().find(|f| f.id == id).unwrap().verdict, Verdict::Tampered { .. }));
}

#[tokio::test(start_paused = true)]
async fn orphans_are_found_and_reaped_but_not_those_of_a_running_deployment() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let (v1, v2) = (release((1, 0, 0)), release((2, 0, 0)));
    assert!(deployer(&sim).deploy(v1.clone()).run().await.succeeded());
    // Instances of v2 launched by a deployment that died before attaching them.
    let stray = sim.seed(&v2, 2, false);
    let (provider, traffic) = (sim.clone(), sim.traffic());
    let journal = MemoryJournal::new();
    let audit = Audit::new(&provider, &traffic).journal(&journal);
    let report = audit.run(&v1).await.unwrap();
    assert_eq!(report.counts.get("orphaned"), Some(&2), "{}", report.table());
    // While their deployment still runs (holds the lock), they are not orphans.
    let guard = immut_core::journal::Journal::lock(&journal, "web", &DeploymentId::new("seed")).unwrap();
    assert_eq!(audit.run(&v1).await.unwrap().counts.get("orphaned"), None);
    drop(guard);
    let reaped = audit.reap(&v1, true).await.unwrap();
    assert_eq!(reaped.len(), 2);
    let live = sim.describe(&Query::service("web")).await.unwrap();
    assert!(live.iter().all(|i| !stray.iter().any(|s| s.id == i.id)));
    assert!(audit.run(&v1).await.unwrap().is_clean());
}

#[tokio::test(start_paused = true)]
async fn reconcile_replaces_offenders_through_the_strategy() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    let d = deployer(&sim);
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    let tampered = sim.describe(&Query::service("web")).await.unwrap()[0].id.clone();
    sim.edit_label(&tampered, label_keys::BASELINE, "0000");
    let hand = sim.launch_unmanaged(1, "ami-handmade", true)[0].id.clone();
    let (provider, traffic, health, k) = (sim.clone(), sim.traffic(), sim.health(), key());
    let audit = Audit::new(&provider, &traffic).health(&health).signing_key(&k);
    let report = audit.run(&v1).await.unwrap();
    assert_eq!(report.offenders().len(), 2, "{}", report.table());

    let mut floor_held = true;
    let outcome = d
        .reconcile(&report, v1.clone())
        .run_with(|e| {
            if let immut_core::Event::Step { capacity, .. } = e {
                floor_held &= capacity.serving_healthy >= 3;
            }
        })
        .await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert!(floor_held, "reconcile must keep the healthy floor");
    let after = audit.run(&v1).await.unwrap();
    assert!(after.is_clean(), "{}", after.table());
    assert_eq!(after.findings.len(), 3);
    assert!(after.findings.iter().all(|f| f.id != tampered && f.id != hand));
    assert!(!sim.traffic().serving().await.unwrap().contains(&hand));
}

#[tokio::test(start_paused = true)]
async fn adopted_instances_are_release_zero_and_the_first_deployment_replaces_them() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let legacy: Vec<_> = sim.launch_unmanaged(3, "ami-legacy", true).into_iter().map(|i| i.id).collect();
    let provenance = Provenance::adopted("web", &DeploymentId::new("adoption"));
    let adopted = sim.adopt(&legacy, &provenance, Some(&key().sign(&provenance))).await.unwrap();
    assert!(adopted.iter().all(|i| i.release().map(|r| r.as_str()) == Some("r0")));
    let v1 = release((1, 0, 0));
    let outcome = deployer(&sim).deploy(v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    assert_eq!(outcome.previous.as_ref().map(|r| r.as_str()), Some("r0"));
    let live = sim.describe(&Query::service("web").with_unmanaged()).await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|i| i.release() == Some(v1.id())));
}

#[tokio::test(start_paused = true)]
async fn replayed_labels_are_unrecorded_and_reconciled_only_when_asked() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    let journal = MemoryJournal::new();
    let d = sim
        .deployer()
        .strategy(Rolling::new())
        .desired(3)
        .min_ready(Duration::from_secs(1))
        .signing_key(key())
        .journal(journal.clone())
        .build()
        .unwrap();
    assert!(d.deploy(v1.clone()).run().await.succeeded());
    // Someone copies a real instance's labels, signature included, onto a server of the same
    // image started by hand, and puts it behind the balancer: its provenance is valid.
    let real = sim.describe(&Query::service("web")).await.unwrap().remove(0);
    let copy = sim.launch_unmanaged(1, &v1.artifact().image, true).remove(0).id;
    for (k, v) in real.labels.iter() {
        sim.edit_label(&copy, k, v);
    }
    let (provider, traffic, health, k) = (sim.clone(), sim.traffic(), sim.health(), key());
    let without_journal = Audit::new(&provider, &traffic).health(&health).signing_key(&k).run(&v1).await.unwrap();
    assert!(without_journal.is_clean(), "labels and signature alone cannot tell:\n{}", without_journal.table());

    let audit = Audit::new(&provider, &traffic).health(&health).signing_key(&k).journal(&journal);
    let report = audit.run(&v1).await.unwrap();
    let finding = report.findings.iter().find(|f| f.id == copy).unwrap();
    match &finding.verdict {
        Verdict::Unrecorded { deployment, token, predates_record: false } => {
            assert_eq!(deployment, real.provenance.as_ref().unwrap().deployment.as_str());
            assert_eq!(token, real.provenance.as_ref().unwrap().token.as_str());
        }
        other => panic!("{other:?}\n{}", report.table()),
    }
    assert_eq!(report.counts.get("ok"), Some(&3), "{}", report.table());
    assert!(!report.is_clean());
    assert!(report.table().contains("never recorded this id"), "{}", report.table());
    assert!(report.offenders().is_empty(), "reconcile does not act on it unless asked");
    assert_eq!(report.offenders_including_unrecorded(), vec![copy.clone()]);

    let outcome = d.reconcile_including_unrecorded(&report, v1.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());
    let after = audit.run(&v1).await.unwrap();
    assert!(after.is_clean() && after.findings.len() == 3, "{}", after.table());
    assert!(after.findings.iter().all(|f| f.id != copy && f.verdict == Verdict::Ok), "{}", after.table());
}

#[tokio::test(start_paused = true)]
async fn instances_that_predate_the_record_are_reported_only() {
    let sim = latencies(SimProvider::builder()).build().unwrap();
    let v1 = release((1, 0, 0));
    // Launched before the journal recorded ids (the simulator's seed stands in for them).
    sim.seed(&v1, 3, true);
    let journal = MemoryJournal::new();
    let (provider, traffic, health) = (sim.clone(), sim.traffic(), sim.health());
    let report = Audit::new(&provider, &traffic).health(&health).journal(&journal).run(&v1).await.unwrap();
    assert_eq!(report.counts.get("unrecorded"), Some(&3), "{}", report.table());
    assert!(report.findings.iter().all(|f| f.verdict.is_report_only()), "{}", report.table());
    assert!(report.table().contains("report only"), "{}", report.table());
    assert!(report.is_clean(), "report-only verdicts leave an old fleet clean");
    assert!(report.offenders().is_empty() && report.offenders_including_unrecorded().is_empty());
}
