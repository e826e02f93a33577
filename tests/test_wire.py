"""Join tokens and request signatures."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from punchd.errors import TokenError, Unauthorized
from punchd.wire import api
from punchd.wire.signing import sign_request, verify_request
from punchd.wire.token import decode_token, encode_token


def test_token_round_trip() -> None:
    token = encode_token("http://203.0.113.10:8080", "office", "s3cret")
    assert "=" not in token
    decoded = decode_token(token)
    assert (decoded.server, decoded.network, decoded.key) == ("http://203.0.113.10:8080",
                                                              "office", "s3cret")


@pytest.mark.parametrize("bad", ["", "not a token", "eyJ2IjoyfQ", base64.urlsafe_b64encode(
    b'{"v":1,"server":"ftp://x","network":"n","key":"k"}').decode()])
def test_bad_tokens_raise_token_error(bad: str) -> None:
    with pytest.raises(TokenError):
        decode_token(bad)


@given(st.text(max_size=200))
def test_token_decoder_never_raises_anything_else(text: str) -> None:
    try:
        decode_token(text)
    except TokenError:
        pass


KEY = SigningKey(b"\x01" * 32)


def signed(method: str = "POST", path: str = "/api/v1/node", body: bytes = b"{}",
           now: float = 1000.0) -> dict[str, str]:
    return sign_request(KEY, method, path, body, now=now)


def test_signature_verifies_and_names_the_signer() -> None:
    signer = verify_request(signed(), "POST", "/api/v1/node", b"{}", now=1001)
    assert base64.b64decode(signer.key) == bytes(KEY.verify_key)
    assert signer.timestamp == 1000.0


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/node", b"{}"), ("POST", "/api/v1/punch", b"{}"),
    ("POST", "/api/v1/node", b'{"x":1}'),
])
def test_any_change_to_the_request_breaks_the_signature(method: str, path: str, body: bytes) -> None:
    with pytest.raises(Unauthorized, match="bad request signature"):
        verify_request(signed(), method, path, body, now=1000)


@pytest.mark.parametrize("timestamp", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_non_finite_timestamp_is_refused(timestamp: str) -> None:
    # nan compared false with the skew bound, so it passed the window check.
    from punchd.wire.signing import HEADER_SIG, HEADER_TIME, signed_text
    headers = signed()
    headers[HEADER_TIME] = timestamp
    text = signed_text("POST", "/api/v1/node", timestamp, headers["x-punchd-nonce"], b"{}")
    headers[HEADER_SIG] = base64.b64encode(KEY.sign(text).signature).decode()
    with pytest.raises(Unauthorized, match="malformed signature timestamp"):
        verify_request(headers, "POST", "/api/v1/node", b"{}", now=1000)


def test_stale_timestamp_is_refused() -> None:
    with pytest.raises(Unauthorized, match="skew"):
        verify_request(signed(now=1000), "POST", "/api/v1/node", b"{}", now=1000 + 61)


def test_missing_header_is_refused() -> None:
    headers = signed()
    del headers["x-punchd-nonce"]
    with pytest.raises(Unauthorized, match="missing"):
        verify_request(headers, "POST", "/api/v1/node", b"{}", now=1000)


def test_event_union_round_trips() -> None:
    event = api.PeerRemoved(seq=7, node_id="abc", name="n1")
    wire = api.event_encoder.encode(event)
    assert msgspec.json.decode(wire)["kind"] == "peer_removed"
    assert api.event_decoder.decode(wire) == event


def test_api_keys_are_validated() -> None:
    with pytest.raises(msgspec.ValidationError, match="wg_public_key"):
        msgspec.json.decode(b'{"access_key":"k","signing_key":"' + b"A" * 43 + b'=",'
                            b'"wg_public_key":"short","probe_public_key":"' + b"A" * 43 + b'="}',
                            type=api.JoinRequest)
