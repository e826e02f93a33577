"""The NAT simulator itself: RFC 4787 mapping, filtering, allocation, timeout, hairpin,
and the fake network's loss, duplication, reordering and routing."""

from __future__ import annotations

import itertools

import pytest

from .natsim import Nat, Network, Simulation

IN = ("10.0.0.2", 51820)
S1, S1B, S2 = ("192.0.2.10", 3478), ("192.0.2.10", 3479), ("192.0.2.11", 3478)


@pytest.mark.parametrize("mapping", ["eim", "adm", "apdm"])
def test_mapping_behaviours(mapping: str) -> None:
    nat = Nat("198.51.100.1", mapping=mapping, ports="sequential")
    a, b, c = nat.outbound(IN, S1), nat.outbound(IN, S1B), nat.outbound(IN, S2)
    assert a == nat.outbound(IN, S1)  # a mapping is reused for the same destination
    same_ip_same_port = {"eim": True, "adm": True, "apdm": False}[mapping]
    other_ip_same_port = {"eim": True, "adm": False, "apdm": False}[mapping]
    assert (a == b) is same_ip_same_port
    assert (a == c) is other_ip_same_port


@pytest.mark.parametrize(("filtering", "expect"), [
    ("eif", (True, True, True)), ("adf", (True, True, False)), ("apdf", (True, False, False))])
def test_filtering_behaviours(filtering: str, expect: tuple[bool, bool, bool]) -> None:
    nat = Nat("198.51.100.1", filtering=filtering)
    port = nat.outbound(IN, S1)[1]
    got = tuple(nat.inbound(src, port) == IN for src in (S1, S1B, S2))
    assert got == expect
    assert nat.inbound(S1, port + 1) is None  # no mapping, no entry


def test_port_allocation() -> None:
    assert Nat("x", ports="preserve").outbound(IN, S1)[1] == IN[1]
    seq = Nat("x", mapping="apdm", ports="sequential")
    ports = [seq.outbound(IN, (S1[0], p))[1] for p in range(1000, 1005)]
    assert [b - a for a, b in itertools.pairwise(ports)] == [1, 1, 1, 1]
    rnd = Nat("x", mapping="apdm", ports="random", seed=7)
    ports = [rnd.outbound(IN, (S1[0], p))[1] for p in range(1000, 1010)]
    assert len(set(ports)) == 10
    assert {b - a for a, b in itertools.pairwise(ports)} != {1}
    again = Nat("x", mapping="apdm", ports="random", seed=7)
    assert ports == [again.outbound(IN, (S1[0], p))[1] for p in range(1000, 1010)]  # seeded
    # preserve, but the port is taken by another host's mapping: a different port
    pre = Nat("x", mapping="eim", ports="preserve")
    pre.outbound(IN, S1)
    assert pre.outbound(("10.0.0.3", IN[1]), S1)[1] != IN[1]


def test_mapping_timeout_and_refresh() -> None:
    nat = Nat("198.51.100.1", ports="sequential", timeout=30.0)
    port = nat.outbound(IN, S1, now=0.0)[1]
    assert nat.inbound(S1, port, now=29.0) == IN  # inbound does not refresh by default
    assert nat.inbound(S1, port, now=30.0) is None
    port = nat.outbound(IN, S1, now=40.0)[1]
    nat.outbound(IN, S1, now=60.0)  # outbound refreshes
    assert nat.inbound(S1, port, now=85.0) == IN
    inbound_refresh = Nat("198.51.100.1", timeout=30.0, refresh_inbound=True)
    port = inbound_refresh.outbound(IN, S1, now=0.0)[1]
    assert inbound_refresh.inbound(S1, port, now=20.0) == IN
    assert inbound_refresh.inbound(S1, port, now=45.0) == IN


def test_flush_forgets_mappings() -> None:
    nat = Nat("198.51.100.1")
    port = nat.outbound(IN, S1)[1]
    nat.flush()
    assert nat.inbound(S1, port) is None


def test_bad_behaviour_names_are_refused() -> None:
    with pytest.raises(ValueError):
        Nat("x", mapping="full-cone")


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], float]] = []

    def __call__(self, data: bytes, src: tuple[str, int], now: float) -> None:
        self.got.append((data, src, now))


def two_lans(**kw: float) -> tuple[Network, Nat, Nat, Recorder, Recorder, Recorder]:
    net = Network(seed=1, **kw)
    na = net.add_nat(Nat("198.51.100.1", filtering="apdf"))
    nb = net.add_nat(Nat("203.0.113.1", filtering="eif"))
    a, b, pub = Recorder(), Recorder(), Recorder()
    net.attach(("10.0.0.2", 5000), na, a)
    net.attach(("10.1.0.2", 6000), nb, b)
    net.attach(("192.0.2.50", 7000), None, pub)
    return net, na, nb, a, b, pub


def test_network_translates_and_filters_at_arrival() -> None:
    net, _, nb, a, b, pub = two_lans()
    net.send(b"to-b", ("10.0.0.2", 5000), ("203.0.113.1", 6000), 0.0)  # b has no mapping yet
    net.send(b"to-pub", ("10.0.0.2", 5000), ("192.0.2.50", 7000), 0.0)
    net.deliver_due(1.0)
    assert net.stats.filtered == 1
    assert pub.got == [(b"to-pub", ("198.51.100.1", 5000), 0.02)]
    # b opens its (EIF) mapping towards anyone; then a's datagram gets in
    net.send(b"hello", ("10.1.0.2", 6000), ("192.0.2.50", 7000), 1.0)
    net.send(b"to-b", ("10.0.0.2", 5000), ("203.0.113.1", 6000), 1.0)
    net.deliver_due(2.0)
    assert b.got == [(b"to-b", ("198.51.100.1", 5000), 1.02)]
    # a is APDF: those a contacted may answer (the public host, b's mapping), others not
    net.attach(("10.1.0.3", 6001), nb, Recorder())
    net.send(b"x", ("192.0.2.50", 7000), ("198.51.100.1", 5000), 2.0)
    net.send(b"y", ("10.1.0.2", 6000), ("198.51.100.1", 5000), 2.0)
    net.send(b"z", ("10.1.0.3", 6001), ("198.51.100.1", 5000), 2.0)
    net.deliver_due(3.0)
    assert [d for d, _, _ in a.got] == [b"x", b"y"]


def test_private_addresses_are_unroutable_across_lans_and_lan_is_direct() -> None:
    net, na, _, _a, b, _ = two_lans()
    c = Recorder()
    net.attach(("10.0.0.3", 5000), na, c)
    net.send(b"lan", ("10.0.0.2", 5000), ("10.0.0.3", 5000), 0.0)
    net.send(b"far", ("10.0.0.2", 5000), ("10.1.0.2", 6000), 0.0)
    net.deliver_due(1.0)
    assert c.got == [(b"lan", ("10.0.0.2", 5000), 0.0005)]
    assert b.got == [] and net.stats.unroutable == 1


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin(hairpin: bool) -> None:
    net = Network()
    nat = net.add_nat(Nat("198.51.100.1", filtering="eif", hairpin=hairpin))
    a, c = Recorder(), Recorder()
    net.attach(("10.0.0.2", 5000), nat, a)
    net.attach(("10.0.0.3", 5001), nat, c)
    nat.outbound(("10.0.0.3", 5001), ("192.0.2.1", 1))  # c's public mapping: port 5001
    net.send(b"hp", ("10.0.0.2", 5000), ("198.51.100.1", 5001), 0.0)
    net.deliver_due(1.0)
    assert c.got == ([(b"hp", ("198.51.100.1", 5000), 0.0005)] if hairpin else [])


def test_loss_duplication_and_reordering_are_seeded_and_bounded() -> None:
    def run(seed: int) -> list[bytes]:
        net = Network(seed=seed, loss=0.2, duplicate=0.1, reorder=0.2, jitter=0.005)
        got = Recorder()
        net.attach(("192.0.2.1", 1), None, Recorder())
        net.attach(("192.0.2.2", 2), None, got)
        for i in range(500):
            net.send(i.to_bytes(2, "big"), ("192.0.2.1", 1), ("192.0.2.2", 2), i * 0.001)
        net.deliver_due(10.0)
        assert net.stats.lost + net.stats.delivered == 500 + net.stats.duplicated
        return [d for d, _, _ in got.got]

    first = run(3)
    assert first == run(3)
    seq = [int.from_bytes(d, "big") for d in first]
    assert 300 < len(set(seq)) < 450  # ~20 % lost
    assert len(seq) > len(set(seq))  # some duplicated
    assert seq != sorted(seq)  # some reordered


def test_outage_drops_everything_in_flight() -> None:
    net = Network()
    got = Recorder()
    net.attach(("192.0.2.1", 1), None, Recorder())
    net.attach(("192.0.2.2", 2), None, got)
    net.send(b"a", ("192.0.2.1", 1), ("192.0.2.2", 2), 0.0)
    net.down = True
    net.send(b"b", ("192.0.2.1", 1), ("192.0.2.2", 2), 0.0)
    net.deliver_due(1.0)
    net.down = False
    net.send(b"c", ("192.0.2.1", 1), ("192.0.2.2", 2), 1.0)
    net.deliver_due(2.0)
    assert [d for d, _, _ in got.got] == [b"c"]


class Echo:
    """A tiny agent: pings the other side every second; answers pings."""

    def __init__(self, peer: tuple[str, int] | None) -> None:
        self.peer, self.out, self.got = peer, list[tuple[bytes, tuple[str, int]]](), 0
        self.next = 0.0 if peer else None

    def handle_datagram(self, data: bytes, src: tuple[str, int], now: float) -> None:
        self.got += 1
        if data == b"ping":
            self.out.append((b"pong", src))

    def handle_timer(self, now: float) -> None:
        assert self.peer is not None and self.next is not None
        self.out.append((b"ping", self.peer))
        self.next = now + 1.0

    def next_deadline(self) -> float | None:
        return self.next

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.out = self.out, []
        return out


def test_simulation_runs_agents_on_simulated_time() -> None:
    net = Network(latency=0.01)
    sim = Simulation(net)
    nat = Nat("198.51.100.1")
    client, server = Echo(("192.0.2.9", 9)), Echo(None)
    sim.add(client, ("10.0.0.2", 5000), nat)
    sim.add(server, ("192.0.2.9", 9), None)
    assert sim.run_until(10.0, stop=lambda: client.got >= 5)
    assert 4.0 < sim.now < 4.1  # pings at 0..4 s, each answered after 20 ms
    assert not sim.run_until(20.0, stop=lambda: client.got >= 100)
    assert sim.now == 20.0
