"""A NAT simulator with RFC 4787 behaviours and a seeded fake network, for sans-IO tests.

No sockets and no clock: time is a float passed in, and :class:`Simulation` is a pure
event queue that jumps from one event (a datagram arriving, an agent's timer) to the
next, so seconds of simulated punching cost milliseconds.

:class:`Nat` — mapping (RFC 4787 §4.1): ``eim`` endpoint-independent, ``adm``
address-dependent, ``apdm`` address-and-port-dependent. Filtering (§5): ``eif``,
``adf``, ``apdf``. Port allocation (§4.2.1): ``preserve`` (the internal port when
free, else the next free one), ``sequential``, ``random`` (seeded). A mapping expires
``timeout`` seconds after the last outbound packet (§4.3; inbound refreshes too with
``refresh_inbound``). ``hairpin`` (§6) lets a host reach another host of the same NAT
through the NAT's public address. ``flush()`` forgets every mapping, like
``conntrack -F`` on a Linux NAT.

:class:`Network` — hosts on LANs behind NATs or on the public side; a datagram is
translated on the way out when sent and filtered on the way in when it arrives (so
simultaneous-open races are real); loss, duplication, reordering and latency jitter
come from one seeded RNG. ``down`` black-holes everything (a path outage);
``block(ip1, ip2)`` drops what travels between two public addresses (one path dies).

:class:`SimRelay` — the relay: a port per side; what reaches a side's port from that
side's bound endpoint leaves from the other side's port toward the other's endpoint.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from nacl.public import PrivateKey

from punchd.discovery.classify import NatClassifier
from punchd.punch.candidates import candidate
from punchd.punch.session import PunchEvent, PunchSession
from punchd.wire.addr import Addr, parse_addr
from punchd.wire.api import NatReport
from signal_server.stun_server import StunCore


@dataclass
class _Mapping:
    internal: Addr
    port: int
    key: tuple[Addr, tuple[object, ...]]
    contacted: set[Addr] = field(default_factory=set)
    last_used: float = 0.0


@dataclass
class Nat:
    public_ip: str
    mapping: str = "eim"
    filtering: str = "apdf"
    ports: str = "preserve"
    seed: int = 0
    timeout: float = 120.0  # RFC 4787 REQ-5: at least 2 min
    hairpin: bool = False
    refresh_inbound: bool = False
    # The router itself takes unsolicited input (many Linux routers): a dropped inbound
    # packet leaves a conntrack entry (remote -> public port), and a later outbound flow
    # toward that remote gets another public port to keep the tuples unique.
    accepts_input: bool = False
    claimed: set[tuple[Addr, int]] = field(default_factory=set)
    table: dict[tuple[Addr, tuple[object, ...]], _Mapping] = field(default_factory=dict)
    sessions: dict[int, _Mapping] = field(default_factory=dict)  # by external port
    _next_port: int = 20000
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if self.mapping not in ("eim", "adm", "apdm"):
            raise ValueError(f"mapping {self.mapping!r}")
        if self.filtering not in ("eif", "adf", "apdf"):
            raise ValueError(f"filtering {self.filtering!r}")
        if self.ports not in ("preserve", "sequential", "random"):
            raise ValueError(f"ports {self.ports!r}")
        self._rng = random.Random(self.seed)

    def _key(self, remote: Addr) -> tuple[object, ...]:
        return {"eim": (), "adm": (remote[0],), "apdm": remote}[self.mapping]

    def _allocate(self, internal: Addr) -> int:
        if self.ports == "preserve" and internal[1] not in self.sessions:
            return internal[1]
        if self.ports == "random":
            while True:
                port = self._rng.randrange(1024, 65536)
                if port not in self.sessions:
                    return port
        while self._next_port in self.sessions:
            self._next_port += 1
        port = self._next_port
        self._next_port += 1
        return port

    def _expire(self, now: float | None) -> None:
        if now is None:
            return
        for m in [m for m in self.sessions.values() if now - m.last_used >= self.timeout]:
            del self.sessions[m.port]
            del self.table[m.key]

    def flush(self) -> None:
        """Forget every mapping (conntrack -F)."""
        self.table.clear()
        self.sessions.clear()

    def outbound(self, internal: Addr, remote: Addr, now: float | None = None) -> Addr:
        """Translate a packet leaving the LAN; returns its public source address."""
        self._expire(now)
        key = (internal, self._key(remote))
        m = self.table.get(key)
        if m is not None and remote not in m.contacted and (remote, m.port) in self.claimed:
            key = (internal, ("clash", remote))  # this one flow moves to a new port
            m = self.table.get(key)
        if m is None:
            port = self._allocate(internal)
            m = self.table[key] = self.sessions[port] = _Mapping(internal, port, key)
        m.contacted.add(remote)
        if now is not None:
            m.last_used = now
        return (self.public_ip, m.port)

    def inbound(self, remote: Addr, public_port: int, now: float | None = None) -> Addr | None:
        """Translate a packet arriving from outside; None when the NAT drops it."""
        self._expire(now)
        m = self.sessions.get(public_port)
        if m is None or (self.filtering == "apdf" and remote not in m.contacted) or (
                self.filtering == "adf" and remote[0] not in {c[0] for c in m.contacted}):
            if self.accepts_input:
                self.claimed.add((remote, public_port))
            return None
        if self.refresh_inbound and now is not None:
            m.last_used = now
        return m.internal


Receiver = Callable[[bytes, Addr, float], None]


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # random loss or outage
    filtered: int = 0  # dropped by a NAT (no mapping or filter)
    unroutable: int = 0  # to a private address on another LAN, or nobody there
    duplicated: int = 0


class Network:
    def __init__(self, *, seed: int = 0, latency: float = 0.02, lan_latency: float = 0.0005,
                 jitter: float = 0.0, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.latency, self.lan_latency, self.jitter = latency, lan_latency, jitter
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.down = False
        self.blocked: set[frozenset[str]] = set()
        self.stats = NetStats()
        self._hosts: dict[Addr, tuple[Nat | None, Receiver]] = {}
        self._nats: dict[str, Nat] = {}
        self._queue: list[tuple[float, int, bytes, Addr, Addr, bool]] = []
        self._seq = 0

    def block(self, ip1: str, ip2: str) -> None:
        self.blocked.add(frozenset((ip1, ip2)))

    def unblock(self, ip1: str, ip2: str) -> None:
        self.blocked.discard(frozenset((ip1, ip2)))

    def add_nat(self, nat: Nat) -> Nat:
        self._nats[nat.public_ip] = nat
        return nat

    def attach(self, addr: Addr, nat: Nat | None, receive: Receiver) -> None:
        """A host socket at ``addr``, on the LAN behind ``nat`` (None: public)."""
        if nat is not None and nat.public_ip not in self._nats:
            self.add_nat(nat)
        self._hosts[addr] = (nat, receive)

    def _delay(self, base: float) -> float:
        delay = base + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)
        if self.reorder and self.rng.random() < self.reorder:
            delay += base * 2  # held back: later datagrams overtake it
        return delay

    def _push(self, at: float, data: bytes, src: Addr, dst: Addr, via_wan: bool) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, data, src, dst, via_wan))

    def send(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        self.stats.sent += 1
        if self.down or (self.loss and self.rng.random() < self.loss):
            self.stats.lost += 1
            return
        nat = self._hosts[src][0] if src in self._hosts else None
        peer = self._hosts.get(dst)
        if nat is not None and peer is not None and peer[0] is nat:
            wire_src, base, wan = src, self.lan_latency, False  # same LAN
        elif nat is not None and dst[0] == nat.public_ip:
            if not nat.hairpin:  # RFC 4787 REQ-9 would have it; many NATs do not
                self.stats.filtered += 1
                return
            wire_src, base, wan = nat.outbound(src, dst, now), self.lan_latency, True
        else:
            wire_src = nat.outbound(src, dst, now) if nat is not None else src
            base, wan = self.latency, True
            if frozenset((wire_src[0], dst[0])) in self.blocked:
                self.stats.lost += 1
                return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            self._push(now + self._delay(base), data, wire_src, dst, wan)

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def deliver_due(self, now: float) -> None:
        """Deliver, in time order, every datagram due by ``now``."""
        while self._queue and self._queue[0][0] <= now:
            at, _, data, src, dst, wan = heapq.heappop(self._queue)
            if self.down:
                self.stats.lost += 1
                continue
            target: Addr | None = dst
            if wan and dst[0] in self._nats:
                target = self._nats[dst[0]].inbound(src, dst[1], at)
                if target is None:
                    self.stats.filtered += 1
                    continue
            host = self._hosts.get(target) if target else None
            if host is None or (wan and host[0] is not None and target == dst):
                self.stats.unroutable += 1  # nobody there, or a private address
                continue
            self.stats.delivered += 1
            host[1](data, src, at)


class Agent(Protocol):
    """The sans-IO shape every simulated endpoint has (the punch session's)."""

    def handle_datagram(self, data: bytes, src: Addr, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]: ...


class Simulation:
    """Runs agents on a :class:`Network` as a discrete event queue (no real time)."""

    def __init__(self, net: Network, now: float = 0.0) -> None:
        self.net = net
        self.now = now
        self.agents: list[tuple[Agent, Addr]] = []

    def add(self, agent: Agent, addr: Addr, nat: Nat | None) -> None:
        def receive(data: bytes, src: Addr, at: float) -> None:
            agent.handle_datagram(data, src, at)
            self._flush(agent, addr)
        self.net.attach(addr, nat, receive)
        self.agents.append((agent, addr))

    def _flush(self, agent: Agent, addr: Addr) -> None:
        for data, dst in agent.datagrams_to_send():
            self.net.send(data, addr, dst, self.now)

    def flush_all(self) -> None:
        for agent, addr in self.agents:
            self._flush(agent, addr)

    def step(self) -> bool:
        """Advance to the next event; False when nothing is left to happen."""
        self.flush_all()
        times = [t for a, _ in self.agents if (t := a.next_deadline()) is not None]
        if (t := self.net.next_time()) is not None:
            times.append(t)
        if not times:
            return False
        self.now = max(self.now, min(times))
        self.net.deliver_due(self.now)
        for agent, addr in self.agents:
            deadline = agent.next_deadline()
            if deadline is not None and deadline <= self.now:
                agent.handle_timer(self.now)
                self._flush(agent, addr)
        return True

    def run_until(self, until: float, stop: Callable[[], bool] | None = None,
                  max_steps: int = 200_000) -> bool:
        """Run to ``until`` (simulated seconds) or until ``stop()``; True if it stopped."""
        for _ in range(max_steps):
            if stop is not None and stop():
                return True
            times = [t for a, _ in self.agents if (t := a.next_deadline()) is not None]
            if (t := self.net.next_time()) is not None:
                times.append(t)
            if not times or min(times) > until:
                self.now = max(self.now, until)
                return stop is not None and stop()
            self.step()
        raise AssertionError("simulation did not settle (a busy loop?)")


class SimRelay:
    """The relay, as the signal server runs it: one port per side of an allocation."""

    def __init__(self, net: Network, ip: str = "192.0.2.20", ports: tuple[int, int] = (40000, 40001)
                 ) -> None:
        self.net = net
        self.addrs = ((ip, ports[0]), (ip, ports[1]))
        self.bound: list[Addr | None] = [None, None]
        self.forwarded = self.dropped = 0
        for side in (0, 1):
            net.attach(self.addrs[side], None,
                       lambda data, src, at, side=side: self._receive(side, data, src, at))

    def bind(self, side: int, node: Node, now: float) -> None:
        """The node's bind from WireGuard's port: its NAT maps the port toward the relay,
        the relay records that mapping, and the node's session gets its relay address."""
        self.bound[side] = (node.nat.outbound(node.addr, self.addrs[side], now)
                            if node.nat is not None else node.addr)
        node.s.set_relay(self.addrs[side], now)
        node._collect(now)

    def _receive(self, side: int, data: bytes, src: Addr, at: float) -> None:
        other = self.bound[1 - side]
        if src != self.bound[side] or other is None:
            self.dropped += 1
            return
        self.forwarded += 1
        self.net.send(data, self.addrs[1 - side], other, at)


# -- two punchd nodes behind simulated NATs ------------------------------------------------

STUN_PRIMARY, STUN_OTHER = ("192.0.2.10", 3478), ("192.0.2.11", 3479)
WG_PORT = 51820

# The lab's NAT names (netns_tests use the same words) as RFC 4787 behaviours.
NAT_KINDS: dict[str, tuple[str, str, str] | None] = {  # mapping, filtering, ports
    "none": None,
    "cone": ("eim", "eif", "preserve"),  # full cone
    "rc": ("eim", "adf", "preserve"),  # address-restricted cone
    "prc": ("eim", "apdf", "preserve"),  # port-restricted cone
    "adm": ("adm", "apdf", "sequential"),
    "symseq": ("apdm", "apdf", "sequential"),
    "sym": ("apdm", "apdf", "random"),
}


def discover(nat: Nat | None, local: Addr, now: float = 0.0) -> NatReport:
    """What punchd's discovery reports through ``nat``: the real classifier against the
    real STUN server core, datagrams translated by the simulated NAT."""
    server = StunCore(STUN_PRIMARY, STUN_OTHER)
    clf = NatClassifier(STUN_PRIMARY, local[1], now=now)
    for _ in range(200):
        while (out := clf.datagram_to_send(now)) is not None:
            data, dest = out
            src = nat.outbound(local, dest, now) if nat else local
            answer = server.handle(data, src, dest)
            if answer is not None:
                delivered = nat.inbound(answer[1], src[1], now) if nat else local
                if delivered == local:
                    clf.handle_datagram(answer[0], answer[1], now)
        if clf.done:
            return clf.report()
        deadline = clf.next_deadline()
        assert deadline is not None
        now = deadline
        clf.handle_timer(now)
    raise AssertionError("classifier did not finish")


class Node:
    """A punch session as a simulated endpoint; records its events with their times."""

    def __init__(self, name: str, addr: Addr, nat: Nat | None) -> None:
        self.name, self.addr, self.nat = name, addr, nat
        self.key = PrivateKey(bytes([len(name)]) * 31 + name[:1].encode())
        self.report = discover(nat, addr)
        self.candidates = [candidate("host", addr)]
        if self.report.public_endpoint and parse_addr(self.report.public_endpoint) != addr:
            self.candidates.append(candidate("srflx", parse_addr(self.report.public_endpoint)))
        self.session: PunchSession | None = None
        self.log: list[tuple[float, PunchEvent]] = []

    def connect(self, peer: Node, rng: random.Random, now: float = 0.0,
                share_nat_reports: bool = True, own_report: bool = True) -> PunchSession:
        self.session = PunchSession(
            local_key=self.key, peer_key=peer.key.public_key,
            local_candidates=self.candidates, peer_candidates=peer.candidates,
            peer_nat=peer.report if share_nat_reports else None,
            local_nat=self.report if share_nat_reports and own_report else None,
            now=now, rng=rng)
        return self.session

    @property
    def s(self) -> PunchSession:
        assert self.session is not None
        return self.session

    def punch(self, now: float) -> None:
        self.s.punch(now)
        self._collect(now)

    def _collect(self, now: float) -> None:
        self.log.extend((now, e) for e in self.s.events())

    def handle_datagram(self, data: bytes, src: Addr, now: float) -> None:
        self.s.handle_datagram(data, src, now)
        self._collect(now)

    def handle_timer(self, now: float) -> None:
        self.s.handle_timer(now)
        self._collect(now)

    def next_deadline(self) -> float | None:
        return self.s.next_deadline()

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        self._collect(float("nan"))
        return self.s.datagrams_to_send()

    def first(self, kind: type[PunchEvent]) -> tuple[float, PunchEvent] | None:
        return next(((t, e) for t, e in self.log if isinstance(e, kind)), None)


def build_pair(kind_a: str, kind_b: str, *, seed: int = 0, same_nat: bool = False,
               share_nat_reports: bool = True, own_report: bool = True,
               **net_kw: float) -> tuple[Simulation, Node, Node]:
    """Two nodes behind NATs of the given kinds (see NAT_KINDS), sessions created, not
    punching yet. ``same_nat``: both behind A's NAT (hairpin off, LAN reachable).
    ``share_nat_reports=False``: sessions know no NAT report; ``own_report=False``: each
    knows only the peer's (the brief's minimal constructor)."""
    net = Network(seed=seed, **net_kw)
    sim = Simulation(net)
    net.attach(STUN_PRIMARY, None, lambda *_: None)

    def make_nat(kind: str, ip: str, nat_seed: int) -> Nat | None:
        spec = NAT_KINDS[kind]
        if spec is None:
            return None
        return net.add_nat(Nat(ip, mapping=spec[0], filtering=spec[1], ports=spec[2],
                               seed=nat_seed))

    nat_a = make_nat(kind_a, "198.51.100.1", seed * 2 + 1)
    a = Node("a", ("10.0.1.2", WG_PORT) if nat_a else ("192.0.2.101", WG_PORT), nat_a)
    if same_nat:
        nat_b, addr_b = nat_a, ("10.0.1.3", WG_PORT)
    else:
        nat_b = make_nat(kind_b, "203.0.113.1", seed * 2 + 2)
        addr_b = ("10.0.2.2", WG_PORT) if nat_b else ("192.0.2.102", WG_PORT)
    b = Node("b", addr_b, nat_b)
    rng = random.Random(seed)
    a.connect(b, rng, share_nat_reports=share_nat_reports, own_report=own_report)
    b.connect(a, rng, share_nat_reports=share_nat_reports, own_report=own_report)
    sim.add(a, a.addr, a.nat)
    sim.add(b, b.addr, b.nat)
    return sim, a, b
