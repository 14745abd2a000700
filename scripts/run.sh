#!/usr/bin/env bash
# Sets up what is missing, builds the agent, and traces a command:
#   scripts/run.sh                      # the bundled demo pipeline
#   scripts/run.sh -o trace.jsonl -- samtools sort in.bam -o out.bam
# Arguments are those of `denet-agent run`. Needs root for eBPF (else /proc fallback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --release -p denet-agent
agent="$PWD/target/release/denet-agent"
if [ $# -eq 0 ]; then
  out="${DENET_DEMO_OUT:-demo-trace.jsonl}"
  echo "run.sh: tracing the demo pipeline into $out" >&2
  exec "$agent" run -o "$out" -- sh "$PWD/examples/demo.sh"
fi
exec "$agent" run "$@"
