#!/usr/bin/env bash
# Sets up what is missing, builds, and runs the whole test suite (unit, integration,
# eBPF, golden files). Run as root so the eBPF tests run; in CI (CI set) they must.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One profile for everything: the agent under test is the release binary.
cargo build --locked --release -p denet-agent -p denet-tests --bins
export DENET_AGENT_BIN="$PWD/target/release/denet-agent"
cargo test --locked --release --workspace --no-fail-fast "$@"
