"""A trace written by `denet-agent run`, read as Python objects.

The trace is the JSONL file documented in docs/jsonl-format.md. It is read as a
stream: nothing here holds more than one record at a time unless asked for a list,
and `get_summary()` reads only the first and the last line of the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ._binary import binary

_TAIL_BYTES = 64 * 1024


def _read_last_line(path: Path) -> Optional[str]:
    """The file's last non-blank line, read from its end (a window that doubles until
    it holds the whole line), never the whole file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        window = _TAIL_BYTES
        while True:
            start = max(0, size - window)
            f.seek(start)
            tail = f.read(size - start).rstrip()
            cut = tail.rfind(b"\n")
            if cut >= 0 or start == 0:
                line = tail[cut + 1:]
                return line.decode("utf-8", errors="replace") if line.strip() else None
            window *= 2


def records(path: "os.PathLike[str] | str", kind: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """Every record of the trace at `path` after the header, in order (only those of
    `kind` when given: "process", "sample", "file", "event" or "summary").

    A last line cut off while being written (the agent was killed) is skipped; any
    other line that is not JSON raises ``ValueError`` naming the line.
    """
    with open(path, "rb") as f:
        lines = iter(f)
        next(lines, None)  # the header
        for number, raw in enumerate(lines, start=2):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n"):
                    return  # truncated last line
                raise ValueError(f"{path}: line {number} is not JSON: {e}") from None
            if kind is None or rec.get("kind") == kind:
                yield rec


@dataclass
class Tables:
    """The trace as tidy tables (pandas or polars data frames), one per record kind;
    columns and units as in `denet-agent export -f csv` (docs/jsonl-format.md)."""

    processes: Any
    samples: Any
    sample_totals: Any
    files: Any
    syscalls: Any
    run: Any


class Monitor:
    """The trace of one run.

    ``execute_with_monitoring`` returns one; ``load(path)`` makes one for an existing
    trace. Method names follow denet's ``ProcessMonitor`` where it has them.
    """

    def __init__(self, path: "os.PathLike[str] | str", *, exit_code: Optional[int] = None,
                 store_in_memory: bool = False, _owned_dir: Optional[str] = None):
        self.path = Path(path)
        self.exit_code = exit_code
        with open(self.path, "rb") as f:
            first = f.readline()
        try:
            self.header: Dict[str, Any] = json.loads(first)
        except json.JSONDecodeError:
            raise ValueError(f"{self.path}: not a denet-agent trace (no header line)") from None
        if self.header.get("kind") != "header":
            raise ValueError(f"{self.path}: not a denet-agent trace (first record is not a header)")
        self._samples: Optional[List[str]] = None
        self._owned_dir = _owned_dir
        if store_in_memory:
            self._samples = list(self._denet_samples())

    def __del__(self) -> None:
        if getattr(self, "_owned_dir", None):
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Monitor({str(self.path)!r}, exit_code={self.exit_code!r}, tracer={self.tracer!r})"

    @property
    def tracer(self) -> Optional[str]:
        """Whose kernel programs traced the run: "node" (the node daemon's), "own"
        (loaded by this run) or None (no eBPF: processes were sampled from /proc,
        see ``ebpf_unavailable_reason``)."""
        t = self.header.get("tracer")
        if t is None and self.header.get("ebpf"):
            return "own"
        return t

    @property
    def ebpf(self) -> bool:
        return bool(self.header.get("ebpf"))

    @property
    def ebpf_unavailable_reason(self) -> Optional[str]:
        return self.header.get("ebpf_unavailable_reason")

    def records(self, kind: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Streams the records after the header (see ``denet_agent.records``)."""
        return records(self.path, kind)

    def samples(self) -> List[Dict[str, Any]]:
        """The samples of the whole tree: one dict per `sample` record (the tree's
        totals, with each live process in `procs`)."""
        if self._samples is not None:
            return [json.loads(s) for s in self._samples]
        return list(self.records("sample"))

    def _denet_samples(self) -> Iterator[str]:
        for s in self.records("sample"):
            # denet's names beside ours, so code written for denet reads them.
            s["cpu_usage"] = s.get("cpu_percent")
            s["mem_rss_kb"] = s.get("rss_kb")
            yield json.dumps(s)

    def get_samples(self) -> List[str]:
        """denet's form of the samples: one JSON text per `sample` record, with
        denet's keys `cpu_usage` (= `cpu_percent`, 100 = one CPU) and `mem_rss_kb`
        (= `rss_kb`, KiB) beside ours. ``samples()`` gives them as dicts."""
        if self._samples is not None:
            return list(self._samples)
        return list(self._denet_samples())

    def processes(self) -> List[Dict[str, Any]]:
        """One dict per process record: every process of the tree, exact counters."""
        return list(self.records("process"))

    def files(self) -> List[Dict[str, Any]]:
        """One dict per file record (runs with ``files=True``)."""
        return list(self.records("file"))

    def raw_summary(self) -> Optional[Dict[str, Any]]:
        """The trace's `summary` record as written, or None when the trace has none
        (the run is still going, or the agent was killed)."""
        last = _read_last_line(self.path)
        if last is None:
            return None
        try:
            rec = json.loads(last)
        except json.JSONDecodeError:
            return None
        return rec if rec.get("kind") == "summary" else None

    def get_summary(self) -> Dict[str, Any]:
        """The run's summary as a dict: denet's keys (`elapsed_time` s,
        `peak_memory_mb` MiB of the whole tree's sampled RSS, `avg_cpu_percent`
        over the run, 100 = one CPU; and `total_time_secs`, `sample_count`,
        `peak_mem_rss_kb`, `avg_cpu_usage`, `max_processes`) followed by every field
        of the trace's summary record. Without a summary record (killed agent) the
        denet keys are computed from the records and `complete` is False."""
        s = self.raw_summary()
        out: Dict[str, Any] = {}
        if s is not None:
            wall = s.get("wall_ns") or 0
            cpu = (s.get("cpu_user_ns") or 0) + (s.get("cpu_sys_ns") or 0)
            peak_kb = s.get("peak_tree_rss_kb") or 0
            samples = s.get("samples") or 0
            max_procs = s.get("pids_peak")
            complete = True
        else:
            first = last = None
            cpu = peak_kb = samples = 0
            max_procs = 0
            for rec in self.records():
                k = rec.get("kind")
                if k == "sample":
                    samples += 1
                    ts = rec.get("ts_boot_ns")
                    first = ts if first is None else first
                    last = ts
                    peak_kb = max(peak_kb, rec.get("rss_kb") or 0)
                    max_procs = max(max_procs, rec.get("process_count") or 0)
                elif k == "process":
                    cpu += (rec.get("cpu_user_ns") or 0) + (rec.get("cpu_sys_ns") or 0)
            wall = (last - first) if first is not None and last is not None else 0
            complete = False
        elapsed = wall / 1e9
        avg_cpu = cpu * 100.0 / wall if wall else 0.0
        out.update(
            elapsed_time=elapsed,
            peak_memory_mb=peak_kb / 1024.0,
            avg_cpu_percent=avg_cpu,
            total_time_secs=elapsed,
            sample_count=samples,
            peak_mem_rss_kb=peak_kb,
            avg_cpu_usage=avg_cpu,
            max_processes=max_procs,
            complete=complete,
            tracer=self.tracer,
        )
        if s is not None:
            out.update({k: v for k, v in s.items() if k != "kind"})
        return out

    def save_samples(self, path: "os.PathLike[str] | str", format: str = "jsonl") -> None:
        """Writes the samples to `path` as "jsonl" (one per line), "json" (one array)
        or "csv" (one row per sample: the tree's totals, as `sample_totals.csv`)."""
        _write_samples(self, Path(path), format)

    def _export_csv(self, directory: Path) -> None:
        result = subprocess.run(
            [binary(), "export", "-f", "csv", "-o", str(directory), str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"denet-agent export failed: {result.stderr.strip()}")

    def _tables(self, read) -> Tables:
        with tempfile.TemporaryDirectory(prefix="denet-tables-") as d:
            self._export_csv(Path(d))
            return Tables(**{name: read(Path(d) / f"{name}.csv")
                             for name in ("processes", "samples", "sample_totals",
                                          "files", "syscalls", "run")})

    def to_pandas(self) -> Tables:
        """The trace as pandas data frames (``pip install denet-agent[pandas]``):
        integer columns are nullable ``Int64`` (empty: unknown), times in seconds
        are ``float64``, text is ``string``, flags are ``boolean``."""
        import pandas as pd

        def read(p: Path):
            cols = _header_of(p)
            return pd.read_csv(p, dtype={c: _pandas_dtype(c) for c in cols},
                               keep_default_na=False, na_values=[""])
        return self._tables(read)

    def to_polars(self) -> Tables:
        """The trace as polars data frames (``pip install denet-agent[polars]``), with
        the same column types as ``to_pandas``."""
        import polars as pl

        def read(p: Path):
            cols = _header_of(p)
            return pl.read_csv(p, schema_overrides={c: _polars_dtype(pl, c) for c in cols})
        return self._tables(read)


def _header_of(p: Path) -> List[str]:
    with open(p, encoding="utf-8") as f:
        return f.readline().rstrip("\n").split(",")


_TEXT = {"command", "argv", "exe", "source", "path", "path_source", "access", "closed_by",
         "type", "state", "op", "syscall", "hostname", "kernel", "agent_version"}
_BOOL = {"core_dumped", "path_truncated", "created", "inherited", "ebpf", "timed_out",
         "complete"}
_FLOAT = {"cpu_percent", "window_ms", "start_unix_s"}


def _kind_of_column(c: str) -> str:
    if c in _TEXT:
        return "text"
    if c in _BOOL:
        return "bool"
    if c in _FLOAT or c.endswith("_s"):
        return "float"
    return "int"


def _pandas_dtype(c: str) -> str:
    return {"text": "string", "bool": "boolean", "float": "float64", "int": "Int64"}[_kind_of_column(c)]


def _polars_dtype(pl, c: str):
    return {"text": pl.Utf8, "bool": pl.Boolean, "float": pl.Float64, "int": pl.Int64}[_kind_of_column(c)]


def _write_samples(m: Monitor, path: Path, format: str) -> None:
    if format == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for s in m.records("sample"):
                f.write(json.dumps(s) + "\n")
    elif format == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(list(m.records("sample")), f)
    elif format == "csv":
        with tempfile.TemporaryDirectory(prefix="denet-tables-") as d:
            m._export_csv(Path(d))
            shutil.copyfile(Path(d) / "sample_totals.csv", path)
    else:
        raise ValueError(f'output_format must be "jsonl", "json" or "csv", not {format!r}')


def load(path: "os.PathLike[str] | str") -> Monitor:
    """A Monitor for an existing trace (streaming: `get_summary()` of a 1 GB trace
    reads two lines)."""
    return Monitor(path)
