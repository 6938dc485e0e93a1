//! What every example shares, whatever its provider: progress lines from the engine's events
//! and the runner that turns the example's result into an exit code.
#![allow(dead_code)]

use std::time::Instant;

use immut::engine::Event;
use immut::strategy::Decision;

/// Turns engine events into one readable line each.
#[derive(Default)]
pub struct Printer {
    start: Option<Instant>,
    last_wait: String,
}

impl Printer {
    pub fn print(&mut self, event: &Event) {
        let t = self.start.get_or_insert_with(Instant::now).elapsed().as_secs_f64();
        match event {
            Event::Step { decision: Decision::Wait { reason, .. }, .. } => {
                if *reason == self.last_wait {
                    return;
                }
                self.last_wait = reason.clone();
            }
            Event::Step { .. } => return,
            _ => {}
        }
        let line = event.to_string();
        println!("[{t:6.1}s] {line}");
    }
}

/// Runs an example body on a multi-threaded runtime and turns its result into the exit code.
pub fn run(
    body: impl std::future::Future<Output = Result<bool, Box<dyn std::error::Error>>>,
) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match runtime.block_on(body) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
