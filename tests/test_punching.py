"""The daemon's punch manager: sessions follow the peer list, probes are routed by the
sender's key, verdicts reach the agent. Two managers talk over an in-memory network
(real time: a path is found within milliseconds)."""

from __future__ import annotations

import base64

import trio
import trio.testing
from nacl.public import PrivateKey

from punchd.daemon.punching import Punching
from punchd.punch.candidates import candidate
from punchd.punch.session import PathFound, PunchEvent
from punchd.wire import api
from punchd.wire.addr import Addr
from punchd.wire.probe import Probe, ProbeCodec

ADDR_A, ADDR_B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def node(node_id: str, key: PrivateKey, addr: Addr) -> api.Node:
    return api.Node(id=node_id, network="net", name=node_id, signing_key="s", wg_public_key="w",
                    probe_public_key=base64.b64encode(bytes(key.public_key)).decode(),
                    listen_port=addr[1], candidates=(candidate("host", addr),))


class Wire:
    """Delivers what one manager sends to the other, from the sender's address."""

    def __init__(self) -> None:
        self.managers: dict[Addr, Punching] = {}
        self.sent: list[tuple[Addr, Addr]] = []
        self.cut = False

    def sender(self, me: Addr) -> Sender:
        return Sender(self, me)


class Sender:
    def __init__(self, wire: Wire, me: Addr) -> None:
        self.wire, self.me = wire, me

    async def send(self, payload: bytes, dest: Addr, /) -> None:
        self.wire.sent.append((self.me, dest))
        if not self.wire.cut and dest in self.wire.managers:
            self.wire.managers[dest].route(payload, self.me)


async def test_two_managers_find_each_other_and_report_it(nursery: trio.Nursery) -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    wire = Wire()
    events: list[tuple[str, str, PunchEvent]] = []
    both_found = trio.Event()

    def recorder(who: str):  # type: ignore[no-untyped-def]
        def record(nid: str, event: PunchEvent) -> None:
            events.append((who, nid, event))
            if len({w for w, _, e in events if isinstance(e, PathFound)}) == 2:
                both_found.set()
        return record

    a = Punching(wire.sender(ADDR_A), key_a, recorder("a"))
    b = Punching(wire.sender(ADDR_B), key_b, recorder("b"))
    wire.managers = {ADDR_A: a, ADDR_B: b}
    await nursery.start(a.run)
    await nursery.start(b.run)
    # Peers before our own candidates: nothing starts until they are known.
    a.sync_peers([node("B", key_b, ADDR_B)])
    b.sync_peers([node("A", key_a, ADDR_A)])
    assert a.session("B") is None
    a.update_local([candidate("host", ADDR_A)], None)
    b.update_local([candidate("host", ADDR_B)], None)
    assert a.session("B") is not None
    with trio.fail_after(1.0):
        await both_found.wait()
    found = {(who, nid): e.addr for who, nid, e in events if isinstance(e, PathFound)}
    assert found == {("a", "B"): ADDR_B, ("b", "A"): ADDR_A}
    pongs = await a.ping("B")
    assert [p.addr for p in pongs] == [ADDR_B]
    # The peer leaves: its session ends, its probes are dropped as unknown.
    a.sync_peers([])
    assert a.session("B") is None
    before = a.unknown_sender
    codec = ProbeCodec(key_b, key_a.public_key)
    a.route(codec.seal(Probe("ping", bytes(16), 0.0)), ADDR_B)
    assert a.unknown_sender == before + 1


async def test_probes_from_unknown_keys_and_garbage_are_dropped(nursery: trio.Nursery) -> None:
    wire = Wire()
    mine = PrivateKey.generate()
    manager = Punching(wire.sender(ADDR_A), mine, lambda nid, e: None)
    await nursery.start(manager.run)
    manager.update_local([candidate("host", ADDR_A)], None)
    stranger = ProbeCodec(PrivateKey.generate(), mine.public_key)
    manager.route(stranger.seal(Probe("ping", bytes(16), 0.0)), ADDR_B)
    manager.route(b"PNCH\x09garbage", ADDR_B)
    manager.route(b"", ADDR_B)
    assert manager.unknown_sender == 3
    assert wire.sent == []  # nothing answered


async def test_a_key_change_replaces_the_session(nursery: trio.Nursery) -> None:
    wire = Wire()
    manager = Punching(wire.sender(ADDR_A), PrivateKey.generate(), lambda nid, e: None)
    await nursery.start(manager.run)
    manager.update_local([candidate("host", ADDR_A)], None)
    manager.sync_peers([node("B", PrivateKey.generate(), ADDR_B)])
    first = manager.session("B")
    manager.sync_peers([node("B", PrivateKey.generate(), ADDR_B)])
    assert manager.session("B") is not None and manager.session("B") is not first
