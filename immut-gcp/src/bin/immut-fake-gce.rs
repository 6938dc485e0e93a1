//! The fake Compute Engine API as a standalone server on 127.0.0.1.
//!
//! ```text
//! cargo run -p immut-gcp --bin immut-fake-gce -- --port 8085
//! ```
//!
//! It prints its URL and serves until Ctrl-C or SIGTERM. Point a Compute client at it with an
//! endpoint override and anonymous credentials; steer it through `/_fake/` (reset, faults,
//! requests, state, settings, clock).

fn main() -> std::process::ExitCode {
    immut_fake::standalone::main::<immut_gcp::fake::FakeGce>("immut-fake-gce", r#"{"operation_running_ms": 2000}"#)
}
