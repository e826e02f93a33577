"""How relayed datagrams cross the relay host: in the kernel (nftables) or in Python.

Both are a :class:`Forwarder`: ``install`` an allocation whose two sides are bound
(again after a side moved), ``remove`` it, and report per allocation how many
datagrams the forwarder itself carried (``forwarded``), which keeps busy allocations
from expiring. The relay service always listens on the allocation's ports too: binds
(STUN) arrive there, and so does whatever the kernel did not take.

:class:`NftForwarder` programs a table ``ip punchd_relay`` with stateless rewrites,
per packet and without conntrack: in prerouting (priority raw) a datagram from side
A's bound endpoint to A's relay port that is not STUN gets ``notrack``, a mark, and
its destination rewritten to B's endpoint; the host routes it on; in postrouting the
mark selects the rewrite of its source to B's relay port. Stateless, because a
conntrack entry made by an early bind (delivered to the local socket) would keep
every later datagram of that flow away from a NAT rule; and rewriting the source only
after routing, because Linux drops an arriving packet whose source is one of its own
addresses. The UDP checksum is cleared after each rewrite (legal for IPv4, and
WireGuard authenticates every datagram anyway): nft's incremental update of a port
turns a sender's "no checksum" (0, as punchd's raw-socket probes send) into a wrong
one, which the next NAT's conntrack drops as invalid. Dispatch is by verdict maps keyed on relay address and port, so the cost
per datagram does not grow with the number of allocations. The host must forward
IPv4: ``net.ipv4.ip_forward`` is set to 1 when the forwarder opens and put back
when it closes.

:class:`UserspaceForwarder` installs nothing: the service's sockets do the
forwarding (the fallback where nftables is unavailable).
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Protocol

import trio

from punchd.errors import RelayError
from punchd.wire.stun import MAGIC_COOKIE

from .table import Allocation

log = logging.getLogger("signal_server.relay")

TABLE = "punchd_relay"
MARK_BASE = 0x7E000000  # marks this table sets; far from the small values others use


class Forwarder(Protocol):
    kind: str

    async def open(self) -> None: ...
    async def install(self, alloc: Allocation) -> None: ...
    async def remove(self, alloc: Allocation) -> None: ...
    async def forwarded(self) -> dict[str, int]: ...
    async def close(self) -> None: ...


class UserspaceForwarder:
    kind = "userspace"

    async def open(self) -> None:
        pass

    async def install(self, alloc: Allocation) -> None:
        pass

    async def remove(self, alloc: Allocation) -> None:
        pass

    async def forwarded(self) -> dict[str, int]:
        return {}  # the service counts what its sockets forward

    async def close(self) -> None:
        pass


async def _nft(script: str) -> str:
    try:
        result = await trio.run_process(["nft", "-f", "-"], stdin=script.encode(),
                                        capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        raise RelayError(f"nft: {exc.strerror}") from exc
    if result.returncode != 0:
        raise RelayError(f"nft: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


class NftForwarder:
    kind = "nft"

    def __init__(self, addresses: list[str], *, forwarding_sysctl: Path | None = None) -> None:
        self._addresses = addresses
        self._sysctl = forwarding_sysctl or Path("/proc/sys/net/ipv4/ip_forward")
        self._serial: dict[str, int] = {}  # allocation id -> its mark serial
        self._next_serial = 0
        self._forwarding_before: str | None = None  # what open() changed, to put back

    async def open(self) -> None:
        await _nft(f"""
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
    map ports {{ type ipv4_addr . inet_service : verdict; }}
    map marks {{ type mark : verdict; }}
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        ip daddr . udp dport vmap @ports
    }}
    chain post {{
        type filter hook postrouting priority srcnat; policy accept;
        meta mark vmap @marks
    }}
}}
""")
        try:
            before = (await trio.Path(self._sysctl).read_text()).strip()
            if before != "1":
                await trio.Path(self._sysctl).write_text("1\n")
                self._forwarding_before = before
        except OSError as exc:
            await self.close()
            raise RelayError(f"cannot enable IPv4 forwarding ({self._sysctl}): "
                             f"{exc.strerror}") from exc

    def _marks(self, alloc: Allocation) -> tuple[int, int]:
        serial = self._serial[alloc.id]
        return MARK_BASE + 2 * serial, MARK_BASE + 2 * serial + 1

    async def install(self, alloc: Allocation) -> None:
        a, b = alloc.sides
        if a.bound is None or b.bound is None:
            return
        first = alloc.id not in self._serial
        if first:
            self._serial[alloc.id] = self._next_serial
            self._next_serial += 1
        mark_a, mark_b = self._marks(alloc)  # the mark of packets headed to side a / b
        name = f"a_{alloc.id}"
        lines = [f"add chain ip {TABLE} {name}", f"flush chain ip {TABLE} {name}",
                 f"add counter ip {TABLE} c_{alloc.id}"]
        for src, dst, mark in ((a, b, mark_b), (b, a, mark_a)):
            assert src.bound is not None and dst.bound is not None
            lines.append(
                f"add rule ip {TABLE} {name} ip saddr {src.bound[0]} udp sport {src.bound[1]} "
                f"udp dport {src.local[1]} @th,96,32 != {MAGIC_COOKIE:#x} "
                f'counter name "c_{alloc.id}" notrack meta mark set {mark:#x} '
                f"ip daddr set {dst.bound[0]} udp dport set {dst.bound[1]} "
                f"udp checksum set 0 accept")
        for index, side in enumerate(alloc.sides):
            out = f"m_{alloc.id}_{index}"  # rewrites packets headed to this side
            lines += [f"add chain ip {TABLE} {out}", f"flush chain ip {TABLE} {out}",
                      f"add rule ip {TABLE} {out} ip saddr set {side.local[0]} "
                      f"udp sport set {side.local[1]} udp checksum set 0"]
        if first:
            lines += [
                f"add element ip {TABLE} ports {{ {a.local[0]} . {a.local[1]} : jump {name}, "
                f"{b.local[0]} . {b.local[1]} : jump {name} }}",
                f"add element ip {TABLE} marks {{ {mark_a:#x} : jump m_{alloc.id}_0, "
                f"{mark_b:#x} : jump m_{alloc.id}_1 }}"]
        await _nft("\n".join(lines) + "\n")

    async def remove(self, alloc: Allocation) -> None:
        if alloc.id not in self._serial:
            return
        mark_a, mark_b = self._marks(alloc)
        a, b = alloc.sides
        await _nft("\n".join([
            f"delete element ip {TABLE} ports {{ {a.local[0]} . {a.local[1]}, "
            f"{b.local[0]} . {b.local[1]} }}",
            f"delete element ip {TABLE} marks {{ {mark_a:#x}, {mark_b:#x} }}",
            f"flush chain ip {TABLE} a_{alloc.id}", f"delete chain ip {TABLE} a_{alloc.id}",
            f"delete chain ip {TABLE} m_{alloc.id}_0", f"delete chain ip {TABLE} m_{alloc.id}_1",
            f"delete counter ip {TABLE} c_{alloc.id}"]) + "\n")
        del self._serial[alloc.id]

    async def forwarded(self) -> dict[str, int]:
        result = await trio.run_process(["nft", "-j", "list", "counters", "table", "ip", TABLE],
                                        capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode != 0:
            return {}
        counts: dict[str, int] = {}
        for item in json.loads(result.stdout or b"{}").get("nftables", []):
            counter = item.get("counter")
            if counter and str(counter.get("name", "")).startswith("c_"):
                counts[counter["name"][2:]] = int(counter.get("packets", 0))
        return counts

    async def close(self) -> None:
        await self.remove_stale()
        self._serial.clear()
        # A host that did not forward before the relay does not forward after it.
        if self._forwarding_before is not None:
            with trio.CancelScope(shield=True):
                try:
                    await trio.Path(self._sysctl).write_text(self._forwarding_before + "\n")
                except OSError as exc:
                    log.warning("cannot restore %s to %s: %s", self._sysctl,
                                self._forwarding_before, exc.strerror)
            self._forwarding_before = None

    @staticmethod
    async def remove_stale() -> None:
        """Delete the table if it exists (quietly: no nft, or no table, is fine)."""
        with trio.CancelScope(shield=True):
            try:
                await trio.run_process(["nft", "delete", "table", "ip", TABLE], check=False,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError:
                pass
