"""Traces as tables (pandas, polars), streaming loads, and the one-call loading of
a large real trace with every record kind."""

import json
import sys

import pytest

import denet_agent
from denet_agent import execute_with_monitoring, load

PROCESS_COLUMNS = [
    "pid", "ppid", "command", "argv", "exe", "execs", "start_s", "end_s", "wall_s",
    "cpu_user_s", "cpu_sys_s", "cpu_percent", "peak_rss_kib", "peak_vm_kib", "rchar_bytes",
    "wchar_bytes", "syscr_count", "syscw_count", "read_bytes", "write_bytes",
    "cancelled_write_bytes", "minflt_count", "majflt_count", "vol_ctxt_count",
    "inv_ctxt_count", "threads_count", "exit_code", "signal", "core_dumped", "source",
    "oncpu_s", "cpu_wait_s", "io_wait_s", "sleep_s", "blk_read_bytes", "blk_write_bytes",
    "net_tx_bytes", "net_rx_bytes", "syscalls_count", "runq_waits_count",
    "blk_read_ops_count", "blk_write_ops_count",
]
SAMPLE_COLUMNS = [
    "sample", "t_s", "pid", "cpu_percent", "rss_kib", "threads_count",
    "oncpu_s", "cpu_wait_s", "io_wait_s", "sleep_s", "blk_read_bytes", "blk_write_bytes",
    "net_tx_bytes", "net_rx_bytes", "syscalls_count",
]
FILE_COLUMNS = [
    "pid", "fd", "path", "path_source", "path_truncated", "access", "open_flags", "created",
    "inherited", "read_bytes", "write_bytes", "reads_count", "writes_count", "open_s",
    "close_s", "closed_by",
]


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    data = d / "in.txt"
    data.write_bytes(b"y" * 100_000)
    cmd = ["/bin/sh", "-c", f"cat {data} > {d}/out.txt; sleep 0.3; /bin/true"]
    code, monitor = execute_with_monitoring(cmd, files=True, base_interval_ms=50, quiet=True)
    assert code == 0
    return monitor


def test_pandas_tables_have_the_documented_columns_and_types(traced):
    pd = pytest.importorskip("pandas")
    t = traced.to_pandas()
    assert list(t.processes.columns) == PROCESS_COLUMNS
    assert list(t.samples.columns) == SAMPLE_COLUMNS
    assert list(t.files.columns) == FILE_COLUMNS
    assert len(t.processes) == 4  # sh, cat, sleep, true
    assert str(t.processes["pid"].dtype) == "Int64"
    assert str(t.processes["command"].dtype) == "string"
    assert str(t.processes["wall_s"].dtype) == "float64"
    assert str(t.processes["core_dumped"].dtype) == "boolean"
    cat = t.processes[t.processes["command"].str.startswith("cat")]
    assert int(cat["rchar_bytes"].iloc[0]) >= 100_000
    out = t.files[t.files["path"].str.endswith("out.txt")]
    assert int(out["write_bytes"].sum()) == 100_000
    assert isinstance(t.processes, pd.DataFrame)


def test_polars_tables_match_pandas(traced):
    pl = pytest.importorskip("polars")
    t = traced.to_polars()
    assert t.processes.columns == PROCESS_COLUMNS
    assert t.samples.columns == SAMPLE_COLUMNS
    assert t.files.columns == FILE_COLUMNS
    assert t.processes.schema["pid"] == pl.Int64
    assert t.processes.schema["command"] == pl.Utf8
    assert t.processes.schema["core_dumped"] == pl.Boolean
    assert t.processes.height == 4


def test_load_reads_the_summary_without_reading_the_records(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"kind": "header", "schema_version": 2, "ebpf": True,
                            "tracer": "own", "pid": 1, "argv": ["x"]}) + "\n")
        line = json.dumps({"kind": "sample", "ts_boot_ns": 1, "rss_kb": 5, "cpu_percent": 1,
                           "procs": []}) + "\n"
        f.write(line * 200_000)
        f.write(json.dumps({"kind": "summary", "wall_ns": 2_000_000_000, "cpu_user_ns": 10**9,
                            "cpu_sys_ns": 0, "peak_tree_rss_kb": 2048, "samples": 200_000,
                            "exit_code": 0}) + "\n")
    m = load(path)

    def no_streaming(*_a, **_k):
        raise AssertionError("get_summary streamed the records")
    monkeypatch.setattr(denet_agent.Monitor, "records", no_streaming)
    s = m.get_summary()
    assert s["elapsed_time"] == 2.0 and s["peak_memory_mb"] == 2.0
    assert s["avg_cpu_percent"] == 50.0 and s["sample_count"] == 200_000


def test_a_killed_runs_trace_still_loads(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(
        json.dumps({"kind": "header", "pid": 1, "argv": ["x"], "ebpf": False}) + "\n"
        + json.dumps({"kind": "sample", "ts_boot_ns": 1_000_000_000, "rss_kb": 100, "procs": []}) + "\n"
        + json.dumps({"kind": "sample", "ts_boot_ns": 3_000_000_000, "rss_kb": 300, "procs": []}) + "\n"
        + '{"kind":"process","pid":'
    )
    s = load(path).get_summary()
    assert s["complete"] is False and s["elapsed_time"] == 2.0 and s["peak_mem_rss_kb"] == 300
    not_a_trace = tmp_path / "no.jsonl"
    not_a_trace.write_text("hello\n")
    with pytest.raises(ValueError, match="not a denet-agent trace"):
        load(not_a_trace)


def test_a_large_real_trace_loads_in_one_call(tmp_path):
    """Every record kind, thousands of processes with different syscall sets: the
    calls docs/notebook.md shows load it whole."""
    pl = pytest.importorskip("polars")
    pd = pytest.importorskip("pandas")
    script = (
        "i=0; while [ $i -lt 6000 ]; do "
        "case $((i % 4)) in 0) /bin/true;; 1) cat /etc/hostname >/dev/null;; "
        "2) ls / >/dev/null;; 3) sh -c 'exit 1';; esac; i=$((i+1)); done"
    )
    path = tmp_path / "big.jsonl"
    code, monitor = execute_with_monitoring(["/bin/sh", "-c", script], output_file=str(path),
                                            files=True, syscalls=True, events=True,
                                            base_interval_ms=20, quiet=True)
    assert code == 0
    kinds = {json.loads(l)["kind"] for l in open(path)}
    assert kinds == {"header", "process", "sample", "file", "event", "summary"}
    df = pl.read_ndjson(path, infer_schema_length=None)
    assert df.filter(pl.col("kind") == "process").height == 6001
    pdf = pd.read_json(path, lines=True)
    assert (pdf["kind"] == "process").sum() == 6001
