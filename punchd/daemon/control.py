"""The control socket protocol between punchctl and punchd: one JSON object per line.

Request ``{"cmd": "status", "args": {...}}``; response ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one line for the user"}``. The socket is 0600: only
root talks to the daemon.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import msgspec
import trio
from msgspec import Meta

from punchd.errors import ControlError, PunchdError
from punchd.wire.api import Name

from .state import IfName

log = logging.getLogger("punchd.control")
MAX_LINE = 1 << 20


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The envelope on the wire; :func:`parse_request` turns it into a typed command."""

    cmd: str
    args: dict[str, Any] = {}


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None


# One Struct per command, its arguments typed and constrained, so a wrong-typed argument
# is a one-line "bad arguments" answer and never reaches (or kills) the daemon.
class _Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="cmd"):
    pass


Count = Annotated[int, Meta(ge=1, le=20)]


class Join(_Command, frozen=True, tag="join"):
    token: Annotated[str, Meta(min_length=1, max_length=4096)]
    name: Name | None = None
    ifname: IfName | None = None


class Leave(_Command, frozen=True, tag="leave"):
    network: Name


class List(_Command, frozen=True, tag="list"):
    pass


class Status(_Command, frozen=True, tag="status"):
    network: Name | None = None


class Pull(_Command, frozen=True, tag="pull"):
    network: Name | None = None


class Push(_Command, frozen=True, tag="push"):
    network: Name | None = None


class Checkin(_Command, frozen=True, tag="checkin"):
    network: Name | None = None


class Netcheck(_Command, frozen=True, tag="netcheck"):
    network: Name | None = None


class Ping(_Command, frozen=True, tag="ping"):
    # Peers are named by the server (Node.name); only bound the length here.
    peer: Annotated[str, Meta(min_length=1, max_length=253)]
    network: Name | None = None
    count: Count = 4
    icmp: bool = False


Command = Join | Leave | List | Status | Pull | Push | Checkin | Netcheck | Ping
COMMANDS: dict[str, type[_Command]] = {
    c.__struct_config__.tag: c  # type: ignore[misc]
    for c in (Join, Leave, List, Status, Pull, Push, Checkin, Netcheck, Ping)
}


def parse_request(request: Request) -> Command:
    """The envelope's ``cmd`` and ``args`` as one typed command, or ControlError."""
    kind = COMMANDS.get(request.cmd)
    if kind is None:
        raise ControlError(f"unknown command {request.cmd[:40]!r}")
    try:
        # strict: "4" is not a count and null is not a token.
        return cast(Command, msgspec.convert(request.args, type=kind, strict=True))
    except msgspec.ValidationError as exc:
        raise ControlError(f"bad arguments for {request.cmd!r}: {exc}") from None


def decode_request(line: bytes) -> Command:
    """One control line as a typed command; ControlError for anything else."""
    try:
        envelope = msgspec.json.decode(line, type=Request)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"bad control request: {exc}") from None
    return parse_request(envelope)


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


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside trio's (strict) ExceptionGroups, flattened, so a program's
    top level can report the one that matters as one line."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def main_error(exc: BaseException) -> BaseException:
    """The error a top level reports: KeyboardInterrupt first, then ours, then any."""
    leaves = leaf_errors(exc)
    for kind in (KeyboardInterrupt, PunchdError, OSError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:2000] or "request failed"


CALL_TIMEOUT_S = 60.0


T = TypeVar("T")


async def ask(path: Path, command: Command, result: type[T]) -> T:
    """punchctl's side, typed: one command, its answer decoded as ``result``
    (:data:`punchd.daemon.results.RESULTS`); a daemon answering another shape is a
    ControlError, not a KeyError later."""
    args = msgspec.to_builtins(command)
    cmd = args.pop("cmd")
    answer = await call(path, cmd, args)
    try:
        return msgspec.convert(answer, type=result)
    except msgspec.ValidationError as exc:
        raise ControlError(f"punchd answered {cmd!r} in a shape this punchctl does not "
                           f"read ({exc}): are both the same version?") from None


async def call(path: Path, cmd: str, args: dict[str, Any] | None = None) -> Any:
    """The wire-level call: one request line, one answer line (JSON builtins);
    errors become ControlError."""
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
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"punchd answered something unreadable: {exc}") from exc
    if not response.ok:
        raise ControlError(response.error or "punchd refused the request")
    return response.result
