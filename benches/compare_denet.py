#!/usr/bin/env python3
"""Counts the processes the /proc-polling anchor, btraven00/denet, sees for workloads
with known process counts, next to denet-agent's records of the same workloads.

Usage: compare_denet.py AGENT_BIN [--ebpf]   (run with a python that has `denet`)
Prints one Markdown table row per workload: name, processes the workload starts,
processes denet saw, records denet-agent wrote.
"""
import json
import subprocess
import sys
import tempfile

import denet

WORKLOADS = [
    ("1000 x /bin/true (shell loop)", 1000,
     ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done"]),
    ("200 x sleep 0.01 (shell loop)", 200,
     ["sh", "-c", "i=0; while [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done"]),
    ("head, gzip, wc pipeline x 20", 60,
     ["sh", "-c", "i=0; while [ $i -lt 20 ]; do head -c 2000000 /dev/zero | gzip -1 | wc -c >/dev/null; i=$((i+1)); done"]),
]


def denet_children(cmd, ebpf):
    _, mon = denet.execute_with_monitoring(cmd, quiet=True, enable_ebpf=ebpf)
    seen = set()
    for raw in mon.get_samples():
        s = json.loads(raw) if isinstance(raw, str) else raw
        for child in s.get("children", []) or []:
            pid = child.get("pid")
            if pid is not None:
                seen.add(pid)
    return len(seen)


def agent_children(agent, cmd):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run([agent, "run", "--require-ebpf", "-o", out.name, "--"] + cmd,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        recs = [json.loads(l) for l in open(out.name)]
    header = recs[0]
    procs = [r for r in recs if r["kind"] == "process"]
    # Descendants only (the command itself is not a child), as denet counts children.
    return sum(1 for p in procs if p["pid"] != header["pid"]), recs[-1]["lost_events"]


def main():
    agent = sys.argv[1]
    ebpf = "--ebpf" in sys.argv
    for name, expected_min, cmd in WORKLOADS:
        d = denet_children(cmd, ebpf)
        a, lost = agent_children(agent, cmd)
        print(f"| {name} | {expected_min} | {d} | {a} (lost events: {lost}) |")


if __name__ == "__main__":
    main()
