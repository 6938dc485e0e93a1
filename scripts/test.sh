#!/usr/bin/env bash
# The full test suite, on a fresh machine: every test of the workspace (the AWS ones against
# moto), the doctests, the local examples end to end (each must exit 0 and leave no process
# behind), and the Rust version floors.
#
# The Python test tools (moto, the clouds' official clients, parliament) live in a virtual
# environment of their own, target/test-venv, installed from scripts/python/requirements.txt
# (every package pinned, with hashes). Nothing is installed into your Python. The Node test tool
# (an IAM policy simulator) goes into target/test-node from scripts/node/package-lock.json. A
# second run reuses both; a changed pin file rebuilds them. Debian's chromium is installed when
# missing (the HTML report test renders a page with it).
#
# Usage: ./scripts/test.sh           the whole suite
#        ./scripts/test.sh --setup   only prepare the test tools (for running tests by hand)
# Environment: PYTHON (default python3) is the interpreter the environment is made from;
# IMMUT_TEST_VENV (default target/test-venv), IMMUT_TEST_NODE (default target/test-node) are
# where they go; IMMUT_CHROMIUM names another Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

setup_only=false
case "${1:-}" in
  "") ;;
  --setup) setup_only=true ;;
  -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (use --setup, or no argument for the whole suite)" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
venv=${IMMUT_TEST_VENV:-$root/target/test-venv}
requirements=scripts/python/requirements.txt

fail() {
  echo "error: $*" >&2
  exit 1
}

# Creates or refreshes the test tools' virtual environment; stops with what to install when it
# cannot. Runs before any build, so a missing tool costs seconds, not a build.
setup_test_tools() {
  local want have
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
  if [ "$want" = "$have" ] && [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import moto.server, google.cloud.compute_v1, azure.mgmt.compute, azure.mgmt.network" 2>/dev/null; then
    echo "== test tools: $venv is up to date"
    return
  fi
  command -v "$python" >/dev/null ||
    fail "$python is missing. The AWS tests run against moto, a Python package: install Python 3.9 or newer (Debian and Ubuntu: apt-get install python3 python3-venv), then run ./scripts/test.sh --setup"
  "$python" -c "import venv, ensurepip" 2>/dev/null ||
    fail "$python ($(command -v "$python")) has no venv module, which the test tools' environment needs. On Debian and Ubuntu: apt-get install python3-venv (or python3.X-venv for your version); elsewhere install Python from python.org. Then run ./scripts/test.sh --setup"
  echo "== test tools: creating $venv from $requirements"
  rm -rf "$venv"
  "$python" -m venv "$venv" || fail "$python -m venv $venv failed (see above)"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 2 --timeout 30 \
    --require-hashes --no-deps -r "$requirements"; then
    rm -rf "$venv"
    fail "could not install the pinned test tools into $venv. The first run downloads them from PyPI: check the network connection (or set PIP_INDEX_URL for a mirror), then run ./scripts/test.sh --setup"
  fi
  echo "$want" >"$venv/.requirements.sha256"
}

# Installs Debian package $1 when command $2 is missing (as root, or through passwordless sudo);
# otherwise stops with what to install. $3 says which test needs it.
apt_install() {
  local package=$1 command=$2 why=$3
  command -v "$command" >/dev/null && return
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  if ! command -v apt-get >/dev/null || { [ ${#sudo[@]} -gt 0 ] && ! sudo -n true 2>/dev/null; }; then
    fail "$command is missing ($why). Install the package $package (Debian and Ubuntu: apt-get install $package), then run this again"
  fi
  echo "== test tools: installing Debian's $package ($why)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null ||
    { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null; } ||
    fail "apt-get install $package failed (see above)"
}

# The Node test tools (an IAM policy simulator for the guardrail tests), pinned by
# scripts/node/package-lock.json, go into target/test-node (IMMUT_TEST_NODE overrides).
node_tools=${IMMUT_TEST_NODE:-$root/target/test-node}
setup_node_tools() {
  if cmp -s scripts/node/package-lock.json "$node_tools/package-lock.json" && [ -d "$node_tools/node_modules" ]; then
    echo "== test tools: $node_tools is up to date"
    return
  fi
  command -v npm >/dev/null ||
    fail "npm is missing: the guardrail tests run an IAM policy simulator on Node.js 18 or newer (Debian and Ubuntu: apt-get install nodejs npm), then run this again"
  echo "== test tools: installing scripts/node/package-lock.json into $node_tools"
  rm -rf "$node_tools"
  mkdir -p "$node_tools"
  cp scripts/node/package.json scripts/node/package-lock.json "$node_tools/"
  (cd "$node_tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
    fail "npm ci in $node_tools failed (see above). The first run downloads from the npm registry: check the network connection, then run this again"
}

command -v cargo >/dev/null || fail "cargo is missing: install Rust 1.94.1 or newer with rustup (https://rustup.rs), then run this again"
setup_test_tools
setup_node_tools
export IMMUT_TEST_NODE="$node_tools"
if [ -z "${IMMUT_CHROMIUM:-}" ]; then
  apt_install chromium chromium "the HTML report test renders a page in headless Chromium; IMMUT_CHROMIUM overrides"
fi
if [ -z "${IMMUT_PROMETHEUS:-}" ]; then
  apt_install prometheus prometheus "the analysis tests query a real Prometheus server; IMMUT_PROMETHEUS overrides"
fi
# The tests and examples that start moto read this; by hand they find target/test-venv.
export IMMUT_TEST_PYTHON="$venv/bin/python"
if $setup_only; then
  echo "test tools ready: $IMMUT_TEST_PYTHON"
  exit 0
fi

timings=()
area() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  timings+=("$(printf '%-28s %4ss' "$name" $((SECONDS - start)))")
}

# No crate may declare a rust-version below what its locked dependencies need.
area "rust-version floors" "$venv/bin/python" scripts/check-rust-version.py

# Always the same package selection (--workspace, with the facade's and the CLI's cloud features so
# that the cloud examples and every provider of `immut` are built too): a different one
# recompiles the dependencies.
sel=(--workspace --features immut/aws,immut/gcp,immut/azure,immut/state-s3,immut-cli/aws,immut-cli/gcp,immut-cli/azure,immut-cli/state-s3)
# The crash tests print how many kill points they exercised, the fault campaign its case count
# and fault mix, and the AWS figures test its call counts, so those run with their output shown.
area "tests" cargo test "${sel[@]}" --lib --bins --tests --examples -- \
  --skip survives_a_kill --skip a_crash_at_every --skip calls_of_a_rolling --skip randomized_fault_schedules
# Criterion benches in test mode run each benchmark once: a smoke test, not a measurement.
area "benches (smoke)" cargo test "${sel[@]}" --benches
area "crash tests, campaign, figures" cargo test "${sel[@]}" --test crash --test journal --test figures_aws \
  --test fault_campaign -- --show-output survives_a_kill a_crash_at_every calls_of_a_rolling randomized_fault_schedules
area "doctests" cargo test "${sel[@]}" --doc

# The examples are built with the suite's selection and run as built: `cargo run --example`
# would select other features and build the cloud SDKs a second time.
run_examples() {
  cargo build --quiet "${sel[@]}" --examples --bins
  for example in local_blue_green local_rolling local_rollback local_audit local_canary_analysis gcp_blue_green azure_blue_green; do
    echo "== cargo run --example $example"
    "target/debug/examples/$example"
    for leftover in --immut-sample-service --immut-balancer; do
      if pgrep -f -- "$leftover" >/dev/null; then
        echo "$example left processes running ($leftover):" >&2
        pgrep -af -- "$leftover" >&2
        pkill -f -- "$leftover" || true
        exit 1
      fi
    done
  done
  # Two deployers on one state URL: the second is refused, takes over from a paused first,
  # and the first wakes and stops without a call.
  echo "== immut-state-demo takeover"
  target/debug/immut-state-demo takeover
  echo "examples: 8 passed, 0 failed"
}
area "examples" run_examples

# clippy's incompatible_msrv lint checks our own code against each crate's rust-version, since
# no older toolchain can be installed to compile at the floor. The SDK crates are left out: their
# floor is the toolchain's own.
area "clippy (MSRV)" cargo clippy --quiet -p immut-core -p immut-local -p immut -p immut-cli --all-targets -- \
  -A clippy::all -D clippy::incompatible_msrv

echo
echo "== summary"
printf '%s\n' "${timings[@]}"
echo "tested against: $("$venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("moto", "google-cloud-compute", "azure-mgmt-compute", "azure-mgmt-network")))'), $("$venv/bin/python" --version), node $(node --version), $("${IMMUT_CHROMIUM:-chromium}" --version 2>/dev/null | head -1), $("${IMMUT_PROMETHEUS:-prometheus}" --version 2>/dev/null | head -1), $(rustc --version)"
