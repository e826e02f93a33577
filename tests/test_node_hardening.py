"""Issue #14, the node's items: names that become paths, joins that leave ghosts, broken
networks that must not stop the others, one-line failures at the top level."""

from __future__ import annotations

import base64
import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.daemon import control
from punchd.daemon.main import Daemon, join_with_retry
from punchd.daemon.punching import Punching
from punchd.daemon.state import NetworkConfig, StateDir
from punchd.discovery.service import Discovery
from punchd.discovery.sharedsock import SharedPortSocket
from punchd.errors import ConfigError, ControlError, NetworkDown, ServerUnreachable, TokenError
from punchd.serverapi import ServerClient
from punchd.wg.fake import FakeBackend
from punchd.wire import api
from punchd.wire.token import JoinToken, decode_token, encode_token

from .test_daemon import start_node

SERVER = "http://fake.invalid"
KEY = base64.b64encode(bytes(32)).decode()


def crafted_token(network: str) -> str:
    raw = json.dumps({"v": 1, "server": SERVER, "network": network, "key": "k"}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- item 1: a network name never becomes a path outside the state dir ----------------------

@pytest.mark.parametrize("network", ["../victim", "/tmp/victim", "a/b", "..", ".", "",
                                     "UPPER", "x" * 64])
def test_token_with_a_bad_network_name_is_refused(network: str) -> None:
    with pytest.raises(TokenError):
        decode_token(crafted_token(network))


def test_state_dir_refuses_anything_but_a_direct_child(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("../../victim", str(victim), "a/b", "..", ""):
        with pytest.raises(ConfigError, match="not a valid network name"):
            state.network_dir(name)
        with pytest.raises(ConfigError):
            state.remove(name)
    # A valid name that is a symlink out of networks/ is refused too.
    (tmp_path / "state/networks/link").symlink_to(victim)
    with pytest.raises(ConfigError, match="not inside"):
        state.create_keys("link")
    assert victim.is_dir() and not any(victim.iterdir())


def test_config_name_is_validated_and_matches_its_directory(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    config = NetworkConfig(name="net", server="http://x", interface="pd-net", node_id="n1",
                           node_name="alpha", listen_port=51820)
    state.save_config(config)
    path = tmp_path / "state/networks/net/config.toml"
    path.write_text(path.read_text().replace('name = "net"', 'name = "../x"'))
    with pytest.raises(ConfigError, match="name"):
        state.load_config("net")
    path.write_text(path.read_text().replace('name = "../x"', 'name = "other"'))
    with pytest.raises(ConfigError, match="not its directory"):
        state.load_config("net")


async def test_crafted_join_token_deletes_nothing(tmp_path: Path, nursery: trio.Nursery) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    node = await start_node(nursery, tmp_path, "a")
    for network in ("../../victim", str(victim)):
        with pytest.raises(ControlError, match="not a punchd join token"):
            await node.call("join", token=crafted_token(network))
    assert (victim / "precious").read_text() == "keep me"


# -- item 7: joins retry with the same keys, give up cleanly, and do not run twice ---------

def join_response(request: httpx.Request) -> httpx.Response:
    body = msgspec.json.decode(request.content, type=api.JoinRequest)
    node = api.Node(id="n1", network="net", name=body.name or "alpha",
                    signing_key=body.signing_key, wg_public_key=body.wg_public_key,
                    probe_public_key=body.probe_public_key, listen_port=body.listen_port,
                    ipv4="198.19.0.1/24")
    return httpx.Response(200, content=msgspec.json.encode(
        api.JoinResponse(node=node, network=api.Network(name="net", ipv4_cidr="198.19.0.0/24"))))


async def test_join_retries_the_same_request_on_transport_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return join_response(request)

    client = ServerClient(SERVER, SigningKey.generate(), transport=httpx.MockTransport(handler))
    token = JoinToken(v=1, server=SERVER, network="net", key="k")
    async with trio.open_nursery():
        joined = await join_with_retry(client, token, name="alpha", wg_public_key=KEY,
                                       probe_public_key=KEY, listen_port=51820, candidates=())
    await client.aclose()
    assert joined.node.id == "n1"
    assert len(bodies) == 3 and len(set(bodies)) == 1  # the same keys: the server sees a retry


class FakeServer:
    """POST /join and DELETE /node, with a switch for how /join behaves."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.joins = 0
        self.deletes = 0
        self.entered = trio.Event()
        self.release = trio.Event()

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE" and request.url.path == "/api/v1/node":
            self.deletes += 1
            return httpx.Response(204)
        self.joins += 1
        if self.mode == "down":
            raise httpx.ConnectError("network is unreachable", request=request)
        if self.mode == "block":
            self.entered.set()
            await self.release.wait()
            return httpx.Response(403, json={"error": "access key spent"})
        return join_response(request)

    def factory(self, url: str, key: Any) -> ServerClient:
        return ServerClient(url, key, transport=httpx.MockTransport(self.handler))


async def test_join_that_gives_up_deletes_the_node_and_its_state(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer("down")
    daemon = Daemon(tmp_path / "a", tmp_path / "a.sock", FakeBackend(),
                    client_factory=server.factory)
    daemon.state.ensure()
    with pytest.raises(ServerUnreachable, match="unreachable"):
        await daemon.handle(control.Join(token=encode_token(SERVER, "net", "k")))
    assert server.joins == 4 and server.deletes == 1
    assert not (tmp_path / "a/networks/net").exists() and not daemon._joining


async def test_concurrent_joins_of_one_network_refuse_the_second(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer("block")
    daemon = Daemon(tmp_path / "a", tmp_path / "a.sock", FakeBackend(),
                    client_factory=server.factory)
    daemon.state.ensure()
    token = encode_token(SERVER, "net", "k")
    errors: list[Exception] = []

    async def first() -> None:
        try:
            await daemon.handle(control.Join(token=token))
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await server.entered.wait()
        with pytest.raises(ControlError, match="a join of 'net' is already in progress"):
            await daemon.handle(control.Join(token=token))
        with pytest.raises(ControlError, match="interface pd-net is used"):
            await daemon.handle(control.Join(token=encode_token(SERVER, "other", "k"),
                                             ifname="pd-net"))
        server.release.set()
    (refused,) = errors
    assert "access key spent" in str(refused)
    assert server.joins == 1 and server.deletes == 0  # a plain refusal left no node behind
    assert not daemon._joining and not (tmp_path / "a/networks/net").exists()


async def test_bad_ifname_is_refused_before_anything_is_written(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start_node(nursery, tmp_path, "a")
    with pytest.raises(ControlError, match="ifname"):
        await node.call("join", token=encode_token(SERVER, "net", "k"), ifname="bad/name")
    assert not (tmp_path / "a/networks/net").exists()


# -- low items: one bad network does not stop the others; one line at the top level ---------

async def test_a_network_that_does_not_load_is_skipped_and_shown(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    state = StateDir(tmp_path / "a")
    state.ensure()
    state.create_keys("good")
    state.save_config(NetworkConfig(name="good", server="http://127.0.0.1:9",
                                    interface="pd-good", node_id="n1", node_name="alpha",
                                    listen_port=51820))
    state.save_config(NetworkConfig(name="nokeys", server="http://127.0.0.1:9",
                                    interface="pd-nokeys", node_id="n2", node_name="alpha",
                                    listen_port=51821))
    (tmp_path / "a/networks/badif").mkdir()
    (tmp_path / "a/networks/badif/config.toml").write_text(
        'name = "badif"\nserver = "http://x"\ninterface = "bad/name"\nnode_id = "n3"\n'
        'node_name = "alpha"\nlisten_port = 51822\n')
    node = await start_node(nursery, tmp_path, "a")
    listed = {n["name"]: n for n in await node.call("list")}  # type: ignore[attr-defined]
    assert listed["good"]["broken"] is None and listed["good"]["interface"] == "pd-good"
    assert "keys unreadable" in listed["nokeys"]["broken"]
    assert "interface" in listed["badif"]["broken"]
    status = await node.call("status")
    assert [b["name"] for b in status["broken"]] == ["badif", "nokeys"]  # type: ignore[index]
    with pytest.raises(ControlError, match="'nokeys' is broken"):
        await node.call("netcheck", network="nokeys")
    await node.call("leave", network="badif")
    assert not (tmp_path / "a/networks/badif").exists()


def test_punchd_state_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    res = subprocess.run(
        [sys.executable, "-m", "punchd.daemon.main", "--state-dir", str(tmp_path / "state"),
         "--socket", str(tmp_path / "ctl.sock"), "--wg-backend", "fake"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert res.stderr.startswith("punchd: bad configuration: state directory")


def test_punchctl_bad_argument_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "punchd.cli", "--socket", str(tmp_path / "none.sock"), "ping",
         "-c", "x", "b"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr


# -- item 6: link loss is weather: NetworkDown at the socket boundary, handled in the loop ---

class UnreachableSocket:
    """A shared-port socket on a host whose link just went away."""

    port = 51820

    def __init__(self, receive_failures: int = 0) -> None:
        self.sent = 0
        self.receive_failures = receive_failures
        self.closed = False

    async def send(self, payload: bytes, dest: tuple[str, int]) -> None:
        self.sent += 1
        raise NetworkDown(f"send to {dest[0]}:{dest[1]}: Network is unreachable")

    async def receive_batch(self) -> list[tuple[bytes, tuple[str, int]]]:
        if self.receive_failures:
            self.receive_failures -= 1
            raise NetworkDown("receive on the shared port: Network is down")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.closed = True


class RawUnreachable:
    async def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        raise OSError(errno.ENETUNREACH, "Network is unreachable")


async def test_shared_port_send_translates_enetunreach() -> None:
    sock = SharedPortSocket.__new__(SharedPortSocket)  # no raw sockets in fast tests
    sock.port, sock._send4, sock._send6 = 51820, RawUnreachable(), None  # type: ignore[assignment]
    with pytest.raises(NetworkDown, match="Network is unreachable"):
        await sock.send(b"x", ("192.0.2.1", 3478))


async def test_netcheck_survives_a_link_that_went_away(
        autojump_clock: trio.testing.MockClock) -> None:
    sock = UnreachableSocket(receive_failures=5)
    discovery = Discovery(sock, ("192.0.2.1", 3478))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)  # the receive loop backs off and lives on
        start = trio.current_time()
        with pytest.raises(NetworkDown, match="Network is unreachable"):
            await discovery.netcheck()  # at once: no retransmits into a dead link
        assert trio.current_time() - start < 1.0 and sock.sent == 1
        await trio.sleep(10)  # mock time: the receive loop backed off through its errors
        assert sock.receive_failures == 0
        with pytest.raises(NetworkDown):  # the lock is released: the next netcheck runs
            await discovery.netcheck()
        assert sock.sent == 2 and discovery._current is None
        nursery.cancel_scope.cancel()


async def test_probe_send_on_a_dead_link_is_counted_not_raised() -> None:
    punching = Punching(UnreachableSocket(), PrivateKey.generate(), lambda *_: None)
    await punching._send(b"PNCH", ("192.0.2.1", 51820))
    assert punching.send_failures == 1
