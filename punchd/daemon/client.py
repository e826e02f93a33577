"""punchctl's control-socket client, blocking: connect, one line out, one line in.

punchctl runs one request per process, so an event loop buys nothing and importing trio
cost it most of half a second (``punchctl status`` is what users run all day). This
module imports only :mod:`socket` and the pure protocol (:mod:`.commands`); the daemon's
server and the trio client for code already in a loop are in :mod:`.control`.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, TypeVar

from punchd.errors import ControlError

from .commands import (
    CALL_TIMEOUT_S,
    MAX_LINE,
    Command,
    command_call,
    convert_result,
    decode_answer,
    encode_call,
    no_answer,
    not_running,
)

T = TypeVar("T")


def ask(path: Path, command: Command, result: type[T], *,
        timeout: float = CALL_TIMEOUT_S) -> T:
    """One typed command, its answer decoded as ``result``
    (:data:`punchd.daemon.results.RESULTS`)."""
    cmd, args = command_call(command)
    return convert_result(cmd, call(path, cmd, args, timeout=timeout), result)


def call(path: Path, cmd: str, args: dict[str, Any] | None = None, *,
         timeout: float = CALL_TIMEOUT_S) -> Any:
    """The wire-level call: one request line, one answer line (JSON builtins), the
    whole exchange within ``timeout``; every failure is ControlError."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except TimeoutError:
            raise no_answer(cmd) from None
        except OSError as exc:
            raise not_running(path, exc) from exc
        try:
            sock.sendall(encode_call(cmd, args))
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise no_answer(cmd) from None
        except OSError as exc:
            # The daemon went away mid-answer (restart, crash): say so, in one line.
            raise ControlError(f"control connection lost: {exc.strerror or exc}") from exc
    return decode_answer(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first newline (or EOF); the deadline bounds the whole read, not
    each ``recv``, so a daemon trickling bytes cannot hold punchctl forever."""
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ControlError("control message too long")
    return buf.split(b"\n", 1)[0]
