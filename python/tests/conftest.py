"""Fixtures of the Python tests. They run against the installed wheel (the
integration test tests/tests/it/python_api.rs installs it into a fresh venv and runs
them as root and as an unprivileged user through the node daemon)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import denet_agent


@pytest.fixture
def expect_tracer():
    """The tracer the runs must get ("own" as root, "node" through the node daemon);
    None when the environment does not say (then any)."""
    return os.environ.get("DENET_EXPECT_TRACER")


@pytest.fixture
def python_on_path(monkeypatch):
    """`python` on PATH is this interpreter (denet's examples call `python`)."""
    bindir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    if not (bindir / "python").exists():
        pytest.fail(f"no `python` next to {sys.executable}")


@pytest.fixture
def serve(tmp_path):
    """A job service of this user on a socket in tmp_path; its socket path."""
    sock = tmp_path / "agent.sock"
    data = tmp_path / "data"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [denet_agent.binary(), "serve", "--socket", str(sock), "--data-dir", str(data)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"serve did not start: {(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
