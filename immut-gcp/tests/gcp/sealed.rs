//! Sealed instances on GCE: the metadata a sealed launch carries, read back from the fake's
//! state; `ssh_keys` with a sealed baseline refused before any call; and an `ssh-keys` item
//! added out of band with Google's official Python client (instances.setMetadata, fingerprint
//! checked) is what the audit names.

use std::time::Duration;

use immut_core::audit::{Audit, Verdict};
use immut_core::semver::Version;
use immut_core::{ArtifactSpec, BaselineSpec, BlueGreen, Deployer, ErrorKind, LaunchSpec, Provider, Query, Release};

use crate::support::{self, PROJECT, ZONE, image};

fn sealed(params: &[(&str, &str)]) -> Release {
    let spec = LaunchSpec {
        machine_type: Some("e2-small".into()),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        sealed: true,
        ..LaunchSpec::default()
    };
    Release::new(
        "web",
        &ArtifactSpec::new("web", Version::new(1, 0, 0), image(1)),
        &BaselineSpec::new("base", Version::new(1, 0, 0), spec),
    )
    .unwrap()
}

/// The metadata items of an instance, as the fake holds them.
fn metadata(fake: &immut_gcp::fake::FakeGce, name: &str) -> Vec<(String, String)> {
    let state = fake.state();
    let vm = state["projects"][PROJECT]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the fake's state: {state:#}"))
        .clone();
    vm["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_owned(), i["value"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_instances_carry_no_key_and_an_ssh_key_added_out_of_band_is_audited() {
    let python = immut_core::test_tools::python_with("google.cloud.compute_v1").unwrap_or_else(|e| panic!("{e}"));
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let stack = support::stack(&provider, Duration::from_millis(200)).await;
    let traffic = support::group(&provider, &stack);
    let release = sealed(&[]);
    let d = Deployer::builder()
        .provider(provider.clone())
        .traffic(traffic.clone())
        .strategy(BlueGreen::new())
        .desired(2)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let outcome = d.deploy(release.clone()).run().await;
    assert!(outcome.succeeded(), "{}", outcome.summary());

    let names: Vec<String> = provider
        .describe(&Query::service("web"))
        .await
        .unwrap()
        .iter()
        .map(|i| i.id.as_str().rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2);
    for name in &names {
        let items = metadata(&fake, name);
        let get = |key: &str| items.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("block-project-ssh-keys"), Some("TRUE"), "{items:?}");
        assert_eq!(get("serial-port-enable"), Some("FALSE"), "{items:?}");
        assert_eq!(get("ssh-keys"), None, "{items:?}");
    }
    let audit = Audit::new(&provider, &traffic);
    let report = audit.run(&release).await.unwrap();
    assert!(report.is_clean(), "{}", report.table());

    // Someone adds a login key to one instance, with Google's own client.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gcp/python/set_metadata.py");
    let args = vec![fake.url().to_owned(), PROJECT.into(), ZONE.into(), names[0].clone()];
    let out = immut_fake::official_client::run_script(python, script, args)
        .await
        .unwrap_or_else(|e| panic!("the official client failed on the fake: {e}"));
    assert!(out.contains("stale fingerprint refused: 412"), "{out}");
    assert!(out.contains("ssh-keys added"), "{out}");
    assert!(metadata(&fake, &names[0]).iter().any(|(k, _)| k == "ssh-keys"));

    let report = audit.run(&release).await.unwrap();
    let finding = report.findings.iter().find(|f| f.id.as_str() == format!("{ZONE}/{}", names[0])).unwrap();
    assert_eq!(
        finding.verdict,
        Verdict::Unsealed { opened: vec!["login key (metadata ssh-keys holds 1 key(s))".to_owned()] },
        "{}",
        report.table()
    );
    assert!(!report.table().contains("AAAA"), "no key material in the report:\n{}", report.table());
    assert_eq!(report.offenders().len(), 1, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keys_with_a_sealed_baseline_is_refused_before_any_call() {
    let fake = support::fake().await;
    let provider = support::provider(&fake).await;
    let release = std::sync::Arc::new(sealed(&[("ssh_keys", "ops:ssh-ed25519 AAAA ops")]));
    let request = immut_core::LaunchRequest::new(
        release,
        1,
        &immut_core::DeploymentId::new("d-sealed"),
        immut_core::LaunchToken::new("t-sealed"),
    );
    let before = fake.calls();
    let e = provider.launch(&request).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("baseline.params.ssh_keys") && e.to_string().contains("baseline.sealed"), "{e}");
    assert_eq!(fake.calls(), before, "no call reached the API");
}
