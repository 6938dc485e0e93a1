//! Shared support for the tests that run `immut` on the local provider: a directory with a
//! spec written per case, the command run in it, and the ground truth of what runs, read from
//! `/proc` rather than from the state files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use immut::engine::Event;
/// The ground truth of what runs and the load generator, shared with immut-local's own tests.
#[allow(unused_imports)] // Each test binary uses its own part.
pub use immut_local::test_tools::{
    Live, Load, Seen, balancers_from, eventually, kill_all_from, listening, processes_from, records,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_immut");

/// A spec on the local provider: the sample service built into `immut`, blue/green or
/// rolling, with short timings. `{service}`, `{desired}` and `{strategy}` are filled in.
const SPEC: &str = r#"service = "{service}"
desired = {desired}
state = "state"

[provider]
kind = "local"

[provider.local]
state_dir = "local"
drain_timeout = "5s"

[artifact]
name = "sample"
version = "1.0.0"
image = "builtin:sample"

[baseline]
name = "sample"
version = "1.0.0"

[strategy]
{strategy}

[health]
http = "/healthz"
timeout = "500ms"

[rollout]
min_ready = "500ms"
poll_interval = "100ms"
progress_deadline = "20s"
"#;

/// The `[strategy]` table of a strategy by name (`blue-green` or `rolling`).
pub fn strategy(name: &str) -> &'static str {
    match name {
        "blue-green" => "kind = \"blue_green\"",
        "rolling" => "kind = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0",
        other => panic!("no strategy {other}"),
    }
}

/// A directory of its own with a spec in it; everything launched from it is killed by pid
/// when dropped, whatever happened to the test.
pub struct Case {
    pub dir: PathBuf,
    pub service: String,
}

impl Case {
    pub fn new(tag: &str, service: &str, desired: usize, strategy_name: &str) -> Case {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Under /tmp: the balancer's Unix socket path must stay short.
        let dir = std::env::temp_dir().join(format!(
            "immut-cli-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = SPEC
            .replace("{service}", service)
            .replace("{desired}", &desired.to_string())
            .replace("{strategy}", strategy(strategy_name));
        std::fs::write(dir.join("immut.toml"), spec).unwrap();
        Case { dir, service: service.to_owned() }
    }

    /// The local provider's state directory.
    pub fn local_dir(&self) -> PathBuf {
        self.dir.join("local")
    }

    /// The spec's state directory (journal, lease, ledger).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    /// Runs `immut` with `args` in the case's directory.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("immut runs")
    }

    /// The journal records of the service.
    pub fn journal(&self) -> Vec<immut::journal::JournalRecord> {
        use immut::journal::Journal;
        immut::journal::FileJournal::open(self.state_dir().join("journal"))
            .unwrap()
            .read(&self.service)
            .unwrap()
            .records
    }

    /// A provider on the case's local state directory.
    pub fn provider(&self) -> immut::local::LocalProvider {
        immut::local::LocalProvider::builder().state_dir(self.local_dir()).build().unwrap()
    }

    /// The service's balancer (the running one, found by its state; started from `immut`
    /// when none runs).
    pub async fn balancer(&self) -> immut::local::LocalBalancer {
        self.provider()
            .balancer(&self.service)
            .executable(BIN)
            .drain_timeout(Duration::from_secs(5))
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        kill_all_from(&self.local_dir());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The engine's events among the JSON lines a command printed. A SIGKILL can cut the last
/// line short, and other lines (errors, notes) are no events: only whole events count.
pub fn events(output: &Output) -> Vec<Event> {
    stdout(output).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn finished(output: &Output) -> Option<immut::Outcome> {
    events(output).into_iter().find_map(|e| match e {
        Event::Finished { outcome } => Some(outcome),
        _ => None,
    })
}
