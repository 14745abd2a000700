#!/usr/bin/env python3
"""Worked example for notebooks (docs/notebook.md): load a denet-agent trace with
pandas and polars, plot CPU and memory over time, and list the top processes.

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
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402


def load(path):
    # One call loads every record; split by kind and drop the columns a kind lacks.
    df = pd.read_json(path, lines=True)
    by_kind = {k: g.dropna(axis=1, how="all") for k, g in df.groupby("kind")}
    header = by_kind["header"].iloc[0]
    procs = by_kind["process"].copy()
    samples = by_kind.get("sample", pd.DataFrame(columns=["ts_boot_ns", "procs"]))
    summary = by_kind["summary"].iloc[0] if "summary" in by_kind else None
    return header, procs, samples, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    header, procs, samples, summary = load(a.trace)
    # Times relative to the run's start; the header's clock anchor converts to wall time.
    t0 = summary["start_boot_ns"] if summary is not None else procs["start_boot_ns"].min()
    procs["command"] = procs["argv"].map(lambda v: " ".join(v)[:60])
    procs["cpu_s"] = (procs["cpu_user_ns"] + procs["cpu_sys_ns"]) / 1e9
    procs["start_s"] = (procs["start_boot_ns"] - t0) / 1e9
    procs["wall_s"] = procs["wall_ns"] / 1e9
    procs["peak_rss_mib"] = procs["peak_rss_kb"] / 1024

    # CPU and memory of the whole tree over time: one row per sample.
    samples = samples.assign(t_s=(samples["ts_boot_ns"] - t0) / 1e9)
    # Per-process samples in long form: explode the `procs` lists.
    per_proc = pd.json_normalize(
        samples[["t_s", "procs"]].to_dict("records"), record_path="procs", meta=["t_s"]
    ) if len(samples) else pd.DataFrame(columns=["t_s", "pid", "cpu_percent", "rss_kb"])

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(samples["t_s"], samples["cpu_percent"], drawstyle="steps-pre")
    ax1.set_ylabel("CPU (%, 100 = one CPU)")
    ax2.plot(samples["t_s"], samples["rss_kb"] / 1024, color="tab:green")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_xlabel("seconds since start")
    fig.suptitle(" ".join(header["argv"]))
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "usage.png"), dpi=80)

    top_cpu = procs.sort_values(["cpu_s", "pid"], ascending=[False, True]).head(10)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(top_cpu["command"][::-1], top_cpu["cpu_s"][::-1])
    ax.set_xlabel("CPU time (s)")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "top.png"), dpi=80)

    # The same file in polars, also one call; infer the schema from every line,
    # since kinds differ in their fields.
    pdf = pl.read_ndjson(a.trace, infer_schema_length=None)
    pprocs = pdf.filter(pl.col("kind") == "process")
    top_rss = pprocs.sort("peak_rss_kb", descending=True).select("pid", "peak_rss_kb").head(1)

    print(json.dumps({
        "processes": int(len(procs)),
        "samples": int(len(samples)),
        "per_process_samples": int(len(per_proc)),
        "top_cpu": [
            {"pid": int(r.pid), "command": r.command, "cpu_s": float(r.cpu_s)}
            for r in top_cpu.head(3).itertuples()
        ],
        "peak_tree_rss_kb": int(samples["rss_kb"].max()) if len(samples) else None,
        "polars_rows": pdf.height,
        "polars_processes": pprocs.height,
        "polars_top_rss": top_rss.to_dicts()[0],
        "plots": ["usage.png", "top.png"],
    }))


if __name__ == "__main__":
    main()
