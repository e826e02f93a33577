"""The daemon in-process with the fake WireGuard backend, against a real signal server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from punchd.daemon.control import call
from punchd.daemon.main import Daemon
from punchd.daemon.state import NetworkConfig, StateDir
from punchd.daemon.tasks import Wakeup
from punchd.errors import ConfigError, ControlError
from punchd.wg.base import WgPeer
from punchd.wg.fake import FakeBackend

from .conftest import RunningServer

# Woken by every write to any node's WireGuard: the tests wait for what the daemons do
# to their interfaces without polling; callers bound each wait with trio.fail_after.
WRITTEN = Wakeup()


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await WRITTEN.round().wait()  # no checkpoint since the check: no write is missed


class WatchedBackend(FakeBackend):
    async def ensure_interface(self, ifname: str) -> None:
        await super().ensure_interface(ifname)
        WRITTEN.wake()

    async def delete_interface(self, ifname: str) -> None:
        await super().delete_interface(ifname)
        WRITTEN.wake()

    async def set_peer(self, ifname: str, peer: WgPeer) -> None:
        await super().set_peer(ifname, peer)
        WRITTEN.wake()

    async def remove_peer(self, ifname: str, public_key: str) -> None:
        await super().remove_peer(ifname, public_key)
        WRITTEN.wake()


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.backend = WatchedBackend()
        self.socket = root / f"{name}.sock"
        self.daemon = Daemon(root / name, self.socket, self.backend)

    async def call(self, cmd: str, **args: object) -> object:
        return await call(self.socket, cmd, dict(args))

    def peer_keys(self, ifname: str) -> set[str]:
        dev = self.backend.devices.get(ifname)
        return set(dev.peers) if dev else set()


async def start_node(nursery: trio.Nursery, root: Path, name: str) -> Node:
    node = Node(root, name)
    await nursery.start(node.daemon.run)
    return node


async def joined_pair(signal_server: RunningServer, root: Path, nursery: trio.Nursery
                      ) -> tuple[Node, Node, object, object]:
    """Nodes a (alpha on pdta) and b (beta on pdtb) joined to network "net"; their replies."""
    await signal_server.create_network("net")
    token = await signal_server.create_token("net")
    a = await start_node(nursery, root, "a")
    b = await start_node(nursery, root, "b")
    ra = await a.call("join", token=token, name="alpha", ifname="pdta")
    rb = await b.call("join", token=token, name="beta", ifname="pdtb")
    return a, b, ra, rb


async def test_two_nodes_join_reconcile_and_leave(signal_server: RunningServer, tmp_path: Path,
                                                  nursery: trio.Nursery) -> None:
    a, b, ra, rb = await joined_pair(signal_server, tmp_path, nursery)
    assert ra["address"] == "198.19.0.1/24" and rb["address"] == "198.19.0.2/24"  # type: ignore[index]

    def meshed() -> bool:
        return len(a.peer_keys("pdta")) == 1 and len(b.peer_keys("pdtb")) == 1

    with trio.fail_after(10):
        await wait_until(meshed)
    status = await a.call("status")
    (net,) = status["networks"]  # type: ignore[index]
    (peer,) = net["peers"]
    assert (net["interface"], net["address"], peer["name"], peer["address"]) == (
        "pdta", "198.19.0.1", "beta", "198.19.0.2")
    assert peer["path"] == "none"  # no handshake yet: status shows what is, not what was asked
    wg_peer = a.backend.devices["pdta"].peers[peer["public_key"]]
    assert wg_peer.allowed_ips == ("198.19.0.2/32",)
    a.backend.simulate_handshake("pdta", peer["public_key"], at=__import__("time").time())
    (peer,) = (await a.call("status"))["networks"][0]["peers"]  # type: ignore[index]
    assert peer["path"] == "direct" and peer["rx_bytes"] == 92

    # Drift: a hand edit and a vanished interface are both repaired.
    a.backend.tamper("pdta", peer["public_key"], allowed_ips=("0.0.0.0/0",))
    b.backend.crash("pdtb")

    def repaired() -> bool:
        dev_a = a.backend.devices["pdta"].peers[peer["public_key"]]
        return dev_a.allowed_ips == ("198.19.0.2/32",) and len(b.peer_keys("pdtb")) == 1

    with trio.fail_after(10):
        await wait_until(repaired)

    # Leaving: gone from the other's WireGuard config within a second.
    with trio.fail_after(1.5):
        await b.call("leave", network="net")
        with trio.fail_after(1.0):
            await wait_until(lambda: not a.peer_keys("pdta"))
    assert "pdtb" not in b.backend.devices
    assert await b.call("list") == []
    with pytest.raises(ControlError, match="not joined"):
        await b.call("leave", network="net")


async def test_control_errors_are_one_line(tmp_path: Path, nursery: trio.Nursery) -> None:
    a = await start_node(nursery, tmp_path, "a")
    with pytest.raises(ControlError, match="unknown command"):
        await a.call("dance")
    with pytest.raises(ControlError, match="bad arguments"):
        await a.call("status", bogus=1)
    with pytest.raises(ControlError, match="not a punchd join token"):
        await a.call("join", token="garbage")
    with pytest.raises(ControlError, match="not joined"):
        await a.call("netcheck", network="nope")
    assert stat.S_IMODE(os.stat(a.socket).st_mode) == 0o600


async def test_restart_resumes_joined_networks(signal_server: RunningServer, tmp_path: Path) -> None:
    await signal_server.create_network("net")
    token = await signal_server.create_token("net")
    backend = FakeBackend()
    async with trio.open_nursery() as nursery:
        daemon = Daemon(tmp_path / "a", tmp_path / "a.sock", backend)
        await nursery.start(daemon.run)
        await call(tmp_path / "a.sock", "join", {"token": token, "name": "alpha"})
        nursery.cancel_scope.cancel()
    assert "pd-net" in backend.devices  # the interface outlives the daemon
    async with trio.open_nursery() as nursery:
        daemon = Daemon(tmp_path / "a", tmp_path / "a.sock", backend)
        await nursery.start(daemon.run)
        listed = await call(tmp_path / "a.sock", "list")
        assert listed[0]["name"] == "net" and listed[0]["node"] == "alpha"
        nursery.cancel_scope.cancel()


def test_state_files_are_private_and_bad_config_names_the_field(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.create_keys("net")
    state.save_config(NetworkConfig(name="net", server="http://x", interface="pd-net",
                                    node_id="n1", node_name="alpha", listen_port=51820))
    for f in (tmp_path / "state/networks/net").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert state.load_config("net").node_name == "alpha"
    keys = state.load_keys("net")
    assert len(bytes(keys.signing)) == 32
    (tmp_path / "state/networks/net/config.toml").write_text(
        'name = "net"\nserver = "http://x"\ninterface = "pd-net"\nnode_id = "n1"\n'
        'node_name = "alpha"\nlisten_port = 700000\n')
    with pytest.raises(ConfigError, match="listen_port"):
        state.load_config("net")
    (tmp_path / "state/networks/net/config.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        state.load_config("net")


def test_a_config_written_by_an_older_version_still_loads(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    (tmp_path / "state/networks/net").mkdir()
    old = ('name = "net"\nserver = "http://x"\ninterface = "pd-net"\nnode_id = "n1"\n'
           'node_name = "alpha"\nlisten_port = 51820\nlast_seq = 41\n')
    (tmp_path / "state/networks/net/config.toml").write_text(old)
    config = state.load_config("net")
    assert (config.node_name, config.listen_port) == ("alpha", 51820)
    state.save_config(config)  # written back without the retired field
    assert "last_seq" not in (tmp_path / "state/networks/net/config.toml").read_text()
    (tmp_path / "state/networks/net/config.toml").write_text(old + "listen_prot = 1\n")
    with pytest.raises(ConfigError, match="listen_prot"):  # a typo is still refused
        state.load_config("net")


def punchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "punchd.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_punchctl_without_daemon_is_one_clear_line(tmp_path: Path) -> None:
    res = punchctl("--socket", str(tmp_path / "none.sock"), "status", "--json")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "punchd is not running" in res.stderr
    assert "Traceback" not in res.stderr


def test_punchctl_bad_token_is_one_clear_line(tmp_path: Path) -> None:
    res = punchctl("--socket", str(tmp_path / "none.sock"), "join", "--token", "nonsense")
    assert res.returncode == 1 and "bad token" in res.stderr and "Traceback" not in res.stderr


async def test_punchctl_status_json_contract(signal_server: RunningServer, tmp_path: Path,
                                             nursery: trio.Nursery) -> None:
    a, _, _, _ = await joined_pair(signal_server, tmp_path, nursery)
    with trio.fail_after(10):
        await wait_until(lambda: len(a.peer_keys("pdta")) == 1)
    res = await trio.to_thread.run_sync(punchctl, "--socket", str(a.socket), "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (net,) = doc["networks"]
    assert {"name", "interface", "address", "peers"} <= net.keys()
    (peer,) = net["peers"]
    assert {"name", "address", "endpoint", "path", "rtt_ms", "last_handshake_age_s", "rx_bytes",
            "tx_bytes"} <= peer.keys()
    assert peer["path"] in ("direct", "relay", "none")
    res = await trio.to_thread.run_sync(punchctl, "--socket", str(a.socket), "status")
    assert "beta" in res.stdout and res.returncode == 0
    res = await trio.to_thread.run_sync(punchctl, "--socket", str(a.socket), "leave", "nope")
    assert res.returncode == 1 and "not joined to a network named 'nope'" in res.stderr


async def test_ping_unknown_peer_is_one_clear_error(signal_server: RunningServer, tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    await signal_server.create_network("net")
    token = await signal_server.create_token("net")
    a = await start_node(nursery, tmp_path, "a")
    await a.call("join", token=token, name="alpha", ifname="pdta")
    with pytest.raises(ControlError, match="no peer named 'ghost'"):
        await a.call("ping", peer="ghost")


async def test_checkin_reports_changes_and_removal_drops_the_peers(
        signal_server: RunningServer, tmp_path: Path, nursery: trio.Nursery) -> None:
    a, _, _, _ = await joined_pair(signal_server, tmp_path, nursery)
    with trio.fail_after(10):
        await wait_until(lambda: len(a.peer_keys("pdta")) == 1)
    (net,) = (await a.call("checkin", network="net"))["networks"]  # type: ignore[index]
    assert net["node_state"] == "approved" and net["error"] is None
    assert net["peers_added"] == [] and net["peers_removed"] == []
    res = await trio.to_thread.run_sync(punchctl, "--socket", str(a.socket), "checkin",
                                        "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert {"network", "node_state", "state_reason", "pushed", "peers_added", "peers_removed",
            "peers_changed", "settings_changed", "node_changed", "wireguard_changes",
            "error"} <= doc["networks"][0].keys()
    res = await trio.to_thread.run_sync(punchctl, "--socket", str(a.socket), "checkin")
    assert res.returncode == 0 and "node approved" in res.stdout, res.stdout

    # The admin deletes alpha: it drops beta from WireGuard and says why.
    resp = await signal_server.admin.delete("/networks/net/nodes/alpha")
    assert resp.status_code == 204, resp.text
    with trio.fail_after(10):
        await wait_until(lambda: not a.peer_keys("pdta"))
    (st,) = (await a.call("status"))["networks"]  # type: ignore[index]
    assert st["node_state"] == "removed" and st["peers"] == [] and st["state_reason"]
    (net,) = (await a.call("checkin"))["networks"]  # type: ignore[index]
    assert net["node_state"] == "removed" and net["error"] and net["pushed"] == []


async def test_pending_node_has_no_peers_and_says_so(
        signal_server: RunningServer, tmp_path: Path, nursery: trio.Nursery) -> None:
    await signal_server.create_network("net", require_approval=True)
    token = await signal_server.create_token("net")
    a = await start_node(nursery, tmp_path, "a")
    b = await start_node(nursery, tmp_path, "b")
    await a.call("join", token=token, name="alpha", ifname="pdta")
    await b.call("join", token=token, name="beta", ifname="pdtb")
    (net,) = (await a.call("checkin"))["networks"]  # type: ignore[index]
    assert net["node_state"] == "pending" and "approval" in net["state_reason"]
    assert not a.peer_keys("pdta")
    for name in ("alpha", "beta"):
        resp = await signal_server.admin.post(f"/networks/net/nodes/{name}/approve")
        assert resp.status_code < 300, resp.text
    with trio.fail_after(10):
        await wait_until(lambda: len(a.peer_keys("pdta")) == 1)
    (st,) = (await a.call("status"))["networks"]  # type: ignore[index]
    assert st["node_state"] == "approved"
