"""`execute_with_monitoring`: run a command under `denet-agent run` and return its
trace as a Monitor."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ._binary import binary
from .monitor import Monitor, _write_samples

# Beyond the command's own timeout and the agent's grace before SIGKILL, how long
# the agent may take to write its summary before it is killed itself.
_AGENT_SLACK_S = 30.0
_KILL_GRACE_S = 2.0


def _argv(cmd: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(cmd, str):
        # Split as a POSIX shell would (quotes kept together), never run by a shell.
        argv = shlex.split(cmd)
    else:
        argv = [os.fspath(a) for a in cmd]
    if not argv:
        raise ValueError("cmd is empty")
    return argv


def _check_exists(program: str, env: Optional[Dict[str, str]], cwd: Optional[str]) -> None:
    if "/" in program:
        path = Path(cwd or ".") / program
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
        return
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        raise FileNotFoundError(errno.ENOENT, "command not found", program)


def _size(v: Union[int, str]) -> str:
    return str(v)


def execute_with_monitoring(
    cmd: Union[str, Sequence[str]],
    stdout_file: Optional[str] = None,
    stderr_file: Optional[str] = None,
    timeout: Optional[float] = None,
    base_interval_ms: int = 100,
    max_interval_ms: int = 1000,
    store_in_memory: bool = True,
    output_file: Optional[str] = None,
    output_format: str = "jsonl",
    since_process_start: bool = False,
    pause_for_attachment: bool = True,
    quiet: bool = False,
    include_children: bool = True,
    write_metadata: bool = False,
    *,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    memory_limit: Optional[Union[int, str]] = None,
    cpus: Optional[float] = None,
    max_pids: Optional[int] = None,
    files: bool = False,
    syscalls: bool = False,
    events: bool = False,
    standalone: bool = False,
) -> Tuple[int, Monitor]:
    """Runs `cmd` traced by denet-agent and returns ``(exit_code, monitor)``.

    `cmd` is a list, or a string split like a POSIX shell would (``shlex``) and never
    run through a shell. The command is held before exec until it is traced, so
    nothing it does is missed, and every process it starts is followed to its exit.

    Output: the command's stdout and stderr go to `stdout_file` / `stderr_file`
    (created or truncated) or, without them, to this process's own stdout and
    stderr (never to a pipe that could fill up). The trace is written to
    `output_file` (as "jsonl", "json" or "csv", see `output_format`) or to a
    temporary file that lives as long as the monitor.

    `exit_code` is the command's exit status, or minus the signal number when a
    signal killed it (as ``subprocess`` does).

    Raises ``FileNotFoundError`` when the command does not exist,
    ``subprocess.TimeoutExpired`` after `timeout` seconds (the whole process tree is
    killed first; the trace is complete), and ``RuntimeError`` with the agent's
    message when the run could not be traced at all.

    As an ordinary user the run is traced by the node daemon when one runs (see
    docs/node.md), else as far as `denet-agent run` can without privileges;
    ``monitor.tracer`` says which ("node", "own", or None for /proc sampling).

    `files`, `syscalls` and `events` turn on `run`'s per-file records, syscall
    counts and raw kernel events (each costs the whole machine something: docs/benchmarks.md, "What a run costs the machine");
    `memory_limit` (bytes or "4G"), `cpus` and `max_pids` are `run`'s limits;
    `standalone` loads the run's own programs instead of asking the node daemon.

    denet's `since_process_start`, `pause_for_attachment`, `include_children` and
    `write_metadata` are accepted and have no effect: the run is always traced from
    before exec, children included, with its metadata in the trace header.
    """
    del since_process_start, pause_for_attachment, include_children, write_metadata
    if output_format not in ("jsonl", "json", "csv"):
        raise ValueError(f'output_format must be "jsonl", "json" or "csv", not {output_format!r}')
    argv = _argv(cmd)
    _check_exists(argv[0], env, cwd)

    owned_dir = tempfile.mkdtemp(prefix="denet-agent-")
    try:
        if output_file is not None and output_format == "jsonl":
            trace = Path(output_file).resolve()
            # An older trace there must not pass for this run's if the agent fails
            # before writing its own.
            try:
                trace.unlink()
            except FileNotFoundError:
                pass
        else:
            trace = Path(owned_dir) / "trace.jsonl"
        agent_log = Path(owned_dir) / "agent.log"
        args = [binary(), "run", "-o", str(trace),
                "--interval-ms", str(base_interval_ms),
                "--max-interval-ms", str(max(max_interval_ms, base_interval_ms)),
                "--kill-grace", str(_KILL_GRACE_S)]
        if timeout is not None:
            args += ["--timeout", str(timeout)]
        if memory_limit is not None:
            args += ["--memory-limit", _size(memory_limit)]
        if cpus is not None:
            args += ["--cpus", str(cpus)]
        if max_pids is not None:
            args += ["--max-pids", str(max_pids)]
        if files:
            args.append("--files")
        if syscalls:
            args.append("--syscalls")
        if events:
            args.append("--events")
        if standalone:
            args.append("--standalone")
        pass_fds: Tuple[int, ...] = ()
        if stdout_file is not None:
            args += ["--stdout", str(Path(stdout_file).resolve())]
        if stderr_file is not None:
            args += ["--stderr", str(Path(stderr_file).resolve())]
        else:
            # The agent's own messages go to its log; the command's stderr to ours.
            err_fd = _stderr_dup()
            if err_fd is not None:
                args += ["--stderr-fd", str(err_fd)]
                pass_fds = (err_fd,)
        args += ["--", *argv]

        with open(agent_log, "wb") as log:
            try:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=log, env=env,
                                        cwd=cwd, pass_fds=pass_fds, start_new_session=True)
            finally:
                for fd in pass_fds:
                    os.close(fd)
            try:
                wait_s = None if timeout is None else timeout + _KILL_GRACE_S + _AGENT_SLACK_S
                try:
                    agent_rc = proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise RuntimeError("denet-agent did not finish after the timeout; killed") from None
            except BaseException:
                # Interrupted (KeyboardInterrupt): the agent stops the tree on SIGTERM.
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=_KILL_GRACE_S + _AGENT_SLACK_S)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                raise
        messages = agent_log.read_text(errors="replace")
        if not quiet and messages:
            sys.stderr.write(messages)
            sys.stderr.flush()

        try:
            monitor = Monitor(trace, exit_code=None, store_in_memory=store_in_memory,
                              _owned_dir=owned_dir)
        except (OSError, ValueError):
            raise RuntimeError(
                f"denet-agent could not trace the command (exit {agent_rc}): {messages.strip()}"
            ) from None
        owned_dir_handed_over = True
        summary = monitor.raw_summary()
        if summary is None:
            raise RuntimeError(
                f"denet-agent ended without a summary (exit {agent_rc}): {messages.strip()}")
        error = summary.get("error") or ""
        if summary.get("process_count", 0) == 0 and "not found" in error:
            raise FileNotFoundError(errno.ENOENT, error, argv[0])
        if summary.get("timed_out"):
            if output_file is not None and output_format != "jsonl":
                _write_samples(monitor, Path(output_file), output_format)
            raise subprocess.TimeoutExpired(argv, timeout or 0)
        if summary.get("exit_code") is not None:
            exit_code = summary["exit_code"]
        elif summary.get("signal") is not None:
            exit_code = -summary["signal"]
        else:
            exit_code = agent_rc
        monitor.exit_code = exit_code
        if output_file is not None and output_format != "jsonl":
            _write_samples(monitor, Path(output_file), output_format)
        return exit_code, monitor
    except BaseException:
        if not locals().get("owned_dir_handed_over"):
            shutil.rmtree(owned_dir, ignore_errors=True)
        raise


def _stderr_dup() -> Optional[int]:
    """A duplicate of this process's stderr (the agent's own fd 2 is its log), or
    None when this process has no stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    try:
        return os.dup(fd)
    except OSError:
        return None
