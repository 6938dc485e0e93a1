//! The test command's own setup, as a newcomer meets it: what it says when Python lacks what
//! it needs, and that a prepared environment is reused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-test-script-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn setup(envs: &[(&str, &Path)], path: Option<String>) -> Output {
    let mut cmd = Command::new(repo().join("scripts/test.sh"));
    cmd.arg("--setup").env_remove("IMMUT_TEST_VENV").env_remove("PYTHON");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd.output().expect("scripts/test.sh runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn real_python() -> PathBuf {
    let out = Command::new("sh").args(["-c", "command -v python3"]).output().unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn a_python_without_venv_stops_the_setup_naming_the_package() {
    let dir = scratch("no-venv");
    // A Python like Debian's without python3-venv: `import ensurepip` fails.
    let shadow = dir.join("shadow");
    std::fs::create_dir_all(&shadow).unwrap();
    std::fs::write(shadow.join("ensurepip.py"), "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n")
        .unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("python3");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nPYTHONPATH={} exec {} \"$@\"\n", shadow.display(), real_python().display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let venv = dir.join("venv");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = setup(&[("IMMUT_TEST_VENV", &venv)], Some(path));
    assert!(!out.status.success(), "the setup must fail without venv");
    let err = stderr(&out);
    assert!(err.contains("apt-get install python3-venv"), "the message names the package: {err}");
    assert!(!err.contains("Traceback"), "no Python traceback: {err}");
    assert!(!venv.exists(), "nothing is created when the setup cannot work");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_python_is_named() {
    let dir = scratch("no-python");
    let venv = dir.join("venv");
    let out = setup(&[("IMMUT_TEST_VENV", &venv), ("PYTHON", Path::new("/nonexistent/python3"))], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/python3 is missing") && err.contains("apt-get install python3"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prepared_environment_is_reused_without_installing() {
    // The first call prepares target/test-venv if this run has not yet; the second must find
    // it up to date and install nothing.
    let first = setup(&[], None);
    assert!(first.status.success(), "setup failed: {}", stderr(&first));
    let second = setup(&[], None);
    assert!(second.status.success(), "setup failed: {}", stderr(&second));
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("is up to date") && !out.contains("creating"), "the second setup reinstalled: {out}");
}
