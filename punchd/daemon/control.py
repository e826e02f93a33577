"""The control socket's trio side: :class:`ControlServer` (the daemon's) and
:func:`ask`/:func:`call` (a client for code already inside trio: tests, bench).

The protocol itself (one JSON object per line, the tagged union of commands) is pure and
lives in :mod:`punchd.daemon.commands`; its names are re-exported here, so
``control.Join``, ``control.decode_request`` and the rest keep working. punchctl uses
the blocking :mod:`punchd.daemon.client` instead, which imports no trio.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from punchd.errors import ControlError, PunchdError, leaf_errors, main_error

from .commands import (
    CALL_TIMEOUT_S,
    COMMANDS,
    MAX_LINE,
    Checkin,
    Command,
    Count,
    Join,
    Leave,
    List,
    Netcheck,
    Ping,
    Pull,
    Push,
    Request,
    Response,
    Status,
    _Command,
    command_call,
    convert_result,
    decode_answer,
    decode_request,
    encode_call,
    no_answer,
    not_running,
    parse_request,
)

__all__ = [
    "CALL_TIMEOUT_S", "COMMANDS", "MAX_LINE", "Checkin", "Command", "ControlServer", "Count", "Join",
    "Leave", "List", "Netcheck", "Ping", "Pull", "Push", "Request", "Response", "Status",
    "_Command", "ask", "call", "decode_request", "leaf_errors", "main_error",
    "parse_request",
]

log = logging.getLogger("punchd.control")


Handler = Callable[[Command], Awaitable[Any]]


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
        # Bound and listening under a temporary name, then renamed into place: the path
        # appears only once connecting to it works (between bind and listen a client
        # that saw the socket would be refused).
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(staging))
        finally:
            os.umask(old_umask)
        os.chmod(staging, 0o600)
        sock.listen(16)
        os.replace(staging, self.path)
        listener = trio.SocketListener(sock)
        try:
            async with listener:
                task_status.started()
                await trio.serve_listeners(self._serve, [listener])
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            response = await self._answer(stream)
            try:
                await stream.send_all(msgspec.json.encode(response) + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _answer(self, stream: trio.SocketStream) -> Response:
        """Any failure of one request is an error line for its caller: the daemon and
        every network it runs outlive a bad request."""
        try:
            line = await _read_line(stream)
            request = decode_request(line)
            return Response(ok=True, result=await self.handler(request))
        except PunchdError as exc:
            log.info("control request failed: %s", exc)
            return Response(ok=False, error=_one_line(str(exc)))
        except OSError as exc:
            # A read-only or full state disk is weather, not a bug: say what and where.
            where = f" ({exc.filename})" if exc.filename else ""
            log.warning("control request failed: %s%s", exc.strerror or exc, where)
            return Response(ok=False, error=_one_line(f"{exc.strerror or exc}{where}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return Response(ok=False, error=f"control connection lost: {exc}")
        except Exception as exc:
            log.exception("control request crashed")
            return Response(ok=False, error=_one_line(
                f"internal error ({type(exc).__name__}: {exc}); see punchd's log"))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:2000] or "request failed"


T = TypeVar("T")


async def ask(path: Path, command: Command, result: type[T]) -> T:
    """One typed command, its answer decoded as ``result``
    (:data:`punchd.daemon.results.RESULTS`)."""
    cmd, args = command_call(command)
    return convert_result(cmd, await call(path, cmd, args), result)


async def call(path: Path, cmd: str, args: dict[str, Any] | None = None) -> Any:
    """The wire-level call: one request line, one answer line (JSON builtins);
    errors become ControlError."""
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise not_running(path, exc) from exc
    async with stream:
        with trio.move_on_after(CALL_TIMEOUT_S) as scope:
            await stream.send_all(encode_call(cmd, args))
            line = await _read_line(stream)
        if scope.cancelled_caught:
            raise no_answer(cmd)
    return decode_answer(line)
