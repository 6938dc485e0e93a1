//! Sealed VMs on Azure: the osProfile a sealed launch carries, read back from the fake ARM; a
//! login key with a sealed baseline refused before any call; and a VM opened out of band with
//! Microsoft's official Python client (a PATCH of osProfile, then an extension PUT) is what
//! the audit names.

use std::sync::Arc;
use std::time::Duration;

use immut_core::audit::{Audit, Verdict};
use immut_core::semver::Version;
use immut_core::{
    ArtifactSpec, BaselineSpec, BlueGreen, Deployer, DeploymentId, ErrorKind, LaunchRequest, LaunchSpec, LaunchToken,
    Provider, Query, Release,
};

use crate::support::{self, GROUP, LOCATION, SUB};

fn sealed(params: &[(&str, &str)]) -> Release {
    let spec = LaunchSpec {
        machine_type: Some("Standard_B2s".into()),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        sealed: true,
        ..LaunchSpec::default()
    };
    Release::new(
        "web",
        &ArtifactSpec::new("web", Version::new(1, 0, 0), support::image(1)),
        &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_vms_launch_closed_and_one_opened_out_of_band_is_audited() {
    let python = immut_core::test_tools::python_with("azure.mgmt.compute").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake().await;
    let provider = support::provider(&fake);
    let stack = support::stack(&provider, Duration::from_millis(100)).await;
    let traffic = support::pool(&provider, &stack);
    let release = sealed(&[]);
    let d = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .strategy(BlueGreen::new())
        .desired(2)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let outcome = d.deploy(release.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());

    // The osProfile as the fake ARM holds it.
    let state = fake.state();
    let vms: Vec<&serde_json::Value> = state["virtualMachines"].as_array().unwrap().iter().collect();
    assert_eq!(vms.len(), 2, "{state:#}");
    for vm in &vms {
        let os = &vm["osProfile"];
        assert_eq!(os["linuxConfiguration"]["disablePasswordAuthentication"], true, "{vm:#}");
        assert_eq!(os["linuxConfiguration"].get("ssh"), None, "no SSH key: {vm:#}");
        assert_eq!(os["allowExtensionOperations"], false, "{vm:#}");
        assert_eq!(vm["extensions"], serde_json::json!([]));
    }
    let audit = Audit::new(&provider, &traffic);
    let report = audit.run(&release).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());

    // Someone opens one VM with Microsoft's own client: extensions allowed, Run Command added.
    let name = provider.describe(&Query::service("web")).await.unwrap()[0].id.to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/azure/python/reopen_vm.py");
    let args = [fake.url(), SUB, GROUP, &name, LOCATION].map(str::to_owned);
    let out = immut_fake::official_client::run_script(python, script, args.to_vec())
        .await
        .unwrap_or_else(|e| panic!("the official client failed on the fake: {e}"));
    assert!(out.contains("extension refused on the sealed VM: OperationNotAllowed"), "{out}");
    assert!(out.contains("extension installed: run Succeeded"), "{out}");

    let report = audit.run(&release).await.unwrap();
    let finding = report.findings.iter().find(|f| f.id.as_str() == name).unwrap();
    assert_eq!(
        finding.verdict,
        Verdict::Unsealed {
            opened: vec![
                "extensions (osProfile.allowExtensionOperations=true)".to_owned(),
                "extensions (extension run (Microsoft.CPlat.Core/RunCommandLinux))".to_owned(),
            ]
        },
        "{}",
        report.table()
    );
    assert_eq!(report.offenders(), vec![finding.id.clone()], "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_key_with_a_sealed_baseline_is_refused_before_any_call() {
    let fake = support::fake().await;
    let request = |release: Release| {
        LaunchRequest::new(Arc::new(release), 1, &DeploymentId::new("d-sealed"), LaunchToken::new("t-sealed"))
    };
    let provider = support::provider(&fake);
    let e = provider.launch(&request(sealed(&[("ssh_public_key", "ssh-ed25519 AAAA ops")]))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("baseline.params.ssh_public_key") && e.to_string().contains("baseline.sealed"),
        "{e}"
    );
    let keyed = support::builder(&fake).ssh_public_key("ssh-ed25519 AAAA ops").build().unwrap();
    let e = keyed.launch(&request(sealed(&[]))).await.unwrap_err();
    assert!(e.to_string().contains("ssh_public_key") && e.to_string().contains("baseline.sealed"), "{e}");
    assert!(fake.calls().is_empty(), "no call reached ARM: {:?}", fake.calls());
}
