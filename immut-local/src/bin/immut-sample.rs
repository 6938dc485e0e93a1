//! The sample service as a standalone binary; see `immut_local::sample`. Started with
//! `immut_local::BALANCER_FLAG` it is a balancer process instead, so that a test harness (which
//! cannot be one) can point `BalancerBuilder::executable` at it.

fn main() {
    immut_local::serve_if_requested();
    std::process::exit(immut_local::sample::main());
}
