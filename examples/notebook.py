#!/usr/bin/env python3
"""Worked example for notebooks (docs/notebook.md): a denet-agent trace as pandas
tables through the Python package (docs/python.md), CPU and memory over time, the
top processes, and the same file loaded whole by polars in one call.

    pip install denet-agent[pandas,polars] matplotlib
    python examples/notebook.py trace.jsonl --out plots/

Writes plots/usage.png and plots/top.png and prints a JSON summary of what it found
(the test suite checks those numbers against `denet-agent stats --json`).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files, no display
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

import denet_agent  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    monitor = denet_agent.load(a.trace)
    # Tidy tables, units in the column names, times in seconds since the run's start.
    t = monitor.to_pandas()
    procs = t.processes.copy()
    procs["cpu_s"] = procs["cpu_user_s"] + procs["cpu_sys_s"]
    samples = t.sample_totals  # one row per sample: the whole tree
    per_proc = t.samples       # one row per process per sample

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(samples["t_s"], samples["cpu_percent"], drawstyle="steps-pre")
    ax1.set_ylabel("CPU (%, 100 = one CPU)")
    ax2.plot(samples["t_s"], samples["rss_kib"] / 1024, color="tab:green")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_xlabel("seconds since start")
    fig.suptitle(" ".join(monitor.header["argv"]))
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "usage.png"), dpi=80)

    top_cpu = procs.sort_values(["cpu_s", "pid"], ascending=[False, True]).head(10)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(top_cpu["command"].str.slice(0, 60)[::-1], top_cpu["cpu_s"][::-1])
    ax.set_xlabel("CPU time (s)")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "top.png"), dpi=80)

    # The JSONL file itself also loads whole in one call, every record kind in one
    # frame; infer the schema from every line, since kinds differ in their fields.
    pdf = pl.read_ndjson(a.trace, infer_schema_length=None)
    pprocs = pdf.filter(pl.col("kind") == "process")
    top_rss = pprocs.sort("peak_rss_kb", descending=True).select("pid", "peak_rss_kb").head(1)

    summary = monitor.get_summary()
    print(json.dumps({
        "processes": int(len(procs)),
        "samples": int(len(samples)),
        "per_process_samples": int(len(per_proc)),
        "top_cpu": [
            {"pid": int(r.pid), "command": r.command, "cpu_s": float(r.cpu_s)}
            for r in top_cpu.head(3).itertuples()
        ],
        "peak_tree_rss_kb": int(samples["rss_kib"].max()) if len(samples) else None,
        "elapsed_s": summary["elapsed_time"],
        "polars_rows": pdf.height,
        "polars_processes": pprocs.height,
        "polars_top_rss": top_rss.to_dicts()[0],
        "plots": ["usage.png", "top.png"],
    }))


if __name__ == "__main__":
    main()
