#!/usr/bin/env bash
# Idempotent setup for building and running denet-agent on Debian 12 (x86_64): only
# what running needs. Installs what is missing: nightly rust-src, LLVM dev headers, a
# bpf-linker built against the same LLVM major as rustc, and mounts tracefs. What the
# tests need besides (browsers, databases, test users' tools) is scripts/setup-tests.sh.
# Works as root without sudo, and as a user with sudo.
set -euo pipefail

LOG_NAME=setup
# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# Pinned: the newest aya set that builds with the rustc available here.
NIGHTLY="${DENET_NIGHTLY:-nightly}"
BPF_LINKER_VERSION="${DENET_BPF_LINKER_VERSION:-}"

# 1. Rust toolchains: stable (host) and nightly with rust-src (eBPF build-std).
command -v rustup >/dev/null || { log "rustup is required"; exit 1; }
rustup toolchain list | grep -q "^${NIGHTLY}" || rustup toolchain install "$NIGHTLY" --profile minimal
if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to $NIGHTLY"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

# 2. LLVM major of rustc (bpf-linker must match it).
llvm_major() { rustc +"$1" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'; }
NIGHTLY_LLVM=$(llvm_major "$NIGHTLY")
log "nightly rustc uses LLVM $NIGHTLY_LLVM"

# 3. System packages: LLVM dev for bpf-linker.
apt_install "llvm-${NIGHTLY_LLVM}-dev" "libpolly-${NIGHTLY_LLVM}-dev" libzstd-dev zlib1g-dev

# 4. bpf-linker built against the same LLVM major.
# bpf-linker 0.13 does not print its LLVM version: read the libLLVM it links against.
linker_llvm() {
  local v
  v=$(bpf-linker --version 2>/dev/null | sed -n 's/.*LLVM \([0-9]*\).*/\1/p')
  [ -n "$v" ] || v=$(ldd "$(command -v bpf-linker)" 2>/dev/null | sed -n 's/.*libLLVM[.so-]*\([0-9][0-9]*\).*/\1/p' | head -n1)
  echo "$v"
}
need_linker=1
if command -v bpf-linker >/dev/null; then
  have=$(linker_llvm || true)
  if [ -n "$have" ] && [ "$have" = "$NIGHTLY_LLVM" ]; then need_linker=0; else
    log "bpf-linker uses LLVM '${have:-unknown}', rustc uses $NIGHTLY_LLVM: rebuilding"
  fi
fi
if [ $need_linker -eq 1 ]; then
  log "cargo install bpf-linker (LLVM $NIGHTLY_LLVM), about a minute"
  ver_args=()
  [ -n "$BPF_LINKER_VERSION" ] && ver_args=(--version "$BPF_LINKER_VERSION")
  PATH="/usr/lib/llvm-${NIGHTLY_LLVM}/bin:$PATH" \
    cargo install bpf-linker "${ver_args[@]}" --no-default-features --features "llvm-${NIGHTLY_LLVM}" --force
fi

# 5. tracefs (classic tracepoints and bpftrace use it; tp_btf programs do not need it).
if [ "$(id -u)" -eq 0 ] && [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/trace_pipe ]; then
  log "mounting tracefs at /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing || log "tracefs mount failed (continuing)"
fi
log "ok"
