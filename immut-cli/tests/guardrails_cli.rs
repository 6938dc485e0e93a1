//! `immut guardrails` as a user runs it: a provider not compiled in is a clear error naming the
//! cargo feature; with the aws feature the printed deployer policy passes `parliament`.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_immut");

fn immut(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("immut runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_provider_that_is_not_compiled_in_names_its_feature() {
    let missing: Vec<&str> =
        [(cfg!(feature = "aws"), "aws"), (cfg!(feature = "gcp"), "gcp"), (cfg!(feature = "azure"), "azure")]
            .into_iter()
            .filter(|(built, _)| !built)
            .map(|(_, name)| name)
            .collect();
    for provider in &missing {
        let (code, stdout, stderr) = immut(&["guardrails", "--provider", provider]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(&format!("--features {provider}")) && stderr.contains("cargo feature"), "{stderr}");
    }
    // An unknown provider or principal is refused by the argument parser, with the choices.
    let (code, _, stderr) = immut(&["guardrails", "--provider", "oracle"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("aws") && stderr.contains("gcp") && stderr.contains("azure"), "{stderr}");
    let (code, _, stderr) = immut(&["guardrails", "--provider", "aws", "--principal", "root"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("deployer") && stderr.contains("others"), "{stderr}");
}

#[cfg(feature = "aws")]
#[test]
fn the_aws_deployer_policy_it_prints_passes_parliament() {
    let (code, stdout, stderr) = immut(&["guardrails", "--provider", "aws", "--document-only"]);
    assert_eq!(code, 0, "{stderr}");
    let policy: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(policy["Statement"].as_array().is_some_and(|s| !s.is_empty()), "{policy}");
    let python = std::env::var_os("IMMUT_TEST_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-venv/bin/python"))
    });
    let out = Command::new(&python)
        .args(["-c", "import sys; from parliament.cli import cli; sys.exit(cli())"])
        .args(["--string", &stdout, "--json", "--minimum_severity", "INFO"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run ./scripts/test.sh --setup", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Traceback"),
        "parliament did not run ({}; ./scripts/test.sh --setup): {stderr}",
        python.display()
    );
    let failing: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|f| {
            let issue = f["issue"].as_str().unwrap_or_default();
            issue.starts_with("UNKNOWN")
                || issue.contains("MALFORMED")
                || ["MEDIUM", "HIGH", "CRITICAL"].contains(&f["severity"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(failing.is_empty(), "parliament: {failing:#?}");

    let (code, _, stderr) = immut(&["guardrails", "--provider", "aws", "--account", "12"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("account") && stderr.contains("12-digit"), "{stderr}");
}
