"""The jobs client against a real `denet-agent serve` (this user's own, on a socket
in the test's directory)."""

import asyncio
import sys

import pytest

from denet_agent.jobs import ApiError, AsyncClient, Client


def test_spawn_stream_to_the_end_and_history(serve, tmp_path):
    c = Client(socket=serve)
    assert c.health()["ok"] is True
    job = c.spawn("hello", ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 3"],
                  cwd=str(tmp_path))
    msgs = list(c.stream(job["id"]))
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert {"type": "stdout", "line": "out-line"} in msgs
    assert {"type": "stderr", "line": "err-line"} in msgs
    end = msgs[-1]["job"]
    # Non-zero within the service's startup window (5 s).
    assert end["status"] == "startup_failed" and end["exit_code"] == 3
    assert any(m["type"] == "summary" for m in msgs)
    assert c.show(job["id"])["status"] == "startup_failed"
    logs = c.logs(job["id"])
    assert logs["stdout"] == "out-line\n"
    assert c.logs(job["id"], stream="stderr") == b"err-line\n"
    assert b'"kind":"summary"' in c.trace(job["id"])
    rows = c.history(name="hello")
    assert rows and rows[0]["status"] == "startup_failed"


def test_stop_pause_resume(serve, tmp_path):
    c = Client(socket=serve)
    job = c.spawn("sleeper", ["sleep", "60"], cwd=str(tmp_path))
    for msg in c.stream(job["id"]):
        if msg["type"] == "status" and msg["status"] == "running":
            break
    c.pause(job["id"])
    assert c.show(job["id"])["paused"] is True
    c.resume(job["id"])
    c.stop(job["id"], grace_s=1)
    end = [m for m in c.stream(job["id"]) if m["type"] == "end"][0]["job"]
    assert end["status"] == "cancelled"
    assert [j["id"] for j in c.list() if j["id"] == job["id"]]


def test_errors_carry_the_services_message_and_status(serve, tmp_path):
    c = Client(socket=serve)
    with pytest.raises(ApiError) as e:
        c.show("no-such-job")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        c.spawn("bad name!", ["true"], cwd=str(tmp_path))
    assert e.value.status == 400 and "name" in e.value.message
    with pytest.raises(ApiError) as e:
        list(c.stream("no-such-job"))
    assert e.value.status == 404


def test_async_client_follows_a_job(serve, tmp_path):
    async def main():
        c = AsyncClient(socket=serve)
        job = await c.spawn("async-job", [sys.executable, "-c", "print('from python')"],
                            cwd=str(tmp_path))
        lines = []
        async for m in c.stream(job["id"]):
            if m["type"] == "stdout":
                lines.append(m["line"])
            if m["type"] == "end":
                return lines, m["job"]
    lines, end = asyncio.run(main())
    assert lines == ["from python"]
    assert end["status"] == "succeeded"


def test_logs_follow_yields_lines_until_the_end(serve, tmp_path):
    c = Client(socket=serve)
    job = c.spawn("lines", ["/bin/sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"],
                  cwd=str(tmp_path))
    assert list(c.logs(job["id"], follow=True)) == [("stdout", "1"), ("stdout", "2"), ("stdout", "3")]
