"""Settings applied live by the daemon (#17): in process with the fake WireGuard
backend against a real signal server; and the pure rules local-only rests on."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import trio

from punchd.daemon.policy import PathPolicy
from punchd.daemon.portservices import lan_only
from punchd.daemon.reconcile import desired_link
from punchd.daemon.state import StateDir
from punchd.wg.base import LinkConfig
from punchd.wire import api

from .conftest import RunningServer
from .test_daemon import WRITTEN, Node, WatchedBackend, wait_until


class SettingsBackend(WatchedBackend):
    """Also wakes the tests on device and link writes (port, MTU)."""

    async def set_device(self, ifname: str, *, private_key: str | None = None,
                         listen_port: int | None = None, fwmark: int | None = None) -> None:
        await super().set_device(ifname, private_key=private_key, listen_port=listen_port,
                                 fwmark=fwmark)
        WRITTEN.wake()

    async def set_link(self, ifname: str, link: LinkConfig) -> None:
        await super().set_link(ifname, link)
        WRITTEN.wake()


async def start(nursery: trio.Nursery, root: Path, name: str) -> Node:
    node = Node(root, name)
    node.backend = node.daemon.backend = SettingsBackend()
    await nursery.start(node.daemon.run)
    return node


async def test_port_keepalive_mtu_and_name_follow_the_server_live(
        signal_server: RunningServer, tmp_path: Path, nursery: trio.Nursery) -> None:
    # The network's port is the nodes' (it used to be accepted and ignored).
    await signal_server.create_network("net", listen_port=40000)
    token = await signal_server.create_token("net")
    a, b = await start(nursery, tmp_path, "a"), await start(nursery, tmp_path, "b")
    await a.call("join", token=token, name="alpha", ifname="pdta")
    await b.call("join", token=token, name="beta", ifname="pdtb")
    dev_a = a.backend.devices["pdta"]
    assert dev_a.listen_port == 40000
    assert StateDir(tmp_path / "a").load_config("net").listen_port == 40000

    admin = signal_server.admin
    resp = await admin.patch("/networks/net", json={"listen_port": 40100, "mtu": 1300})
    assert resp.status_code == 200, resp.text
    resp = await admin.patch("/networks/net/nodes/alpha",
                             json={"mtu": 1280, "name": "alpha2", "listen_port": 40200})
    assert resp.status_code == 200, resp.text

    def applied() -> bool:
        link_b = b.backend.devices["pdtb"].link
        return (dev_a.listen_port, b.backend.devices["pdtb"].listen_port) == (40200, 40100) \
            and dev_a.link is not None and dev_a.link.mtu == 1280 \
            and link_b is not None and link_b.mtu == 1300

    with trio.fail_after(10):
        await wait_until(applied)
    config = StateDir(tmp_path / "a").load_config("net")  # a restart keeps them
    assert (config.listen_port, config.node_name) == (40200, "alpha2")
    assert StateDir(tmp_path / "b").load_config("net").listen_port == 40100


def node(candidates: tuple[api.Candidate, ...], **kw: object) -> api.Node:
    return api.Node(id="p", network="n", name="p", signing_key="k", wg_public_key="w",
                    probe_public_key="x", listen_port=51820, candidates=candidates,
                    **kw)  # type: ignore[arg-type]


HOST = api.Candidate(kind="host", address="192.168.1.7:51820", priority=3)
SRFLX = api.Candidate(kind="srflx", address="203.0.113.7:4000", priority=2)


def test_local_only_sessions_see_host_candidates_only() -> None:
    peer = node((HOST, SRFLX), nat=api.NatReport(public_endpoint="203.0.113.7:4000"))
    lan = lan_only(peer)
    assert lan.candidates == (HOST,) and lan.nat == api.NatReport()
    plain = node((HOST,))
    assert lan_only(plain) is plain


def test_going_local_only_drops_a_kept_public_endpoint() -> None:
    policy = PathPolicy(b"\x01" * 32)
    peer = node((SRFLX,))
    lan = [ipaddress.ip_network("192.168.1.0/24")]
    policy.update({"p": peer}, {}, None, 0.0, punching=False, local_networks=lan)
    assert policy.paths["p"].endpoint == SRFLX.address
    # Rule 3 keeps an offered endpoint, but not a public one once the network is local only.
    policy.update({"p": peer}, {}, None, 1.0, punching=False, local_networks=lan,
                  local_only=True)
    assert policy.paths["p"].endpoint is None
    both = node((HOST, SRFLX))
    policy.update({"p": both}, {}, None, 2.0, punching=False, local_networks=lan,
                  local_only=True)
    assert policy.paths["p"].endpoint == HOST.address


def test_the_link_mtu_is_the_nodes_own_else_the_networks() -> None:
    net = api.Network(name="n", ipv4_cidr="198.19.0.0/24", mtu=1400)
    own = node((), ipv4="198.19.0.1/24")
    assert desired_link(own, net) == LinkConfig(addresses=("198.19.0.1/24",), mtu=1400)
    link = desired_link(node((), ipv4="198.19.0.1/24", mtu=1300), net)
    assert link is not None and link.mtu == 1300
