#!/usr/bin/env bash
# Sets up what is missing, builds, and runs the whole test suite (unit, integration,
# eBPF, golden files). Run as root so the eBPF tests run; in CI (CI set) they must.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tests.sh
# The job-history and serve tests (tests/tests/it/history_db.rs, serve_api.rs) create and drop their own
# databases through this admin URL; setup-tests.sh (as root) starts the server and
# creates the role. Not root and no local server: left unset, so those tests skip
# (and fail in CI).
if [ -n "${DENET_TEST_PG_URL:-}" ] || [ "$(id -u)" -eq 0 ] \
  || pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  export DENET_TEST_PG_URL="${DENET_TEST_PG_URL:-postgres://denet:denet@127.0.0.1:5432/postgres}"
fi
# One profile for everything: the agent under test is the release binary.
cargo build --locked --release -p denet-agent -p denet-tests --bins
export DENET_AGENT_BIN="$PWD/target/release/denet-agent"
# The Debian package and tarball (tests/tests/it/shared_node.rs installs the package).
cargo xtask dist >/dev/null
export DENET_DIST_DIR="$PWD/target/dist"
# The Python wheel (tests/tests/it/python_api.rs installs it into a fresh venv).
cargo xtask wheel >/dev/null
export DENET_WHEEL_DIR="$PWD/target/wheels"
# The integration tests are one binary (tests/tests/it); its tests run one at a time,
# since many of them time the kernel or the CPU and would disturb each other.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}"
status=0
cargo test --locked --release --workspace --exclude denet-ebpf --no-fail-fast "$@" || status=$?
# The kernel matrix (docs/kernels.md): the eBPF tests again on Debian's stock 6.1 and
# 6.12 kernels, booted under QEMU. Skipped when the call names tests to run.
if [ $# -eq 0 ]; then
  cargo xtask kernel-test || status=$?
fi
exit "$status"
