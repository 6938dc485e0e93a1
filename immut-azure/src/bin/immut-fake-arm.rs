//! The fake Azure Resource Manager as a standalone server on 127.0.0.1.
//!
//! ```text
//! cargo run -p immut-azure --bin immut-fake-arm -- --port 8086
//! ```
//!
//! It prints its URL and serves until Ctrl-C or SIGTERM. Point an ARM client at it with an
//! endpoint override and any bearer token (or the one `--settings '{"token": ".."}'` pins);
//! steer it through `/_fake/` (reset, faults, requests, state, settings, clock).

use std::net::SocketAddr;

use immut_azure::fake::{FakeArm, Settings};

const USAGE: &str = "usage: immut-fake-arm [--port N] [--settings JSON]\n\
  --port N         the port on 127.0.0.1 (default 0: any free port)\n\
  --settings JSON  timings, for example '{\"create_ms\": 2000}'";

fn main() -> std::process::ExitCode {
    let mut port = 0u16;
    let mut settings = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => return usage("--port needs a number from 0 to 65535"),
            },
            "--settings" => match args.next().map(|s| serde_json::from_str::<Settings>(&s)) {
                Some(Ok(s)) => settings = s,
                Some(Err(e)) => return usage(&format!("--settings: {e}")),
                None => return usage("--settings needs a JSON object"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async move {
        let fake = match FakeArm::start_with(SocketAddr::from(([127, 0, 0, 1], port)), settings).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("immut-fake-arm listening on {}", fake.url());
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot watch SIGTERM: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        fake.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

fn usage(problem: &str) -> std::process::ExitCode {
    eprintln!("error: {problem}\n{USAGE}");
    std::process::ExitCode::from(2)
}
