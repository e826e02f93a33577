"""A NAT simulator with RFC 4787 behaviours, for sans-IO tests (no sockets, no clock).

Mapping: ``eim`` (endpoint-independent), ``adm`` (address-dependent), ``apdm``
(address-and-port-dependent). Filtering: ``eif``, ``adf``, ``apdf``. Port allocation:
``preserve`` (the internal port when free), ``sequential``, ``random`` (seeded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Addr = tuple[str, int]


@dataclass
class Nat:
    public_ip: str
    mapping: str = "eim"
    filtering: str = "apdf"
    ports: str = "preserve"
    seed: int = 0
    # (internal, mapping key) -> external port
    table: dict[tuple[Addr, tuple[object, ...]], int] = field(default_factory=dict)
    # external port -> (internal, set of remotes contacted)
    sessions: dict[int, tuple[Addr, set[Addr]]] = field(default_factory=dict)
    _next_port: int = 20000
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
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
        return self._next_port

    def outbound(self, internal: Addr, remote: Addr) -> Addr:
        """Translate a packet leaving the LAN; returns its public source address."""
        key = (internal, self._key(remote))
        port = self.table.get(key)
        if port is None:
            port = self.table[key] = self._allocate(internal)
            self.sessions[port] = (internal, set())
        self.sessions[port][1].add(remote)
        return (self.public_ip, port)

    def inbound(self, remote: Addr, public_port: int) -> Addr | None:
        """Translate a packet arriving from outside; None when the NAT drops it."""
        session = self.sessions.get(public_port)
        if session is None:
            return None
        internal, contacted = session
        if self.filtering == "apdf" and remote not in contacted:
            return None
        if self.filtering == "adf" and remote[0] not in {c[0] for c in contacted}:
            return None
        return internal
