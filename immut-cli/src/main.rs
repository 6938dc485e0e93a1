//! The `immut` binary; everything is in the `immut_cli` library.

fn main() -> std::process::ExitCode {
    immut_cli::main()
}
