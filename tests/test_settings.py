"""Network and node settings, changed by the admin (#17): validated whole (a refused
change changes nothing), one event each, and what a node then runs with.

Store rules run on the conformance backends (SQLite file, memory, PostgreSQL); the
HTTP and CLI cases run in process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from punchd.errors import CliError, Conflict, Invalid, NotFound
from punchd.wire import api
from signal_server.cli import _admin_command, build_parser
from signal_server.store import Store

from .pgcluster import pg_cluster  # noqa: F401
from .test_admin_cli import FakeAdmin
from .test_api_routes import Server, server  # noqa: F401  (the fixture)
from .test_store import join, network
from .test_store import store as store


@pytest.fixture
def net(store: Store) -> Iterator[Store]:
    """"net" (198.19.0.0/24, with IPv6) with nodes a (.1) and b (.2)."""
    network(store, ipv6_cidr="fd00:1::/64")
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    join(store, secret, "a")
    join(store, secret, "b")
    yield store


def update(store: Store, node: str = "a", **kw: Any) -> api.Node:
    return store.admin_update_node("net", node, api.NodeAdminUpdate(**kw), now=1000.0)


def test_node_settings_change_with_one_event(net: Store) -> None:
    seq = net.last_seq()
    node = update(net, "a", ipv4="198.19.0.77", ipv6="fd00:1::77", listen_port=40001,
                  keepalive=10, mtu=1380)
    assert (node.ipv4, node.ipv6, node.listen_port, node.keepalive, node.mtu) == (
        "198.19.0.77/24", "fd00:1::77/64", 40001, 10, 1380)
    (event,) = net.events_since("net", seq) or []
    assert isinstance(event, api.PeerChanged) and event.peer == node
    assert net.get_node("net", "a") == node
    # The same again changes nothing and says nothing.
    update(net, ipv4="198.19.0.77/24")
    assert net.last_seq() == seq + 1


def test_rename_moves_the_name_and_frees_the_old(net: Store) -> None:
    node = update(net, "a", name="alpha")
    assert node.name == "alpha"
    with pytest.raises(NotFound):
        net.get_node("net", "a")
    assert net.get_node("net", "alpha").id == node.id
    with pytest.raises(Conflict, match="'b' is in 'net' already"):
        update(net, "alpha", name="b")
    net.add_dns_record("net", api.DnsRecord(name="www", rtype="CNAME", value="b"))
    with pytest.raises(Conflict, match="CNAME"):
        update(net, "alpha", name="www")


@pytest.mark.parametrize(("field", "value", "error", "reason"), [
    ("ipv4", "198.19.0.2", Conflict, "taken by node 'b'"),
    ("ipv4", "198.20.0.5", Invalid, "outside the network's range 198.19.0.0/24"),
    ("ipv4", "198.19.0.0", Invalid, "network address"),
    ("ipv4", "198.19.0.255", Invalid, "broadcast address"),
    ("ipv4", "198.19.0.9/16", Invalid, "prefix is /24"),
    ("ipv4", "fd00:1::9", Invalid, "not an IPv4 address"),
    ("ipv4", "banana", Invalid, "not an IP address"),
    ("ipv6", "fd00:2::9", Invalid, "outside"),
    ("ipv6", "fd00:1::", Invalid, "anycast"),
])
def test_a_refused_address_says_why_and_changes_nothing(
        net: Store, field: str, value: str, error: type[Exception], reason: str) -> None:
    before, seq = net.get_node("net", "a"), net.last_seq()
    with pytest.raises(error, match=reason) as info:
        update(net, **{field: value, "mtu": 1300})
    assert getattr(info.value, "field", None) == field
    assert net.get_node("net", "a") == before and net.last_seq() == seq


def test_ipv6_needs_a_range_and_an_update_needs_a_field(store: Store) -> None:
    network(store)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    join(store, secret, "a")
    with pytest.raises(Invalid, match="no IPv6 range"):
        update(store, ipv6="fd00::5")
    with pytest.raises(Invalid, match="nothing to change"):
        update(store)


def test_expiry_through_the_settings_patch(net: Store) -> None:
    assert update(net, expires_in=60).expires_at == 1060.0
    assert update(net, mtu=1400).expires_at == 1060.0  # left out: kept
    assert update(net, expires_in=None).expires_at is None  # null: cleared


def test_network_port_is_every_nodes(store: Store) -> None:
    network(store, listen_port=40000)
    _, secret = store.create_access_key("net", api.AccessKeyCreate())
    a = join(store, secret, "a").node
    assert a.listen_port == 40000  # it asked the default: it gets the network's
    seq = store.last_seq()
    store.update_network("net", api.NetworkUpdate(listen_port=41000))
    events = store.events_since("net", seq) or []
    assert [type(e) for e in events] == [api.NetworkChanged, api.PeerChanged]
    assert store.get_node("net", "a").listen_port == 41000


def test_settings_follow_the_node_then_the_network() -> None:
    net = api.Network(name="n", ipv4_cidr="198.19.0.0/24", keepalive=25, mtu=1420,
                      local_only=True, hole_punching=False)
    node = api.Node(id="i", network="n", name="a", signing_key="k", wg_public_key="w",
                    probe_public_key="p", listen_port=40000)
    assert node.settings(net) == api.NodeSettings(
        listen_port=40000, keepalive=25, mtu=1420, local_only=True, hole_punching=False)
    own = msgspec.structs.replace(node, keepalive=0, mtu=1300)
    assert (own.settings(net).keepalive, own.settings(net).mtu) == (0, 1300)


# -- over HTTP: the body's rules are msgspec's, named by field -----------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"listen_port": 0}, "listen_port"), ({"listen_port": 70000}, "listen_port"),
    ({"mtu": 1000}, "mtu"), ({"keepalive": -1}, "keepalive"), ({"name": "Bad Name"}, "name"),
    ({"wg_public_key": "x"}, None),
])
async def test_bad_node_patches_are_422_and_change_nothing(
        server: Server, body: dict[str, Any], field: str | None) -> None:  # noqa: F811
    store = server.service.store
    before, seq = store.get_node("net", "beta"), store.last_seq()
    resp = await server.send("PATCH", "/api/v1/networks/net/nodes/beta", body)
    assert resp.status_code in (400, 422), resp.text
    if field is not None:
        assert field in resp.text
    assert store.get_node("net", "beta") == before and store.last_seq() == seq


async def test_node_and_network_patches_over_http(server: Server) -> None:  # noqa: F811
    resp = await server.send("PATCH", "/api/v1/networks/net/nodes/beta",
                             {"ipv4": "198.19.0.1"})
    assert resp.status_code == 409 and "taken by node 'alpha'" in resp.json()["error"]
    resp = await server.send("PATCH", "/api/v1/networks/net/nodes/beta",
                             {"listen_port": 40002, "keepalive": 5})
    assert resp.status_code == 200 and resp.json()["listen_port"] == 40002
    resp = await server.send("PATCH", "/api/v1/networks/net",
                             {"local_only": True, "hole_punching": False, "listen_port": 0})
    assert resp.status_code == 422
    assert server.service.store.get_network("net").local_only is False


# -- the CLI: options become exactly the fields given ---------------------------------------

def run_cli(argv: list[str], answers: dict[tuple[str, str], object]) -> tuple[FakeAdmin, Any]:
    fake = FakeAdmin(answers)
    bodies: list[object] = []
    request = fake.request

    def recording(method: str, path: str, body: object = None) -> object:
        bodies.append(body)
        return request(method, path, body)

    fake.request = recording  # type: ignore[method-assign]
    args = build_parser().parse_args(["admin", *argv])
    net_seg = args.name if args.object == "network" else args.network
    node_seg = args.name if args.object == "node" else ""
    assert _admin_command(args, fake, net_seg, node_seg) == 0  # type: ignore[arg-type]
    return fake, bodies[-1]


NET = {"name": "office", "ipv4_cidr": "198.19.0.0/24", "local_only": True,
       "hole_punching": False, "require_approval": False, "listen_port": 40000,
       "keepalive": 25, "mtu": 1420}
NODE = {"id": "i", "name": "db", "network": "office", "ipv4": "198.19.0.9/24",
        "listen_port": 40000, "keepalive": None, "mtu": 1380}


def test_cli_network_update(capsys: pytest.CaptureFixture[str]) -> None:
    _, body = run_cli(["network", "update", "office", "--local-only", "--no-hole-punching",
                       "--listen-port", "40000", "--no-require-approval"],
                      {("PATCH", "/networks/office"): NET})
    assert body == {"local_only": True, "hole_punching": False, "require_approval": False,
                    "listen_port": 40000}
    out = capsys.readouterr().out
    assert "port 40000" in out and "local only" in out and "no hole punching" in out


def test_cli_node_update_and_get(capsys: pytest.CaptureFixture[str]) -> None:
    _, body = run_cli(["node", "update", "office", "db", "--name", "db2", "--address",
                       "198.19.0.9", "--mtu", "1380"],
                      {("PATCH", "/networks/office/nodes/db"): NODE})
    assert body == {"name": "db2", "ipv4": "198.19.0.9", "mtu": 1380}
    assert "keepalive network's, mtu 1380" in capsys.readouterr().out
    run_cli(["node", "get", "office", "db", "--json"],
            {("GET", "/networks/office/nodes/db"): NODE})
    assert msgspec.json.decode(capsys.readouterr().out) == NODE


def test_cli_update_without_options_is_refused() -> None:
    for argv in (["network", "update", "office"], ["node", "update", "office", "db"]):
        fake = FakeAdmin({})
        args = build_parser().parse_args(["admin", *argv])
        with pytest.raises(CliError, match="nothing to update"):
            _admin_command(args, fake, "office", "db")  # type: ignore[arg-type]
        assert fake.calls == []
