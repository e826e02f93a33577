"""punchd's client for the signal server API (async, trio via httpx).

Every request is signed with the node's Ed25519 key (:mod:`punchd.wire.signing`).
Transport failures become :class:`~punchd.errors.ServerUnreachable` (the caller
retries with backoff); refusals become :class:`~punchd.errors.APIError` with the
server's reason and field.

    client = ServerClient(url, signing_key)
    joined = await client.join(token, name=..., wg_public_key=..., probe_public_key=..., listen_port=...)
    snap = await client.get_state()
    async with client.events(since=snap.seq) as stream:
        async for event in stream: ...
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar, cast

import httpx
import msgspec
import trio
from nacl.signing import SigningKey

from punchd.errors import APIError, ServerUnreachable
from punchd.wire import api
from punchd.wire.signing import b64, sign_request
from punchd.wire.token import JoinToken

T = TypeVar("T")
# Requests in flight at once (the event stream aside). With a thousand peers, a
# thousand relay requests queued inside httpcore's pool cost O(queued * connections)
# on every state change: most of punchd's CPU at start-up (issue #22). Queued here
# instead, they wait in a FIFO that costs nothing.
MAX_IN_FLIGHT = 8


class ServerClient:
    def __init__(self, server_url: str, signing_key: SigningKey, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 10.0) -> None:
        self.server_url = server_url.rstrip("/")
        self.signing_key = signing_key
        self._http = httpx.AsyncClient(base_url=self.server_url, transport=transport,
                                       timeout=timeout)
        self._in_flight = trio.CapacityLimiter(MAX_IN_FLIGHT)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        headers = sign_request(self.signing_key, method, path, body)
        headers["content-type"] = "application/json"
        return headers

    async def _request(self, method: str, path: str, body: Any, type_: type[T]) -> T:
        content = b"" if body is None else msgspec.json.encode(body)
        full = "/api/v1" + path
        try:
            async with self._in_flight:
                resp = await self._http.request(method, full, content=content,
                                                headers=self._headers(method, full, content))
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"{self.server_url}: {exc!r}") from exc
        _raise_for_status(resp.status_code, resp.content)
        if type_ is type(None):
            return None  # type: ignore[return-value,unused-ignore]
        try:
            return msgspec.json.decode(resp.content, type=type_)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise APIError(resp.status_code, f"unexpected answer: {exc}") from exc

    async def join(self, token: JoinToken, *, name: str | None, wg_public_key: str,
                   probe_public_key: str, listen_port: int,
                   candidates: tuple[api.Candidate, ...] = ()) -> api.JoinResponse:
        req = api.JoinRequest(
            access_key=token.key, signing_key=b64(bytes(self.signing_key.verify_key)),
            wg_public_key=wg_public_key, probe_public_key=probe_public_key,
            listen_port=listen_port, name=name, candidates=candidates,
        )
        return await self._request("POST", "/join", req, api.JoinResponse)

    async def get_state(self) -> api.NetworkSnapshot:
        return await self._request("GET", "/node", None, api.NetworkSnapshot)

    async def update_self(self, update: api.NodeUpdate) -> api.Node:
        return await self._request("PATCH", "/node", update, api.Node)

    async def submit_keys(self, wg_public_key: str, probe_public_key: str) -> api.Node:
        """This node's new public keys, for the rotation the admin asked."""
        return await self._request("POST", "/node/keys",
                                   api.KeyRotation(wg_public_key=wg_public_key,
                                                   probe_public_key=probe_public_key), api.Node)

    async def request_punch(self, peer: str) -> api.PunchRequest:
        return await self._request("POST", "/punch", api.PunchCreate(peer=peer), api.PunchRequest)

    async def relay(self, peer: str) -> api.RelayAllocation:
        """This node's side of the relay allocation with ``peer`` (get or create)."""
        return await self._request("POST", "/relay", api.RelayCreate(peer=peer),
                                   api.RelayAllocation)

    async def leave(self) -> None:
        await self._request("DELETE", "/node", None, type(None))

    @asynccontextmanager
    async def events(self, since: int | None) -> AsyncIterator[AsyncIterator[api.Event]]:
        """The network's event stream (SSE), resuming after ``since``."""
        path = "/api/v1/events" + (f"?since={since}" if since is not None else "")
        try:
            async with self._http.stream(
                "GET", path, headers=self._headers("GET", path, b""),
                timeout=httpx.Timeout(self._http.timeout.connect, read=35.0),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for_status(resp.status_code, resp.content)
                async with aclosing(_parse_sse(resp)) as events:
                    yield events
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"event stream: {exc!r}") from exc


async def _parse_sse(resp: httpx.Response) -> AsyncGenerator[api.Event, None]:
    data: list[str] = []
    # httpx's aiter_lines is an async generator, typed as an iterator.
    async with aclosing(cast(AsyncGenerator[str, None], resp.aiter_lines())) as lines:
        async for line in lines:
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                try:
                    yield api.event_decoder.decode("".join(data))
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    raise APIError(200, f"malformed event from the server: {exc}") from exc
                data = []
    raise ServerUnreachable("event stream closed by the server")


def _raise_for_status(status: int, content: bytes) -> None:
    if status < 400:
        return
    try:
        err = msgspec.json.decode(content, type=api.ErrorBody)
        raise APIError(status, err.error, err.field)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise APIError(status, content[:200].decode(errors="replace")) from None
