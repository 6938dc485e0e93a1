#!/usr/bin/env bash
# The full test suite, on a fresh machine: every test of the workspace (the AWS ones against
# moto, installed here if missing), the doctests, and the local examples end to end (each must
# exit 0 and leave no process behind).
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is missing: the AWS tests run against moto, a Python package" >&2; exit 1; }

# The AWS tests start moto themselves on 127.0.0.1 and stop it when they end; it must be installed.
if ! python3 -c "import moto.server" 2>/dev/null; then
  echo "== installing moto[server] for the AWS tests"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

# Always the same package selection (--workspace, with the facade's aws feature so that the AWS
# example is built too): a different one recompiles the dependencies.
sel=(--workspace --features immut/aws)
# The crash tests print how many kill points they exercised, and the AWS figures test prints
# its call counts, so those run with their output shown.
cargo test "${sel[@]}" --lib --bins --tests --examples -- --skip survives_a_kill --skip a_crash_at_every --skip calls_of_a_rolling
# Criterion benches in test mode run each benchmark once: a smoke test, not a measurement.
cargo test "${sel[@]}" --benches
cargo test "${sel[@]}" --test crash --test journal --test figures_aws -- --show-output \
  survives_a_kill a_crash_at_every calls_of_a_rolling
cargo test "${sel[@]}" --doc

for example in local_blue_green local_rolling local_rollback local_audit; do
  echo "== cargo run --example $example"
  cargo run --quiet --example "$example"
  if pgrep -f -- "--immut-sample-service" >/dev/null; then
    echo "$example left sample processes running:" >&2
    pgrep -af -- "--immut-sample-service" >&2
    pkill -f -- "--immut-sample-service" || true
    exit 1
  fi
done
echo "examples: 4 passed, 0 failed"
