#!/usr/bin/env python3
"""Makes a large trace for streaming benchmarks and tests by repeating the records of
a real trace: the header once, then the body (process, sample, file records) again
and again with pids and times shifted so every copy is a distinct, later subtree,
and one summary at the end.

    scripts/make-big-trace.py tests/data/depth.jsonl /tmp/big.jsonl --size-mb 1024
"""
import argparse
import json

PID_FIELDS = ("pid", "ppid")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--size-mb", type=float, default=1024)
    a = ap.parse_args()
    recs = [json.loads(line) for line in open(a.src)]
    header, body, summary = recs[0], recs[1:-1], recs[-1]
    agent = header["agent_pid"]
    pids = {r["pid"] for r in body if r.get("kind") == "process"}
    span = summary["end_boot_ns"] - summary["start_boot_ns"] + 1_000_000
    stride = max(pids) - min(pids) + 10
    target = int(a.size_mb * 1024 * 1024)
    written = 0
    with open(a.dst, "w") as out:
        out.write(json.dumps(header, separators=(",", ":")) + "\n")
        copy = 0
        while written < target:
            # pids wrap like the kernel's (pid_max 4194304) so they stay realistic.
            def pid(p):
                if p is None or p == agent or p not in pids and p < min(pids):
                    return p
                return (p - min(pids) + copy * stride) % 4_000_000 + 1000
            dt = copy * span
            for r in body:
                r = dict(r)
                for f in PID_FIELDS:
                    if f in r:
                        r[f] = pid(r[f])
                for f in ("start_boot_ns", "end_boot_ns", "ts_boot_ns", "open_boot_ns", "close_boot_ns"):
                    if r.get(f) is not None:
                        r[f] += dt
                if r.get("kind") == "sample":
                    r["procs"] = [dict(p, pid=pid(p["pid"])) for p in r["procs"]]
                line = json.dumps(r, separators=(",", ":")) + "\n"
                out.write(line)
                written += len(line)
            copy += 1
        summary = dict(summary, end_boot_ns=summary["start_boot_ns"] + copy * span)
        summary["wall_ns"] = summary["end_boot_ns"] - summary["start_boot_ns"]
        out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    print(f"{a.dst}: {written / 1048576:.0f} MiB, {copy} copies of {len(body)} records")


if __name__ == "__main__":
    main()
