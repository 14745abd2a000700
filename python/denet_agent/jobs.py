"""A client of the job service (`denet-agent serve`, docs/serve.md).

``Client`` is synchronous, ``AsyncClient`` is the same for ``asyncio``. Both talk to
the service's Unix socket (the caller is whoever the kernel says: no token) or, with
`url` and `token`, to its TCP listener. An error answer raises ``ApiError`` with the
service's message and HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import struct
import urllib.parse
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence, Tuple, Union

DEFAULT_SOCKET = "/run/denet-agent/agent.sock"


class ApiError(Exception):
    """An error answer of the service: `status` (HTTP) and `message` (its text)."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def _default_socket() -> str:
    return os.environ.get("DENET_AGENT_SOCKET", DEFAULT_SOCKET)


def _spawn_body(name: str, cmd: Union[str, Sequence[str]], env, cwd, timeout_s, stuck_after_s,
                memory_limit, cpus, max_pids) -> Dict[str, Any]:
    import shlex

    argv = shlex.split(cmd) if isinstance(cmd, str) else [os.fspath(a) for a in cmd]
    body: Dict[str, Any] = {"name": name, "cmd": argv,
                            "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd())}
    for key, value in (("env", env), ("timeout_s", timeout_s), ("stuck_after_s", stuck_after_s),
                       ("memory_limit", memory_limit), ("cpus", cpus), ("max_pids", max_pids)):
        if value is not None:
            body[key] = dict(value) if key == "env" else value
    return body


def _query(**params: Any) -> str:
    q = {k: str(v) for k, v in params.items() if v is not None}
    return ("?" + urllib.parse.urlencode(q)) if q else ""


def _decode(status: int, data: bytes, content_type: str) -> Any:
    is_json = "json" in content_type and "ndjson" not in content_type
    value: Any = data
    if is_json:
        try:
            value = json.loads(data) if data else None
        except json.JSONDecodeError:
            value = data.decode("utf-8", errors="replace")
    if status >= 400:
        message = value.get("error") if isinstance(value, dict) else None
        raise ApiError(status, message or data.decode("utf-8", errors="replace").strip(), value)
    return value


class Client:
    """Synchronous client. ``Client()`` uses the node's service socket
    (``DENET_AGENT_SOCKET`` or /run/denet-agent/agent.sock); ``Client(socket=PATH)``
    another; ``Client(url="http://host:7878", token=...)`` a TCP listener."""

    def __init__(self, socket: Optional[str] = None, *, url: Optional[str] = None,
                 token: Optional[str] = None, timeout: Optional[float] = 30.0):
        if url is not None and socket is not None:
            raise ValueError("give either socket or url")
        self.socket = None if url is not None else (socket or _default_socket())
        self.url = urllib.parse.urlsplit(url) if url is not None else None
        if self.url is not None and self.url.scheme != "http":
            raise ValueError(f"only http:// URLs are served, not {url!r}")
        self.token = token
        self.timeout = timeout

    def _connection(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        if self.socket is not None:
            return _UnixConnection(self.socket, timeout)
        assert self.url is not None
        return http.client.HTTPConnection(self.url.hostname or "localhost",
                                          self.url.port or 80, timeout=timeout)

    def _headers(self) -> Dict[str, str]:
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; the decoded JSON answer (bytes for NDJSON and raw logs)."""
        conn = self._connection(self.timeout)
        try:
            headers = self._headers()
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return _decode(resp.status, resp.read(), resp.getheader("Content-Type") or "")
        finally:
            conn.close()

    def health(self) -> Dict[str, Any]:
        return self.request("GET", "/health")

    def spawn(self, name: str, cmd: Union[str, Sequence[str]], *, env: Optional[Dict[str, str]] = None,
              cwd: Optional[str] = None, timeout_s: Optional[float] = None,
              stuck_after_s: Optional[float] = None, memory_limit: Optional[Union[int, str]] = None,
              cpus: Optional[float] = None, max_pids: Optional[int] = None) -> Dict[str, Any]:
        """Starts a job (``POST /jobs``) running as you; returns its view (``id``,
        ``name``, ``status``). `cwd` defaults to this process's directory."""
        return self.request("POST", "/jobs", _spawn_body(name, cmd, env, cwd, timeout_s,
                                                         stuck_after_s, memory_limit, cpus, max_pids))

    def list(self) -> List[Dict[str, Any]]:
        return self.request("GET", "/jobs")

    def show(self, job_id: str) -> Dict[str, Any]:
        return self.request("GET", f"/jobs/{_seg(job_id)}")

    def stop(self, job_id: str, grace_s: Optional[float] = None) -> Dict[str, Any]:
        return self.request("POST", f"/jobs/{_seg(job_id)}/stop{_query(grace_s=grace_s)}")

    def pause(self, job_id: str) -> Dict[str, Any]:
        return self.request("POST", f"/jobs/{_seg(job_id)}/pause")

    def resume(self, job_id: str) -> Dict[str, Any]:
        return self.request("POST", f"/jobs/{_seg(job_id)}/resume")

    def trace(self, job_id: str) -> bytes:
        """The job's trace (JSONL) as far as it is written."""
        return self.request("GET", f"/jobs/{_seg(job_id)}/trace")

    def logs(self, job_id: str, stream: Optional[str] = None, follow: bool = False):
        """The tail of both streams as a dict, or with `stream` ("stdout"/"stderr")
        that whole stream as bytes; with `follow`, an iterator of ``(stream, line)``
        until the job ends."""
        if follow:
            return self._follow(job_id, stream)
        if stream is not None:
            return self.request("GET", f"/jobs/{_seg(job_id)}/logs{_query(stream=stream)}")
        return self.request("GET", f"/jobs/{_seg(job_id)}/logs")

    def _follow(self, job_id: str, stream: Optional[str]) -> Iterator[Tuple[str, str]]:
        for msg in self.stream(job_id):
            if msg.get("type") in ("stdout", "stderr") and stream in (None, msg["type"]):
                yield msg["type"], msg.get("line", "")

    def history(self, name: Optional[str] = None, status: Optional[str] = None,
                limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """Ended jobs, newest first: the history rows (docs/history.md)."""
        return self.request("GET", f"/history{_query(name=name, status=status, limit=limit)}")["rows"]

    def stream(self, job_id: str, replay: bool = True) -> Iterator[Dict[str, Any]]:
        """The job's messages as they come (``GET /jobs/{id}/stream``, a WebSocket):
        status, stdout/stderr lines, samples, processes, summary, and a final
        ``end`` with the job's view and history row, after which it stops."""
        sock = self._connection(None)
        sock.connect()
        raw = sock.sock
        try:
            raw.sendall(_upgrade_request(f"/jobs/{_seg(job_id)}/stream{_query(replay=1 if replay else None)}",
                                         self._headers()))
            frames = _Frames()
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = raw.recv(65536)
                if not chunk:
                    raise ApiError(502, "the service closed the connection during the upgrade")
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            _check_upgrade(head, rest, raw)
            frames.feed(rest)
            while True:
                for opcode, payload in frames.messages():
                    if opcode == _PING:
                        raw.sendall(_client_frame(_PONG, payload))
                    elif opcode == _CLOSE:
                        raw.sendall(_client_frame(_CLOSE, b""))
                        return
                    elif opcode == _TEXT:
                        msg = json.loads(payload)
                        yield msg
                        if msg.get("type") == "end":
                            return
                chunk = raw.recv(65536)
                if not chunk:
                    return
                frames.feed(chunk)
        finally:
            sock.close()


class AsyncClient:
    """The same API for ``asyncio``: every method is a coroutine, ``stream`` is an
    async iterator."""

    def __init__(self, socket: Optional[str] = None, *, url: Optional[str] = None,
                 token: Optional[str] = None, timeout: Optional[float] = 30.0):
        self._sync = Client(socket, url=url, token=token, timeout=timeout)

    def __getattr__(self, name: str):
        method = getattr(self._sync, name)
        if name.startswith("_") or not callable(method) or name in ("stream",):
            return method

        async def call(*args, **kwargs):
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: method(*args, **kwargs))
        return call

    async def stream(self, job_id: str, replay: bool = True) -> AsyncIterator[Dict[str, Any]]:
        s = self._sync
        if s.socket is not None:
            reader, writer = await asyncio.open_unix_connection(s.socket)
        else:
            assert s.url is not None
            reader, writer = await asyncio.open_connection(s.url.hostname or "localhost", s.url.port or 80)
        try:
            writer.write(_upgrade_request(f"/jobs/{_seg(job_id)}/stream{_query(replay=1 if replay else None)}",
                                          s._headers()))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                length = _content_length(head)
                body = await reader.read(min(length, 65536)) if length else b""
                _check_upgrade(head[:-4], body, None)
            _check_upgrade(head[:-4], b"", None)
            frames = _Frames()
            while True:
                for opcode, payload in frames.messages():
                    if opcode == _PING:
                        writer.write(_client_frame(_PONG, payload))
                    elif opcode == _CLOSE:
                        writer.write(_client_frame(_CLOSE, b""))
                        return
                    elif opcode == _TEXT:
                        msg = json.loads(payload)
                        yield msg
                        if msg.get("type") == "end":
                            return
                chunk = await reader.read(65536)
                if not chunk:
                    return
                frames.feed(chunk)
        finally:
            writer.close()


def _seg(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


# WebSocket (RFC 6455), just what reading the job stream needs.
_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def _upgrade_request(path: str, headers: Dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k != "Accept"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


def _check_upgrade(head: bytes, body: bytes, raw: Optional[socket.socket]) -> None:
    """Raises ApiError with the service's message unless the upgrade succeeded;
    `body` is what came after the headers, completed from `raw` up to its length."""
    status_line, _, _ = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status != 101:
        want = min(_content_length(head), 65536)
        if raw is not None:
            raw.settimeout(5)
            while len(body) < want:
                try:
                    chunk = raw.recv(want - len(body))
                except OSError:
                    break
                if not chunk:
                    break
                body += chunk
        text = body.decode("utf-8", errors="replace")
        try:
            message = json.loads(text[text.index("{"):]).get("error", text)
        except (ValueError, AttributeError):
            message = text.strip() or status_line.decode(errors="replace")
        raise ApiError(status or 502, message)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class _Frames:
    """Server frames in, whole messages out (continuations joined)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.partial: Optional[Tuple[int, bytes]] = None

    def feed(self, data: bytes) -> None:
        self.buf += data

    def messages(self) -> Iterator[Tuple[int, bytes]]:
        while True:
            frame = self._frame()
            if frame is None:
                return
            fin, opcode, payload = frame
            if opcode >= 0x8:  # control frames are never fragmented
                yield opcode, payload
            elif opcode == 0x0 and self.partial is not None:  # a continuation
                self.partial = (self.partial[0], self.partial[1] + payload)
                if fin:
                    yield self.partial
                    self.partial = None
            elif fin:
                yield opcode, payload
            else:
                self.partial = (opcode, payload)

    def _frame(self) -> Optional[Tuple[bool, int, bytes]]:
        b = self.buf
        if len(b) < 2:
            return None
        fin, opcode = bool(b[0] & 0x80), b[0] & 0x0F
        masked, n = bool(b[1] & 0x80), b[1] & 0x7F
        i = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, i = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, i = struct.unpack("!Q", b[2:10])[0], 10
        mask = b""
        if masked:
            if len(b) < i + 4:
                return None
            mask, i = b[i:i + 4], i + 4
        if len(b) < i + n:
            return None
        payload = bytes(b[i:i + n])
        if masked:
            payload = bytes(x ^ mask[j % 4] for j, x in enumerate(payload))
        del self.buf[:i + n]
        return fin, opcode, payload
