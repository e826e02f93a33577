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
come from one seeded RNG. ``down`` black-holes everything (a path outage).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Addr = tuple[str, int]


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
        if m is None:
            return None
        if self.filtering == "apdf" and remote not in m.contacted:
            return None
        if self.filtering == "adf" and remote[0] not in {c[0] for c in m.contacted}:
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
        self.stats = NetStats()
        self._hosts: dict[Addr, tuple[Nat | None, Receiver]] = {}
        self._nats: dict[str, Nat] = {}
        self._queue: list[tuple[float, int, bytes, Addr, Addr, bool]] = []
        self._seq = 0

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
