"""The control socket protocol between punchctl and punchd, pure: one JSON object per line.

Request ``{"cmd": "status", "args": {...}}``; response ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one line for the user"}``. The socket is 0600: only
root talks to the daemon.

This module is the protocol without any I/O, and imports only msgspec and the API
schema: punchctl loads it on every call and must answer in milliseconds, so it may
not pull in trio (the daemon's server and trio client live in ``control.py``, the
blocking client in ``client.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, cast

import msgspec
from msgspec import Meta

from punchd.errors import ControlError
from punchd.wire.api import IfName, Name

MAX_LINE = 1 << 20
CALL_TIMEOUT_S = 60.0


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


# -- the client's side, shared by the trio client and the blocking one ----------------------

def encode_call(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    """One request line, newline included."""
    return msgspec.json.encode(Request(cmd=cmd, args=args or {})) + b"\n"


def command_call(command: Command) -> tuple[str, dict[str, Any]]:
    """A typed command as the envelope's ``cmd`` and ``args``."""
    args: dict[str, Any] = msgspec.to_builtins(command)
    return args.pop("cmd"), args


def decode_answer(line: bytes) -> Any:
    """The answer line's result (JSON builtins); a refusal or garbage is ControlError."""
    try:
        response = msgspec.json.decode(line, type=Response)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"punchd answered something unreadable: {exc}") from exc
    if not response.ok:
        raise ControlError(response.error or "punchd refused the request")
    return response.result


T = TypeVar("T")


def convert_result(cmd: str, answer: Any, result: type[T]) -> T:
    """The answer as ``result`` (:data:`punchd.daemon.results.RESULTS`); a daemon
    answering another shape is a ControlError, not a KeyError later."""
    try:
        return msgspec.convert(answer, type=result)
    except msgspec.ValidationError as exc:
        raise ControlError(f"punchd answered {cmd!r} in a shape this punchctl does not "
                           f"read ({exc}): are both the same version?") from None


def not_running(path: object, exc: OSError) -> ControlError:
    return ControlError(f"punchd is not running (no control socket at {path}: "
                        f"{exc.strerror})")


def no_answer(cmd: str) -> ControlError:
    return ControlError(f"punchd did not answer {cmd!r} within {CALL_TIMEOUT_S:.0f} s")
