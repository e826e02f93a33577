"""The fake backend passes the conformance suite; the UAPI codec against vectors."""

from __future__ import annotations

import pytest

from punchd.errors import WireGuardError
from punchd.wg import open_backend
from punchd.wg.base import WgPeer, generate_private_key, public_key
from punchd.wg.fake import FakeBackend
from punchd.wg.uapi import encode_set, parse_errno, parse_get

from .wg_conformance import ObservedLink, run_conformance

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="  # wg(8) documentation example
PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


async def test_fake_backend_conformance() -> None:
    backend = FakeBackend()

    async def read_link(ifname: str) -> ObservedLink:
        link = backend.devices[ifname].link
        if link is None:  # never set: the fake's link is down and bare
            return ObservedLink(frozenset(), 0, False, frozenset())
        return ObservedLink(frozenset(link.addresses), link.mtu, True, frozenset(link.routes))

    await run_conformance(backend, "pdtest0", read_link)


def test_open_backend_fake() -> None:
    assert open_backend("fake").kind == "fake"


def test_public_key_matches_wireguard() -> None:
    # wg(8)'s example pair: `echo yAnz... | wg pubkey` prints HIgo...
    assert public_key(PRIV) == "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="


def test_generated_keys_are_clamped_32_bytes() -> None:
    import base64
    raw = base64.b64decode(generate_private_key())
    assert len(raw) == 32


def test_uapi_set_encoding() -> None:
    req = encode_set(private_key=PRIV, listen_port=51820, peers=(
        WgPeer(public_key=PEER, endpoint="192.0.2.1:51820",
               allowed_ips=("198.19.0.2/32", "10.0.0.0/8"), persistent_keepalive=25),))
    lines = req.decode().split("\n")
    assert lines[0] == "set=1"
    assert lines[1] == "private_key=" + __import__("base64").b64decode(PRIV).hex()
    assert lines[2] == "listen_port=51820"
    peer_at = lines.index(f"public_key={__import__('base64').b64decode(PEER).hex()}")
    assert lines[peer_at + 1:peer_at + 6] == [
        "endpoint=192.0.2.1:51820", "persistent_keepalive_interval=25",
        "replace_allowed_ips=true", "allowed_ip=10.0.0.0/8", "allowed_ip=198.19.0.2/32"]
    assert req.endswith(b"\n\n")


def test_uapi_remove_encoding() -> None:
    req = encode_set(remove=(PEER,)).decode()
    assert "remove=true" in req and req.index("public_key=") < req.index("remove=true")


def test_uapi_bad_key_is_our_error() -> None:
    with pytest.raises(WireGuardError):
        encode_set(peers=(WgPeer(public_key="short"),))


def test_uapi_get_parsing() -> None:
    import base64
    reply = (
        f"private_key={base64.b64decode(PRIV).hex()}\nlisten_port=51820\n"
        f"public_key={base64.b64decode(PEER).hex()}\nendpoint=[2001:db8::1]:51820\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
        "tx_bytes=148\nrx_bytes=92\npersistent_keepalive_interval=25\n"
        "allowed_ip=198.19.0.2/32\nprotocol_version=1\nerrno=0\n\n"
    ).encode()
    dev = parse_get("wg0", reply)
    assert dev.public_key == public_key(PRIV) and dev.listen_port == 51820
    (peer,) = dev.peers
    assert peer.public_key == PEER
    assert peer.endpoint == "[2001:db8::1]:51820"
    assert peer.last_handshake == pytest.approx(1700000000.5)
    assert (peer.rx_bytes, peer.tx_bytes, peer.persistent_keepalive) == (92, 148, 25)
    assert peer.allowed_ips == ("198.19.0.2/32",)


def test_uapi_errors() -> None:
    assert parse_errno(b"errno=0\n\n") == 0
    assert parse_errno(b"errno=22\n\n") == 22
    with pytest.raises(WireGuardError):
        parse_errno(b"\n\n")
    with pytest.raises(WireGuardError):
        parse_get("wg0", b"garbage line\n\n")
    with pytest.raises(WireGuardError):
        parse_get("wg0", b"errno=19\n\n")
