"""The control socket protocol between punchctl and punchd: one JSON object per line.

Request ``{"cmd": "status", "args": {...}}``; response ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one line for the user"}``. The socket is 0600: only
root talks to the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from punchd.errors import ControlError, PunchdError

MAX_LINE = 1 << 20


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cmd: str
    args: dict[str, Any] = {}


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None


Handler = Callable[[Request], Awaitable[Any]]


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ControlError("control message too long")
    return buf.split(b"\n", 1)[0]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with listener:
                task_status.started()
                await trio.serve_listeners(self._serve, [listener])
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                line = await _read_line(stream)
                request = msgspec.json.decode(line, type=Request)
                result = await self.handler(request)
                response = Response(ok=True, result=result)
            except msgspec.DecodeError as exc:
                response = Response(ok=False, error=f"bad control request: {exc}")
            except PunchdError as exc:
                response = Response(ok=False, error=str(exc))
            try:
                await stream.send_all(msgspec.json.encode(response) + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


CALL_TIMEOUT_S = 60.0


async def call(path: Path, cmd: str, args: dict[str, Any] | None = None) -> Any:
    """punchctl's side: one request, one answer; errors become ControlError."""
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise ControlError(f"punchd is not running (no control socket at {path}: "
                           f"{exc.strerror})") from exc
    async with stream:
        request = msgspec.json.encode(Request(cmd=cmd, args=args or {}))
        with trio.move_on_after(CALL_TIMEOUT_S) as scope:
            await stream.send_all(request + b"\n")
            line = await _read_line(stream)
        if scope.cancelled_caught:
            raise ControlError(f"punchd did not answer {cmd!r} within {CALL_TIMEOUT_S:.0f} s")
    try:
        response = msgspec.json.decode(line, type=Response)
    except msgspec.DecodeError as exc:
        raise ControlError(f"punchd answered something unreadable: {exc}") from exc
    if not response.ok:
        raise ControlError(response.error or "punchd refused the request")
    return response.result
