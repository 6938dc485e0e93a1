#!/usr/bin/env bash
# The full test suite, on a fresh machine: builds and runs every test of the workspace.
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is missing: install Rust from rustup first" >&2; exit 1; }

# Always the same package selection (--workspace): a different one recompiles the dependencies.
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
