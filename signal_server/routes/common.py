"""What every route shares: the operation record, authentication, decoding, error answers.

An :class:`Operation` is one (method, path) of the API with everything the OpenAPI
document says of it next to its handler. :func:`endpoint` turns the operations of one
path into one Starlette endpoint: it checks the declared security before the handler
runs (so the document's security is the one enforced) and answers a
:class:`~punchd.errors.ServiceError` as ``{"error", "field"}`` with its status.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from punchd.errors import Invalid, PunchdError, ServiceError, Unauthorized
from punchd.wire import api
from punchd.wire.signing import Signed, verify_request

from ..service import Service
from ..store import Store

if TYPE_CHECKING:
    from ..dist import Wheelhouse

log = logging.getLogger("signal_server.api")

T = TypeVar("T")
_PATH_RE = re.compile(r"at `\$((?:\.[A-Za-z_]\w*|\[\d+\])*)`$")
_NAMED_RE = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
# Every route's body is read whole before anything else (the signature covers it), so
# it is bounded first: the largest legitimate body (a join with every candidate) is a
# few KiB.
MAX_BODY = 64 * 1024

# Who may call: the admin bearer token; a joined node's signature (its nonce is
# remembered, so no replays); a joining node's signature (its key is unknown until the
# join commits, which remembers the nonce itself); anyone.
Security = Literal["admin", "node", "joining", "none"]
Method = Literal["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Context:
    """What build_app gives every handler."""

    service: Service
    admin_token: str
    operations: Sequence[Operation]
    dist: Wheelhouse | None = None  # what /dist/ serves; None: no wheelhouse


@dataclass(frozen=True)
class Call:
    """One authenticated request as a handler sees it."""

    request: Request
    ctx: Context
    signed: Signed | None = None  # the node's verified signature, on node and joining calls

    @property
    def service(self) -> Service:
        return self.ctx.service

    @property
    def signer(self) -> str:
        """The signing key of the calling node (node and joining calls only)."""
        assert self.signed is not None, "a node route must declare node security"
        return self.signed.key

    def path(self, param: str) -> str:
        """A ``{network}``/``{node}`` path segment, held to the Name rule of the bodies."""
        return path_name(self.request, param)

    async def body(self, type_: type[T]) -> T:
        return await decode_body(self.request, type_)


Handler = Callable[[Call], Awaitable[Response]]


def network_read(read: Callable[[Store, str], object]) -> Handler:
    """The handler of a plain look at one network: ``read(store, {network})`` as JSON."""

    async def handler(call: Call) -> Response:
        return json_response(await call.service.call(read, call.service.store,
                                                     call.path("network")))

    return handler


@dataclass(frozen=True)
class Operation:
    """One (method, path): its handler and all that the OpenAPI document says of it."""

    method: Method
    path: str
    summary: str
    security: Security
    handler: Handler
    request: Any = None  # the body's Struct
    response: Any = None  # the success body's type; None for an empty answer
    status: int = 200
    media: str = "application/json"  # of the success body
    query: tuple[dict[str, Any], ...] = ()  # OpenAPI parameter objects
    unavailable: bool = False  # may answer 5XX when the server lacks a component


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def error_response(status: int, reason: str, field: str | None) -> Response:
    return json_response(api.ErrorBody(error=reason, field=field), status)


def no_content() -> Response:
    return Response(status_code=204)


def error_field(message: str) -> str | None:
    """The field a msgspec ValidationError is about, e.g. ``candidates[0].address``.

    msgspec names the container in ``at `$.path``` and, for a missing or unknown
    field, the field itself in backquotes; the answer joins them.
    """
    match = _PATH_RE.search(message)
    path = match.group(1).lstrip(".") if match else ""
    named = _NAMED_RE.search(message)
    if named is not None:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


_NAME_TYPE: Any = api.Name


def path_name(request: Request, param: str) -> str:
    """A ``{network}``/``{node}`` path segment, held to the Name rule of the bodies."""
    value: str = request.path_params[param]
    try:
        msgspec.convert(value, _NAME_TYPE)
    except msgspec.ValidationError as exc:
        raise Invalid(f"{param} {value!r} is not a valid name (lower-case DNS label)",
                      param) from exc
    return value


async def decode_body(request: Request, type_: type[T]) -> T:
    """The body as ``type_``; anything else is :class:`Invalid` naming the field."""
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc), error_field(str(exc))) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"malformed JSON: {exc}") from exc


def require_admin(request: Request, admin_token: str) -> None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    # An empty token never matches, whatever the server was given.
    if scheme.lower() != "bearer" or not token or not admin_token \
            or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise Unauthorized("admin token required")


async def verified(request: Request) -> Signed:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = await request.body()
    return verify_request(dict(request.headers), request.method, path, body)


async def _authenticate(op: Operation, request: Request, ctx: Context) -> Call:
    if op.security == "admin":
        require_admin(request, ctx.admin_token)
        return Call(request, ctx)
    if op.security == "none":
        return Call(request, ctx)
    signed = await verified(request)
    if op.security == "node":  # once per signed request: no replays
        await ctx.service.call(ctx.service.store.remember_request, signed.key, signed.nonce,
                               signed.timestamp)
    return Call(request, ctx, signed)


def endpoint(operations: Sequence[Operation], ctx: Context
             ) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of one path: dispatch by method, authenticate, answer errors."""
    by_method: dict[str, Operation] = {op.method: op for op in operations}
    if "GET" in by_method:  # Starlette routes HEAD with GET
        by_method.setdefault("HEAD", by_method["GET"])

    async def answer(op: Operation, request: Request) -> Response:
        try:
            return await op.handler(await _authenticate(op, request, ctx))
        except ServiceError as exc:
            return error_response(exc.status, exc.reason, exc.field)
        except PunchdError as exc:
            # Ours but not the caller's fault (a store row that does not decode): one
            # line in the log, a 500 without the detail, and the server serves on.
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return error_response(500, "internal error (see the server log)", None)

    async def serve(request: Request) -> Response:
        op = by_method[request.method]  # the route admits only these methods
        started = time.perf_counter()
        response = await answer(op, request)
        # By the route's template: the raw path is the caller's to choose (cardinality).
        ctx.service.metrics.observe(request.method, op.path, response.status_code,
                                    time.perf_counter() - started)
        return response

    return serve


class BodyLimit:
    """ASGI wrapper: a body over ``limit`` gets 413 before any handler reads it.

    Content-Length is checked first; a chunked body is counted while it streams,
    so neither is ever held in memory beyond the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, length.isdigit())
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send, True)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # then http.disconnect, for streaming routes
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, too_large: bool) -> None:
        status, reason = (413, f"request body larger than {self.limit} bytes") if too_large \
            else (400, "malformed Content-Length")
        body = msgspec.json.encode(api.ErrorBody(error=reason))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
