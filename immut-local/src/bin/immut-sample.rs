//! The sample service as a standalone binary; see `immut_local::sample`.

fn main() {
    std::process::exit(immut_local::sample::main());
}
