"""A listener that answers ``GET /metrics`` and nothing else (``--metrics HOST:PORT``).

Shared by punchd and the signal server's unauthenticated metrics listener. It is not
a web server: one request per connection, the head read whole within
:data:`HEAD_TIMEOUT_S` and :data:`MAX_HEAD` bytes, any body ignored, the answer sent
and the connection closed. Everything but ``GET``/``HEAD`` of ``/metrics`` is a 404,
so a scanner learns nothing. The head parser is a pure function
(:func:`parse_request_head`); the trio adapter (:class:`MetricsListener`) reads,
answers and bounds the connections held at once.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .errors import ConfigError, HttpRequestError, PunchdError
from .wire.addr import Addr, format_addr

log = logging.getLogger("punchd.metrics")

# A scraper's head is a few hundred bytes; 8 KiB is what common servers allow a line.
MAX_HEAD = 8192
# Prometheus's default scrape timeout is 10 s: a client slower than this is not one.
HEAD_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0
# Connections held at once; past it a new one is closed unanswered, so a flood costs
# a bounded number of tasks and buffers.
MAX_CONNECTIONS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format 0.0.4
PATH = "/metrics"

Render = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str  # without the query


def parse_request_head(head: bytes) -> RequestHead:
    """The request line of an HTTP/1.x head (RFC 9112 §3); headers are not looked at."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0] \
            or not parts[1].startswith(b"/") or not line.isascii():
        raise HttpRequestError(f"not an HTTP/1.x request line: {line[:80]!r}")
    return RequestHead(parts[0].decode(), parts[1].decode().partition("?")[0])


def response(status: int, reason: str, body: bytes, content_type: str = "text/plain",
             *, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


async def answer(head: bytes, render: Render) -> bytes:
    """The bytes to send for ``head``: the metrics, a 404, a 400 or a 500."""
    try:
        req = parse_request_head(head)
    except HttpRequestError:
        return response(400, "Bad Request", b"bad request\n")
    if req.method not in ("GET", "HEAD") or req.path != PATH:
        return response(404, "Not Found", b"not found: only GET /metrics\n")
    try:
        body = await render()
    except PunchdError as exc:  # the state could not be read: say so, serve on
        log.error("metrics: %s", exc)
        return response(500, "Internal Server Error", b"metrics unavailable\n")
    return response(200, "OK", body, CONTENT_TYPE, head_only=req.method == "HEAD")


async def read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """The head up to its blank line; None for a head over MAX_HEAD; b"" for a client
    that went away first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return b""
        buf += chunk
    return buf


class MetricsListener:
    """``GET /metrics`` on one TCP address, answered with ``render()``."""

    def __init__(self, listen: Addr, render: Render, *,
                 sock: socket.socket | None = None) -> None:
        """``sock``: a listening socket bound to ``listen`` to serve on instead of
        binding it (tests bind port 0 and pass it); the listener owns it from here."""
        self.listen = listen
        self.render = render
        self._sock = sock
        self._held = 0

    async def _listeners(self) -> list[trio.SocketListener]:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
        host, port = self.listen
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ConfigError(f"--metrics {format_addr(self.listen)}: cannot listen: "
                              f"{exc.strerror or exc}") from exc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await self._listeners()
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._held >= MAX_CONNECTIONS:
                return  # closed unanswered: the scraper retries next interval
            self._held += 1
            try:
                await self._exchange(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client went away; nothing of ours is broken
            finally:
                self._held -= 1

    async def _exchange(self, stream: trio.SocketStream) -> None:
        head: bytes | None = b""
        with trio.move_on_after(HEAD_TIMEOUT_S):
            head = await read_head(stream)
        if head is None:
            reply = response(431, "Request Header Fields Too Large", b"request head too large\n")
        elif not head:
            return  # gone, or too slow: nothing to answer
        else:
            reply = await answer(head, self.render)
        with trio.move_on_after(SEND_TIMEOUT_S):
            await stream.send_all(reply)
