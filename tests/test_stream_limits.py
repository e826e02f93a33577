"""Issue #22: the server raises its own open-file limit, says what it got, and refuses a
stream it has no descriptors for with a clear 503 instead of running out."""

from __future__ import annotations

import resource
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from punchd.errors import APIError, TooManyStreams
from punchd.serverapi import ServerClient
from punchd.wire import api
from signal_server.limits import (
    BASE_RESERVE,
    NR_OPEN_DEFAULT,
    OpenFileLimit,
    current_soft_limit,
    raise_open_file_limit,
    stream_capacity,
)
from signal_server.main import ServerOptions, SignalServer
from signal_server.relay import RelayPool
from signal_server.service import EventHub

from .conftest import BIN, RunningServer, bound_socket, port_of, reap
from .test_api import joined_client


class FakeLimits:
    """getrlimit/setrlimit over one (soft, hard) pair; ``refuse`` makes setrlimit fail."""

    def __init__(self, soft: int, hard: int, refuse: BaseException | None = None) -> None:
        self.value = (soft, hard)
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.value

    def set(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(value)
        if self.refuse is not None:
            raise self.refuse
        self.value = value


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    limits = FakeLimits(1024, 524288)
    got = raise_open_file_limit(limits.get, limits.set)
    assert got == OpenFileLimit(before=1024, soft=524288, hard=524288)
    assert limits.value == (524288, 524288)
    assert got.describe(1000) == "open-file limit 524288 (raised from 1024): up to 1000 event streams"


def test_a_soft_limit_at_the_hard_one_is_left_alone() -> None:
    limits = FakeLimits(4096, 4096)
    got = raise_open_file_limit(limits.get, limits.set)
    assert (got, limits.calls) == (OpenFileLimit(before=4096, soft=4096, hard=4096), [])
    assert got.describe(1920) == "open-file limit 4096 (the hard limit): up to 1920 event streams"


def test_an_unlimited_hard_limit_is_capped_at_nr_open() -> None:
    limits = FakeLimits(1024, resource.RLIM_INFINITY)
    got = raise_open_file_limit(limits.get, limits.set)
    assert got.soft == NR_OPEN_DEFAULT
    assert limits.calls == [(NR_OPEN_DEFAULT, resource.RLIM_INFINITY)]


@pytest.mark.parametrize("refusal", [OSError(1, "Operation not permitted"),
                                     ValueError("not allowed to raise maximum limit")])
def test_a_refused_raise_keeps_the_old_limit_and_says_why(refusal: BaseException) -> None:
    limits = FakeLimits(1024, 65536, refuse=refusal)
    got = raise_open_file_limit(limits.get, limits.set)
    assert (got.before, got.soft, got.hard) == (1024, 1024, 65536)
    assert limits.value == (1024, 65536)
    line = got.describe(stream_capacity(got.soft))
    assert line.startswith("open-file limit 1024 (raising it to 65536 failed: ")
    assert line.endswith(": up to 384 event streams")


def test_stream_capacity_keeps_the_reserve_and_two_descriptors_a_stream() -> None:
    assert stream_capacity(1024) == (1024 - BASE_RESERVE) // 2 == 384
    assert stream_capacity(20000) == 9872
    # A userspace relay binds one socket per port of its pools.
    assert stream_capacity(20000, relay_ports=1000) == 9372
    assert stream_capacity(BASE_RESERVE + 1) == 0
    assert stream_capacity(100) == 0  # below the reserve: none, never negative
    assert current_soft_limit(FakeLimits(777, 1024).get) == 777
    assert current_soft_limit(FakeLimits(resource.RLIM_INFINITY, resource.RLIM_INFINITY).get) \
        == NR_OPEN_DEFAULT


class _Stream:
    def __init__(self, node_id: str) -> None:
        self.node = api.Node(id=node_id, network="net", name=node_id, signing_key="s",
                             wg_public_key="w", probe_public_key="p", listen_port=1)
        self.done = False
        self.superseded = False


def test_the_hub_refuses_past_its_limit_and_a_closed_stream_frees_its_place() -> None:
    hub = EventHub(max_streams=2)
    a, b, c = _Stream("a"), _Stream("b"), _Stream("c")
    hub.open_stream(a)
    hub.open_stream(b)
    with pytest.raises(TooManyStreams, match=r"^too many open streams on this server \(limit 2\)$"):
        hub.open_stream(c)
    assert hub.streams_held == 2 and hub.open_streams("c") == 0
    hub.close_stream(a)
    assert hub.open_streams("a") == 0
    hub.open_stream(c)
    assert hub.streams_held == 2 and hub.open_streams("c") == 1
    hub.close_stream(c)
    hub.close_stream(c)  # twice is harmless
    assert hub.streams_held == 1


def test_superseded_streams_hold_their_place_until_their_response_ends() -> None:
    hub = EventHub(max_streams=5)
    streams = [_Stream("a") for _ in range(5)]
    for s in streams:
        hub.open_stream(s)
    assert streams[0].superseded and hub.open_streams("a") == 4
    with pytest.raises(TooManyStreams):
        hub.open_stream(_Stream("b"))  # the superseded one still holds a connection
    hub.close_stream(streams[0])
    hub.open_stream(_Stream("b"))


@pytest.fixture
async def small_server(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    """A real server allowed two streams (the limit injected, as a low RLIMIT would)."""
    listener = bound_socket()
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", port_of(listener)),
                            max_streams=2)
    server = SignalServer(options, http_socket=listener)
    await nursery.start(server.run)
    running = RunningServer(server)
    yield running
    await running.admin.aclose()


async def _snapshot_of(client: ServerClient, ready: trio.Event, release: trio.Event) -> None:
    async with client.events(since=None) as stream:
        assert isinstance(await stream.__anext__(), api.Snapshot)
        ready.set()
        await release.wait()


async def test_a_full_server_answers_503_and_takes_streams_again_once_one_ends(
        small_server: RunningServer) -> None:
    srv = small_server
    hub = srv.server.service.hub
    await srv.create_network("net")
    token = await srv.create_token("net")
    clients = [(await joined_client(srv, token, f"n{i}"))[0] for i in range(3)]
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                held = [(trio.Event(), trio.Event()) for _ in range(2)]
                for client, (ready, release) in zip(clients, held, strict=False):
                    nursery.start_soon(_snapshot_of, client, ready, release)
                    await ready.wait()
                assert hub.streams_held == 2
                with pytest.raises(APIError) as refused:
                    async with clients[2].events(since=None) as stream:
                        await stream.__anext__()
                assert refused.value.status == 503
                assert refused.value.reason == "too many open streams on this server (limit 2)"
                # Other API calls still work: only streams are refused.
                assert (await clients[2].get_state()).network.name == "net"
                held[0][1].set()  # the first client leaves
                while hub.streams_held > 1:  # the server sees the disconnect (bounded above)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.001)
                ready, release = trio.Event(), trio.Event()
                nursery.start_soon(_snapshot_of, clients[2], ready, release)
                await ready.wait()
                assert hub.streams_held == 2
                release.set()
                held[1][1].set()
    finally:
        for client in clients:
            await client.aclose()


def test_serve_raises_its_open_file_limit_and_says_so(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard open-file limit {hard}: too low to lower the soft one below it")
    low = 512

    def lower_soft_limit() -> None:  # in the child only
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    with bound_socket() as probe:
        port = port_of(probe)
    proc = subprocess.Popen([str(BIN / "signal-server"), "serve", "--data-dir", str(tmp_path),
                             "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=lower_soft_limit)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if "Address already in use" in ready:
            pytest.skip("the port was taken before the server bound it")
        assert "signal-server: ready" in ready, ready
        line = proc.stdout.readline().strip()
        got = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
        assert line == (f"signal-server: open-file limit {got} (raised from {low}): "
                        f"up to {stream_capacity(got)} event streams")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert any(row.startswith("Max open files") and row.split()[3] == str(got)
                   for row in limits.splitlines()), limits
    finally:
        reap(proc)


def test_a_relay_pool_takes_its_ports_from_the_stream_budget(tmp_path: Path) -> None:
    pool = RelayPool("127.0.0.1", 40000, 40999)
    options = ServerOptions(data_dir=tmp_path, http=("127.0.0.1", 1), relay=[pool])
    plain = ServerOptions(data_dir=tmp_path, http=("127.0.0.1", 1))
    soft = current_soft_limit()
    with_relay, without = SignalServer(options), SignalServer(plain)
    try:
        assert without.max_streams == stream_capacity(soft)
        assert with_relay.max_streams == stream_capacity(soft, relay_ports=1000)
        assert with_relay.service.hub.max_streams == with_relay.max_streams
    finally:
        with_relay.store.close()
        without.store.close()
