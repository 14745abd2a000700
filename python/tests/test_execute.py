"""execute_with_monitoring against ground truth: process counts, the child's own
rusage, exit statuses, timeouts, and output that would fill a pipe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from denet_agent import Monitor, execute_with_monitoring


def processes_with(marker: str):
    """Pids of live processes whose command line contains `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def check_tracer(monitor, expect_tracer):
    if expect_tracer is not None:
        assert monitor.tracer == expect_tracer, monitor.header.get("ebpf_unavailable_reason")


def test_thousand_children_are_a_thousand_processes(tmp_path, expect_tracer):
    loop = "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done"
    code, monitor = execute_with_monitoring(["/bin/sh", "-c", loop], quiet=True)
    assert code == 0
    check_tracer(monitor, expect_tracer)
    procs = monitor.processes()
    trues = [p for p in procs if p["argv"][:1] == ["/bin/true"]]
    assert len(trues) == 1000
    assert len(procs) == 1001
    assert all(p["exit_code"] == 0 for p in trues)
    summary = monitor.get_summary()
    assert summary["process_count"] == 1001
    assert summary["lost_events"] == 0


def test_cpu_of_a_child_matches_its_rusage(tmp_path, expect_tracer):
    """A child burns 1 s of CPU; its parent reaps it with wait4 and writes the
    child's rusage (the kernel's own account): the child's process record agrees
    within 2%."""
    truth = tmp_path / "rusage.json"
    script = (
        "import json, os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 1.0: pass\n"
        "    os._exit(0)\n"
        "_, status, ru = os.wait4(pid, 0)\n"
        "json.dump({'pid': pid, 'cpu_s': ru.ru_utime + ru.ru_stime}, open(sys.argv[1], 'w'))\n"
    )
    code, monitor = execute_with_monitoring([sys.executable, "-c", script, str(truth)], quiet=True)
    assert code == 0
    check_tracer(monitor, expect_tracer)
    want = json.loads(truth.read_text())
    [child] = [p for p in monitor.processes() if p["pid"] == want["pid"]]
    traced_s = (child["cpu_user_ns"] + child["cpu_sys_ns"]) / 1e9
    assert abs(traced_s - want["cpu_s"]) <= 0.02 * want["cpu_s"], (traced_s, want)


def test_missing_command_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        execute_with_monitoring(["no-such-command-denet-test"], quiet=True)
    with pytest.raises(FileNotFoundError):
        execute_with_monitoring("/no/such/dir/tool --help", quiet=True)


def test_timeout_kills_the_tree_and_leaves_a_complete_trace(tmp_path):
    marker = "61.2345"
    out = tmp_path / "t.jsonl"
    with pytest.raises(subprocess.TimeoutExpired):
        execute_with_monitoring(["/bin/sh", "-c", f"sleep {marker} & sleep {marker}; wait"],
                                timeout=1.0, output_file=str(out), quiet=True)
    assert processes_with(marker) == []
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["kind"] == "summary" and last["timed_out"] is True
    sleeps = [p for p in Monitor(out).processes() if p["argv"][:1] == ["sleep"]]
    assert len(sleeps) == 2


def test_exit_codes_and_signals():
    assert execute_with_monitoring(["/bin/sh", "-c", "exit 3"], quiet=True)[0] == 3
    assert execute_with_monitoring(["/bin/sh", "-c", "kill -9 $$"], quiet=True)[0] == -9


def test_string_commands_split_like_a_shell_without_one(tmp_path):
    target = tmp_path / "a b.txt"
    code, _ = execute_with_monitoring(f"touch '{target}'", quiet=True)
    assert code == 0
    assert target.exists()
    code, _ = execute_with_monitoring("echo $HOME > /dev/null ; false", quiet=True)
    assert code == 0  # `echo` got the words; nothing ran `false`


def test_ten_megabytes_of_output_do_not_hang(tmp_path, capfd):
    big = "import sys; sys.stdout.write('x' * 10_000_000); sys.stderr.write('e' * 1_000_000)"
    code, _ = execute_with_monitoring([sys.executable, "-c", big], timeout=120, quiet=True)
    assert code == 0
    out, err = capfd.readouterr()
    assert len(out) == 10_000_000
    assert err.count("e") == 1_000_000
    so, se = tmp_path / "o", tmp_path / "e"
    code, _ = execute_with_monitoring([sys.executable, "-c", big], timeout=120, quiet=True,
                                      stdout_file=str(so), stderr_file=str(se))
    assert code == 0
    assert so.stat().st_size == 10_000_000 and se.stat().st_size == 1_000_000


def test_output_formats(tmp_path):
    cmd = [sys.executable, "-c", "import time; time.sleep(0.4)"]
    for fmt in ("jsonl", "json", "csv"):
        path = tmp_path / f"s.{fmt}"
        code, monitor = execute_with_monitoring(cmd, output_file=str(path), output_format=fmt,
                                                base_interval_ms=50, quiet=True)
        assert code == 0
        text = path.read_text()
        n = len(monitor.samples())
        assert n >= 3
        if fmt == "jsonl":
            assert json.loads(text.splitlines()[0])["kind"] == "header"
        elif fmt == "json":
            assert len(json.loads(text)) == n
        else:
            assert text.splitlines()[0].startswith("sample,t_s,window_ms")
            assert len(text.splitlines()) == n + 1
    with pytest.raises(ValueError):
        execute_with_monitoring(cmd, output_format="xml")


def test_env_cwd_and_limits(tmp_path):
    out = tmp_path / "o"
    code, monitor = execute_with_monitoring(
        ["/bin/sh", "-c", 'echo "$DENET_X $(pwd)"'], env={**os.environ, "DENET_X": "hello"},
        cwd=str(tmp_path), stdout_file=str(out), quiet=True)
    assert code == 0
    assert out.read_text().strip() == f"hello {tmp_path}"
    with pytest.raises(RuntimeError, match="max-pids"):
        execute_with_monitoring(["true"], max_pids=0, quiet=True)


def test_summary_has_denets_keys_and_ours():
    code, monitor = execute_with_monitoring(
        [sys.executable, "-c", "x = bytearray(64 << 20); import time; time.sleep(0.3)"],
        base_interval_ms=50, quiet=True)
    assert code == 0
    s = monitor.get_summary()
    assert 0.3 <= s["elapsed_time"] < 30
    assert s["peak_memory_mb"] >= 64
    assert s["avg_cpu_percent"] >= 0
    assert s["process_count"] == 1 and s["complete"] is True
    assert s["max_process_peak_rss_kb"] >= 64 * 1024
    samples = monitor.get_samples()
    assert samples and all(isinstance(x, str) for x in samples)
    assert {"cpu_usage", "mem_rss_kb"} <= json.loads(samples[0]).keys()


def test_an_older_output_file_is_not_taken_for_this_run(tmp_path):
    out = tmp_path / "t.jsonl"
    code, _ = execute_with_monitoring(["/bin/true"], output_file=str(out), quiet=True)
    assert code == 0 and out.exists()
    # The agent refuses the limit before it writes a trace: no stale trace comes back.
    with pytest.raises(RuntimeError):
        execute_with_monitoring(["/bin/true"], output_file=str(out), max_pids=0, quiet=True)
    assert not out.exists()
