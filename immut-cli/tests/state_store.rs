//! The spec's `state` on object storage: journal, lease, ledger and approvals shared by
//! separate `immut` processes through S3 (moto, started here on 127.0.0.1 and stopped by its
//! pid), with the credentials from the standard AWS environment and never printed. A build
//! without the `state-s3` feature refuses the URL, naming the feature.

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_immut");

fn dir(tag: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("immut-cli-state").join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let init = Command::new(BIN).args(["init", "--provider", "sim"]).current_dir(&dir).output().unwrap();
    assert!(init.status.success());
    dir
}

/// Points the spec's state at `url`; with `manual`, blue/green waits for `immut promote`.
fn use_state(dir: &std::path::Path, url: &str, manual: bool) {
    let path = dir.join("immut.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("state = \".immut/state\""), "{text}");
    text = text.replace("state = \".immut/state\"", &format!("state = \"{url}\""));
    if manual {
        let rolling = "kind = \"rolling\"\nmax_surge = \"25%\"\nmax_unavailable = 0";
        assert!(text.contains(rolling), "{text}");
        text = text.replace(rolling, "kind = \"blue_green\"\npromotion = \"manual\"");
    }
    std::fs::write(&path, text).unwrap();
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[cfg(not(feature = "state-s3"))]
#[test]
fn state_on_s3_without_the_feature_is_refused_naming_it() {
    let d = dir("no-feature");
    use_state(&d, "s3://bucket/web", false);
    let out = Command::new(BIN).args(["status"]).current_dir(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let text = said(&out);
    assert!(text.contains("immut.toml:") && text.contains("state:"), "the error points at the field: {text}");
    assert!(text.contains("cargo install immut-cli --features state-s3"), "{text}");
}

#[cfg(feature = "state-s3")]
#[test]
fn state_on_s3_is_shared_by_separate_processes_and_credentials_are_never_printed() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let moto = immut_core::test_tools::start_moto().unwrap_or_else(|e| panic!("{e}"));
    let bucket = format!("immut-cli-{}", std::process::id());
    moto.create_bucket(&bucket).unwrap();
    let d = dir("s3");
    use_state(&d, &format!("s3://{bucket}/web"), true);
    // A secret of its own, so that the test can prove it never shows.
    const SECRET: &str = "immut-test-secret-access-key-never-printed";
    let mut env: Vec<(String, String)> = moto.aws_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()));
    let command = |args: &[&str], ledger_key: bool| {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&d).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        if ledger_key {
            c.env("IMMUT_LEDGER_KEY", "a-ledger-key-for-the-state-tests-0123456789");
        } else {
            c.env_remove("IMMUT_LEDGER_KEY");
        }
        c
    };
    let everything = std::cell::RefCell::new(String::new());
    let run = |args: &[&str], code: i32| -> String {
        let out = command(args, true).output().unwrap();
        let text = said(&out);
        everything.borrow_mut().push_str(&text);
        assert_eq!(out.status.code(), Some(code), "immut {args:?}: {text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let out = command(&["status"], false).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("needs its key in IMMUT_LEDGER_KEY"), "{}", said(&out));

    // One process deploys and waits at the promotion gate; others see it and approve it.
    let mut deploy =
        command(&["deploy", "--json"], true).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(deploy.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let waiting = line.contains("\"event\":\"awaiting_approval\"");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("awaiting_approval")), "{}", seen.join("\n"));
    let status: serde_json::Value = serde_json::from_str(&run(&["status", "--json"], 0)).unwrap();
    let holder = status["lock_holder"].as_str().expect("the deploying process holds the lease").to_owned();
    assert_eq!(status["awaiting_approval"][0]["deployment"], holder.as_str(), "{status}");
    assert_eq!(status["awaiting_approval"][0]["gate"], "promote", "{status}");
    let second = run(&["deploy", "--json", "--set", "artifact.version=2.0.0"], 6);
    assert!(second.contains(&holder), "a second deployer is refused, naming the holder: {second}");
    run(&["promote"], 0);
    seen.extend(lines.map(|l| l.unwrap()));
    let status_code = deploy.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut deploy.stderr.take().unwrap(), &mut err).unwrap();
    everything.borrow_mut().push_str(&seen.join("\n"));
    everything.borrow_mut().push_str(&err);
    assert!(status_code.success(), "{}\n{err}", seen.join("\n"));
    let last: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(last["outcome"]["phase"]["phase"], "succeeded", "{last}");

    // The ledger and the lease on S3, from other processes.
    let history: serde_json::Value = serde_json::from_str(&run(&["history", "--json"], 0)).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    let verify: serde_json::Value = serde_json::from_str(&run(&["verify", "--json"], 0)).unwrap();
    assert_eq!(verify["entries"], 1, "{verify}");
    let status: serde_json::Value = serde_json::from_str(&run(&["status", "--json"], 0)).unwrap();
    assert_eq!(status["lock_holder"], serde_json::Value::Null, "{status}");
    assert_eq!(status["releases"][0]["live"], 4, "{status}");
    assert!(!d.join(".immut/state").exists(), "nothing of the state is kept on this machine");
    assert!(!everything.borrow().contains(SECRET), "the secret access key was printed");
    drop(moto);
}
