//! The fake Azure Resource Manager as a standalone server on 127.0.0.1.
//!
//! ```text
//! cargo run -p immut-azure --bin immut-fake-arm -- --port 8086
//! ```
//!
//! It prints its URL and serves until Ctrl-C or SIGTERM. Point an ARM client at it with an
//! endpoint override and any bearer token (or the one `--settings '{"token": ".."}'` pins);
//! steer it through `/_fake/` (reset, faults, requests, state, settings, clock).

fn main() -> std::process::ExitCode {
    immut_fake::standalone::main::<immut_azure::fake::FakeArm>("immut-fake-arm", r#"{"create_ms": 2000}"#)
}
