"""Join tokens: base64url of a msgspec Struct naming the server, network and access key.

A token is a bearer secret shown once at key creation; ``punchctl join --token T``
needs nothing else.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

from punchd.errors import TokenError
from punchd.wire.api import Name

TOKEN_VERSION = 1


class JoinToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    server: str  # base URL, e.g. "http://203.0.113.10:8080"
    # The network name becomes a directory under root's state dir: a token is hostile
    # input, so it gets the one Name rule (a DNS label: no '/', no '..').
    network: Name
    key: str  # the access key secret


def encode_token(server: str, network: str, key: str) -> str:
    raw = msgspec.json.encode(JoinToken(v=TOKEN_VERSION, server=server, network=network, key=key))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str) -> JoinToken:
    text = token.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        decoded = msgspec.json.decode(raw, type=JoinToken)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise TokenError(f"not a punchd join token: {exc}") from exc
    if decoded.v != TOKEN_VERSION:
        raise TokenError(f"join token version {decoded.v} is not supported")
    if not decoded.server.startswith(("http://", "https://")):
        raise TokenError("join token names no http(s) server")
    return decoded
