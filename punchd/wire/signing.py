"""Signed requests: every node request carries an Ed25519 signature over what it asks.

The signed text binds method, path with query, a timestamp, a random nonce and the
SHA-256 of the body, so a captured request cannot be replayed (the server's nonce
store), delayed (timestamp window) or altered (signature). No shared secret ever crosses the wire,
so plain HTTP in the lab is still safe against spoofing; TLS adds privacy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
import time
from typing import NamedTuple

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from punchd.errors import Unauthorized

HEADER_KEY = "x-punchd-node"
HEADER_TIME = "x-punchd-timestamp"
HEADER_NONCE = "x-punchd-nonce"
HEADER_SIG = "x-punchd-signature"

MAX_SKEW_S = 60.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized("malformed base64 in a signature header") from exc


def signed_text(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"punchd-v1\n{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign_request(key: SigningKey, method: str, path: str, body: bytes, *,
                 now: float | None = None) -> dict[str, str]:
    """Headers that authenticate one request (``path`` includes the query string)."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    sig = key.sign(signed_text(method, path, timestamp, nonce, body)).signature
    return {
        HEADER_KEY: b64(bytes(key.verify_key)),
        HEADER_TIME: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIG: b64(sig),
    }


class Signed(NamedTuple):
    """A request whose signature verified: who signed it, and what makes it unique."""

    key: str  # the signer's Ed25519 public key, base64
    nonce: str
    timestamp: float


def verify_request(headers: dict[str, str], method: str, path: str, body: bytes, *,
                   now: float | None = None) -> Signed:
    """Check a signature and its clock window; raises Unauthorized.

    Replay is the caller's part (the signal server keeps each known key's nonces in
    its store, so a restart forgets none): a nonce is only worth remembering once the
    key is known to belong to a node, or the cache becomes anyone's to fill.
    """
    now = time.time() if now is None else now
    try:
        key_b64 = headers[HEADER_KEY]
        timestamp = headers[HEADER_TIME]
        nonce = headers[HEADER_NONCE]
        sig = unb64(headers[HEADER_SIG])
    except KeyError as exc:
        raise Unauthorized(f"missing signature header {exc.args[0]}") from exc
    try:
        sent = float(timestamp)
    except ValueError as exc:
        raise Unauthorized("malformed signature timestamp") from exc
    # nan compares false with everything, so it would pass the window test below.
    if not math.isfinite(sent):
        raise Unauthorized("malformed signature timestamp")
    if abs(now - sent) > MAX_SKEW_S:
        raise Unauthorized("request timestamp outside the allowed clock skew")
    if not 16 <= len(nonce) <= 64 or not nonce.isascii() or not nonce.isalnum():
        raise Unauthorized("malformed nonce")
    try:
        VerifyKey(unb64(key_b64)).verify(signed_text(method, path, timestamp, nonce, body), sig)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise Unauthorized("bad request signature") from exc
    return Signed(key_b64, nonce, sent)
