"""Prometheus metrics: the server's GET /metrics, its --metrics listener, punchd's collector.

Every exposition is checked by ``promtool check metrics`` (Prometheus's own parser
and linter; Debian's ``prometheus`` package, which scripts/setup installs), and the
values are read back with prometheus_client's parser to see that they move.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from meshdns.server import MeshDNSServer
from punchd.daemon import metrics as daemon_metrics
from punchd.daemon.main import Daemon, main
from punchd.daemon.status import NetworkStatus, PeerStatus, PunchStatus, RelayStatus
from punchd.errors import HttpRequestError, StoreUnavailable
from punchd.metrics_http import (
    MAX_HEAD,
    MetricsListener,
    answer,
    parse_request_head,
)
from punchd.wire import api, stun
from signal_server.main import ServerOptions, SignalServer
from signal_server.relay import RelayPool, RelayService
from signal_server.stun_server import StunResponder

from .conftest import RunningServer, bound_socket, port_of
from .test_api import joined_client
from .test_daemon import joined_pair, wait_until


async def promtool_check(text: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (scripts/setup installs Debian's prometheus package)")
    result = await trio.run_process([promtool, "check", "metrics"], stdin=text, check=False,
                                    capture_stdout=True, capture_stderr=True)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def scrape(srv: RunningServer) -> bytes:
    resp = await srv.admin.get(srv.url + "/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.content


# -- the server ------------------------------------------------------------------------


async def test_server_metrics_need_the_admin_token(signal_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=signal_server.url) as anon:
        assert (await anon.get("/metrics")).status_code == 401
        resp = await anon.get("/metrics", headers={"authorization": "Bearer nope"})
        assert resp.status_code == 401
        assert "signal_server" not in resp.text


async def test_server_metrics_pass_promtool_and_move(signal_server: RunningServer) -> None:
    await signal_server.create_network("net")
    token = await signal_server.create_token("net")
    before = await scrape(signal_server)
    await promtool_check(before)
    assert value(before, "signal_server_joins_total") == 0
    assert value(before, "signal_server_nodes", network="net", state="approved") == 0

    client, _ = await joined_client(signal_server, token, "alpha")
    try:
        async with client.events(since=None):
            during = await scrape(signal_server)
        after = await scrape(signal_server)
    finally:
        await client.aclose()
    await promtool_check(during)
    assert value(during, "signal_server_joins_total") == 1
    assert value(during, "signal_server_nodes", network="net", state="approved") == 1
    assert value(during, "signal_server_nodes", network="net", state="pending") == 0
    assert value(during, "signal_server_event_streams") == 1
    assert value(during, "signal_server_nodes_connected") == 1
    published = value(during, "signal_server_events_published_total")
    assert published is not None and published >= 1  # the join's PeerAdded
    # Latency by route template, never by the raw path the caller chose.
    keys = {"method": "POST", "route": "/api/v1/networks/{network}/keys"}
    assert value(after, "signal_server_request_duration_seconds_count", **keys) == 1
    assert value(after, "signal_server_responses_total", code="201", **keys) == 1
    assert not [k for k in samples(after) if "/networks/net/" in str(k)]


async def test_a_retried_join_is_not_counted_twice(signal_server: RunningServer) -> None:
    await signal_server.create_network("net")
    token = await signal_server.create_token("net", uses=1)
    client, _ = await joined_client(signal_server, token, "alpha")
    await client.aclose()
    text = await scrape(signal_server)
    assert value(text, "signal_server_joins_total") == 1


async def test_the_separate_listener_needs_no_token_and_answers_only_metrics(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    http, extra = bound_socket(), bound_socket()
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", port_of(http)),
                            metrics=("127.0.0.1", port_of(extra)))
    server = SignalServer(options, http_socket=http, metrics_socket=extra)
    await nursery.start(server.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_of(extra)}") as anon:
        resp = await anon.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        await promtool_check(resp.content)
        assert value(resp.content, "signal_server_event_streams") == 0
        for path in ("/", "/api/v1/networks", "/metrics/../x"):
            assert (await anon.get(path)).status_code == 404
        assert (await anon.post("/metrics")).status_code == 404


async def test_stun_dns_and_relay_counters_are_read_when_scraped(
        signal_server: RunningServer) -> None:
    service = signal_server.server.service
    responder = StunResponder(("127.0.0.1", 3478))
    service.metrics.stun = responder
    service.metrics.dns = MeshDNSServer("127.0.0.1", 53)
    service.relay = RelayService([RelayPool("127.0.0.1", 40000, 40009)])
    text = await scrape(signal_server)
    await promtool_check(text)
    assert value(text, "signal_server_stun_requests_total") == 0
    assert value(text, "signal_server_dns_queries_total") == 0
    assert value(text, "signal_server_relay_binds_total") == 0
    assert value(text, "signal_server_relay_allocations_open") == 0
    local = ("127.0.0.1", 3478)
    responder.core.handle(stun.binding_request(bytes(12)), ("127.0.0.1", 5000), local)
    responder.core.handle(b"not stun", ("127.0.0.1", 5000), local)
    service.relay.stats.dropped += 2
    text = await scrape(signal_server)
    assert value(text, "signal_server_stun_requests_total") == 1
    assert value(text, "signal_server_stun_malformed_total") == 1
    assert value(text, "signal_server_relay_dropped_datagrams_total") == 2
    assert not [k for k in samples(text) if k[0].endswith("_created")]


async def test_a_store_failure_is_a_500_not_a_dead_server(signal_server: RunningServer) -> None:
    store = signal_server.server.store

    def down() -> int:
        raise StoreUnavailable("the database is down")

    store.last_seq = down  # type: ignore[method-assign]
    resp = await signal_server.admin.get(signal_server.url + "/metrics")
    assert resp.status_code == 503 and resp.json()["error"] == "the database is down"
    del store.last_seq
    assert (await signal_server.admin.get(signal_server.url + "/metrics")).status_code == 200


# -- the listener ----------------------------------------------------------------------


@pytest.mark.parametrize("head", [b"", b"GET\r\n\r\n", b"GET /metrics\r\n\r\n",
                                  b"GET /metrics SMTP/1.0\r\n\r\n", b"GET  /metrics HTTP/1.1",
                                  b"GET metrics HTTP/1.1\r\n\r\n",
                                  "GET /m\u00e9trics HTTP/1.1\r\n\r\n".encode()])
def test_bad_request_lines_are_refused(head: bytes) -> None:
    with pytest.raises(HttpRequestError):
        parse_request_head(head)


def test_a_request_line_parses_without_its_query() -> None:
    req = parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (req.method, req.path) == ("GET", "/metrics")


async def _render() -> bytes:
    return b"up 1\n"


async def test_answers_by_method_and_path() -> None:
    ok = await answer(b"GET /metrics HTTP/1.1\r\n\r\n", _render)
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nup 1\n")
    head = await answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", _render)
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    for other in (b"POST /metrics HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        assert (await answer(other, _render)).startswith(b"HTTP/1.1 404 ")
    assert (await answer(b"\x16\x03\x01garbage\r\n\r\n", _render)).startswith(b"HTTP/1.1 400 ")

    async def broken() -> bytes:
        raise StoreUnavailable("down")

    assert (await answer(b"GET /metrics HTTP/1.0\r\n\r\n", broken)).startswith(b"HTTP/1.1 500 ")


async def _exchange(listener: MetricsListener, *chunks: bytes, close: bool = False) -> bytes:
    """What the listener answers a client sending ``chunks`` (in memory, no sockets)."""
    client, server = trio.testing.memory_stream_pair()
    got = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._exchange, server)  # type: ignore[arg-type]
        for chunk in chunks:
            await client.send_all(chunk)
        if close:
            await client.send_eof()
        while data := await client.receive_some(65536):
            got += data
            if b"\r\n\r\n" in got:
                break
    return got


async def test_the_listener_bounds_the_head_and_the_wait() -> None:
    listener = MetricsListener(("127.0.0.1", 1), _render)
    too_big = await _exchange(listener, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_HEAD))
    assert too_big.startswith(b"HTTP/1.1 431 ")
    # Byte by byte is still a request.
    head = b"GET /metrics HTTP/1.1\r\n\r\n"
    assert (await _exchange(listener, *[head[i:i + 1] for i in range(len(head))])
            ).startswith(b"HTTP/1.1 200 ")


async def test_a_silent_client_is_dropped_after_the_head_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    listener = MetricsListener(("127.0.0.1", 1), _render)
    client, server = trio.testing.memory_stream_pair()
    started = trio.current_time()
    with trio.fail_after(60):
        await listener._exchange(server)  # type: ignore[arg-type]
    assert trio.current_time() - started == pytest.approx(5.0)
    await client.send_all(b"late")  # nothing was answered; the client is simply ignored


async def test_the_listener_serves_over_tcp(nursery: trio.Nursery) -> None:
    sock = bound_socket()
    await nursery.start(MetricsListener(("127.0.0.1", port_of(sock)), _render, sock=sock).run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_of(sock)}") as anon:
        resp = await anon.get("/metrics")
        assert (resp.status_code, resp.text) == (200, "up 1\n")
        assert (await anon.get("/nope")).status_code == 404


# -- punchd ----------------------------------------------------------------------------


def _peer(name: str, path: str, **kw: object) -> PeerStatus:
    base: dict[str, object] = dict(
        name=name, address="198.19.0.2", address6=None, public_key="k", endpoint=None,
        path=path, rtt_ms=None, last_handshake_age_s=None, rx_bytes=0, tx_bytes=0,
        in_wireguard=True, nat=api.NatReport(), punch=None, relay=None, confirmed=False)
    return PeerStatus(**(base | kw))  # type: ignore[arg-type]


def _network(*peers: PeerStatus) -> NetworkStatus:
    return NetworkStatus(
        name="net", interface="pd-net", node="alpha", address="198.19.0.1", address6=None,
        public_key="k", listen_port=51820, interface_up=True, server="http://s",
        server_connected=True, nat=None, dns=None, last_error=None, peers=peers)


async def test_punchd_collector_says_what_status_says() -> None:
    punch = PunchStatus(state="failed", failure="no answer", attempts=3, probes_sent=9,
                        probes_received=0, rejected=0, replays=0, observed=None)
    relay = RelayStatus(endpoint="203.0.113.1:40000", mapped=None, error=None)
    text = daemon_metrics.exposition(daemon_metrics.families([_network(
        _peer("beta", "direct", rtt_ms=12.5, last_handshake_age_s=3.0, rx_bytes=100,
              tx_bytes=200),
        _peer("gamma", "relay", punch=punch, relay=relay),
    )], broken=1))
    await promtool_check(text)
    beta, gamma = {"network": "net", "peer": "beta"}, {"network": "net", "peer": "gamma"}
    assert value(text, "punchd_peer_path", kind="direct", **beta) == 1
    assert value(text, "punchd_peer_path", kind="relay", **beta) == 0
    assert value(text, "punchd_peer_path", kind="relay", **gamma) == 1
    assert value(text, "punchd_peer_rtt_seconds", **beta) == 0.0125
    assert value(text, "punchd_peer_rtt_seconds", **gamma) is None  # unknown: absent, not 0
    assert value(text, "punchd_peer_last_handshake_age_seconds", **beta) == 3.0
    assert value(text, "punchd_peer_receive_bytes_total", **beta) == 100
    assert value(text, "punchd_peer_transmit_bytes_total", **beta) == 200
    assert value(text, "punchd_peer_punch_attempts_total", **gamma) == 3
    assert value(text, "punchd_peer_punch_probes_sent_total", **gamma) == 9
    assert value(text, "punchd_peer_punch_probes_received_total", **gamma) == 0
    assert value(text, "punchd_peer_punch_failed", **gamma) == 1
    assert value(text, "punchd_peer_relay_allocated", **gamma) == 1
    assert value(text, "punchd_peer_relay_allocated", **beta) == 0
    assert value(text, "punchd_network_peers", network="net") == 2
    assert value(text, "punchd_networks_broken") == 1


async def test_punchd_with_no_networks_still_passes_promtool() -> None:
    await promtool_check(daemon_metrics.exposition(daemon_metrics.families([])))


async def test_punchd_metrics_listener_shows_its_peers(signal_server: RunningServer,
                                                        tmp_path: Path,
                                                        nursery: trio.Nursery) -> None:
    a, _b, _ra, _rb = await joined_pair(signal_server, tmp_path, nursery)
    sock = bound_socket()
    listener = MetricsListener(("127.0.0.1", port_of(sock)), a.daemon.render_metrics, sock=sock)
    await nursery.start(listener.run)
    with trio.fail_after(10):
        await wait_until(lambda: bool(a.peer_keys("pdta")))  # alpha has heard of beta
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_of(sock)}") as anon:
        text = (await anon.get("/metrics")).content
    await promtool_check(text)
    assert value(text, "punchd_network_peers", network="net") == 1
    assert value(text, "punchd_network_up", network="net", interface="pdta") == 1
    kinds = [value(text, "punchd_peer_path", network="net", peer="beta", kind=k)
             for k in daemon_metrics.PATH_KINDS]
    assert sorted(kinds) == [0, 0, 1]  # exactly one kind at a time


def test_punchd_refuses_a_bad_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("9586", "localhost:9586", "127.0.0.1:0", "127.0.0.1:99999", "::1:9586"):
        assert main(["--metrics", bad, "--wg-backend", "fake"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("punchd: bad configuration: --metrics: ") and err.count("\n") == 1


def test_daemon_defaults_to_no_metrics(tmp_path: Path) -> None:
    from punchd.wg.fake import FakeBackend
    assert Daemon(tmp_path, tmp_path / "s", FakeBackend()).metrics_listen is None


def test_signal_server_refuses_a_bad_metrics_address(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from signal_server.cli import main as server_main
    for bad in ("9586", "0.0.0.0:0", "metrics.example:9586"):
        assert server_main(["serve", "--data-dir", str(tmp_path), "--http", "127.0.0.1:1",
                            "--metrics", bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("signal-server: --metrics: ") and err.count("\n") == 1


def test_the_openapi_document_lists_metrics_with_the_admin_security() -> None:
    from signal_server.app import openapi_spec
    op = openapi_spec()["paths"]["/metrics"]["get"]
    assert op["security"] == [{"adminBearer": []}]
    assert "text/plain" in op["responses"]["200"]["content"]


async def test_past_the_connection_cap_a_connection_is_closed_unanswered() -> None:
    from punchd.metrics_http import MAX_CONNECTIONS
    listener = MetricsListener(("127.0.0.1", 1), _render)
    listener._held = MAX_CONNECTIONS
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
    with trio.fail_after(5):
        await listener._serve(server)  # type: ignore[arg-type]
        assert await client.receive_some(100) == b""  # closed, nothing said
    assert listener._held == MAX_CONNECTIONS
