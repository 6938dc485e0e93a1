#!/usr/bin/env bash
# The full test suite, on a fresh machine: every test of the workspace, the doctests, and the
# local examples end to end (each must exit 0 and leave no process behind).
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup first" >&2; exit 1; }

# Always the same package selection (--workspace): a different one recompiles the dependencies.
# The crash tests print how many kill points they exercised, so they run with their output shown.
cargo test --workspace --all-targets -- --skip survives_a_kill --skip a_crash_at_every
cargo test --workspace --test crash --test journal -- --show-output survives_a_kill a_crash_at_every
cargo test --workspace --doc

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
