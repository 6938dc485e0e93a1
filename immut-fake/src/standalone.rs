//! What every fake's standalone binary does (`immut-fake-gce`, `immut-fake-arm`): read
//! `--port` and `--settings`, serve on 127.0.0.1, print the URL, and stop on Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

/// A fake cloud that can run as a server of its own.
pub trait Standalone: Sized + Send + 'static {
    /// Its timings and switches, given as JSON with `--settings`.
    type Settings: serde::de::DeserializeOwned + Default + Send + 'static;

    /// Starts serving on `addr`.
    fn start(addr: SocketAddr, settings: Self::Settings) -> impl Future<Output = std::io::Result<Self>> + Send;

    /// Where it serves.
    fn url(&self) -> &str;

    /// Stops serving.
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// The whole `main` of a fake's binary named `name`; `example` is a `--settings` value for the
/// usage text.
pub fn main<F: Standalone>(name: &str, example: &str) -> ExitCode {
    let usage = format!(
        "usage: {name} [--port N] [--settings JSON]\n  --port N         the port on 127.0.0.1 (default 0: any free port)\n  --settings JSON  timings, for example '{example}'"
    );
    let fail = |problem: &str| {
        eprintln!("error: {problem}\n{usage}");
        ExitCode::from(2)
    };
    let mut port = 0u16;
    let mut settings = F::Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => return fail("--port needs a number from 0 to 65535"),
            },
            "--settings" => match args.next().map(|s| serde_json::from_str::<F::Settings>(&s)) {
                Some(Ok(s)) => settings = s,
                Some(Err(e)) => return fail(&format!("--settings: {e}")),
                None => return fail("--settings needs a JSON object"),
            },
            "-h" | "--help" => {
                println!("{usage}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async move {
        let fake = match F::start(SocketAddr::from(([127, 0, 0, 1], port)), settings).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{name} listening on {}", fake.url());
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot watch SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        fake.stop().await;
        ExitCode::SUCCESS
    })
}
