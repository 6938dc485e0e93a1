//! The sample service as a standalone binary; see `immut_local::sample`. Started with the
//! balancer's hidden flag it is a balancer process instead, so that a test harness (which
//! cannot serve as one) starts its balancers from this binary.

fn main() {
    immut_local::serve_if_requested();
    std::process::exit(immut_local::sample::main());
}
