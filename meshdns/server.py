"""meshdns's listeners: UDP and TCP on one port, answered from dedicated threads.

Why threads: trio's recvfrom/sendto path costs ~100 µs a query here, which caps a
trio loop at a few thousand qps; a blocking socket in its own thread with a
wire-format answer cache answers at a large multiple of that. The trio side only
swaps in new zones (:meth:`MeshDNSServer.set_zones`) and owns the threads' lifetime.

The cache maps the query bytes after the ID to the response bytes after the ID, so a
repeated question costs one dict lookup and the ID is patched in. It is dropped
whole whenever the zones change (reference swap: readers never see a half-built
zone). Response rate limiting per source prefix (/24, /56) keeps meshdns from
being an amplifier; malformed queries get FORMERR when their header parses and are
dropped otherwise; everything is counted.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSRecord

from .zone import NetworkZone, ZoneSet

MAX_UDP_NO_EDNS = 512  # RFC 1035 §4.2.1
MAX_UDP_EDNS = 1232  # the DNS flag day 2020 recommendation
RRL_RATE = 500.0  # responses per second per prefix
RRL_BURST = 1000.0
POLL_S = 0.2  # how soon threads notice a stop


@dataclass(frozen=True)
class DNSStatistics:
    queries: int
    answered: int
    refused: int
    formerr: int
    dropped_malformed: int
    rate_limited: int
    truncated: int
    tcp_queries: int
    cache_hits: int


class _Counters:
    def __init__(self) -> None:
        self.queries = self.answered = self.refused = self.formerr = 0
        self.dropped_malformed = self.rate_limited = self.truncated = 0
        self.tcp_queries = self.cache_hits = 0


class RateLimiter:
    """Token bucket per source prefix."""

    def __init__(self, rate: float = RRL_RATE, burst: float = RRL_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str | bytes, tuple[float, float]] = {}

    @staticmethod
    def prefix(ip: str) -> str | bytes:
        """The bucket key: the /24 of an IPv4 source, the /56 of an IPv6 one (per query,
        so string and byte slicing rather than :mod:`ipaddress`)."""
        if ":" in ip:
            return socket.inet_pton(socket.AF_INET6, ip.split("%")[0])[:7]
        return ip.rpartition(".")[0]

    def allow(self, ip: str, now: float) -> bool:
        key = self.prefix(ip)
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:
            self.buckets.clear()  # bounded memory under a spoofed-source flood
        return True


class _Generation:
    """One set of zones with the caches built from it, swapped in as one reference so
    an answer computed from old zones can never land in the new zones' cache."""

    __slots__ = ("cache", "udp_cache", "zones")

    def __init__(self, zones: ZoneSet) -> None:
        self.zones = zones
        self.cache: dict[tuple[bytes, int], bytes] = {}
        # The UDP listener's fast path: the same entries for max_size == MAX_UDP_EDNS,
        # keyed by the bytes alone (no tuple to build per query).
        self.udp_cache: dict[bytes, bytes] = {}


class Resolver:
    """Query bytes -> response bytes (sans-IO), with the wire-format cache."""

    def __init__(self, zones: ZoneSet) -> None:
        self.gen = _Generation(zones)
        self.counters = _Counters()

    @property
    def zones(self) -> ZoneSet:
        return self.gen.zones

    def set_zones(self, zones: ZoneSet) -> None:
        self.gen = _Generation(zones)

    def answer(self, query: bytes, max_size: int | None) -> bytes | None:
        """``max_size`` None: TCP (no truncation). None returned: drop the datagram."""
        c, gen = self.counters, self.gen
        c.queries += 1
        query = bytes(query)
        if len(query) < 12:
            c.dropped_malformed += 1
            return None
        key = (query[2:], max_size or 0)
        cached = gen.cache.get(key)
        if cached is not None:
            c.cache_hits += 1
            c.answered += 1
            return query[:2] + cached
        try:
            request = DNSRecord.parse(query)
        except (DNSError, struct.error, IndexError, ValueError, UnicodeDecodeError):
            return self._formerr(query)
        if request.header.qr or len(request.questions) != 1 or request.header.opcode != 0:
            return self._formerr(query)
        q = request.questions[0]
        reply = request.reply(ra=0, aa=1)
        reply.header.rd = request.header.rd
        opt = next((ar for ar in request.ar if ar.rtype == QTYPE.OPT), None)
        limit = max_size
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=MAX_UDP_EDNS))
            if limit is not None:
                limit = max(MAX_UDP_NO_EDNS, min(int(opt.rclass), MAX_UDP_EDNS))
        elif limit is not None:
            limit = MAX_UDP_NO_EDNS
        result = gen.zones.lookup(q.qname, q.qtype)
        reply.header.rcode = result.rcode
        reply.header.aa = int(result.aa)
        if result.rcode == RCODE.REFUSED:
            c.refused += 1
        for rr in result.answers:
            reply.add_answer(rr)
        for rr in result.authority:
            reply.add_auth(rr)
        wire: bytes = reply.pack()
        if limit is not None and len(wire) > limit:
            c.truncated += 1
            reply.rr, reply.auth = [], []
            reply.header.tc = 1
            wire = reply.pack()
        gen.cache[key] = wire[2:]
        if max_size == MAX_UDP_EDNS:
            gen.udp_cache[query[2:]] = wire[2:]
        c.answered += 1
        return wire

    def _formerr(self, query: bytes) -> bytes | None:
        c = self.counters
        flags = struct.unpack("!H", query[2:4])[0]
        if flags & 0x8000:  # a response sent to us: never answer (reflection loops)
            c.dropped_malformed += 1
            return None
        c.formerr += 1
        # Header only: ID echoed, QR=1, opcode echoed, RCODE=FORMERR, no sections.
        out_flags = 0x8000 | (flags & 0x7800) | RCODE.FORMERR
        return query[:2] + struct.pack("!HHHHH", out_flags, 0, 0, 0, 0)


class MeshDNSServer:
    def __init__(self, host: str, port: int, *, domain: str = "mesh",
                 rrl_rate: float | None = RRL_RATE, rrl_burst: float = RRL_BURST) -> None:
        """``rrl_rate`` None turns response rate limiting off (benchmarks only)."""
        self.host = host
        self.port = port
        self.domain = domain
        self._serial = 1
        self.resolver = Resolver(ZoneSet(domain, (), serial=self._serial))
        self.rrl = RateLimiter(rrl_rate, rrl_burst) if rrl_rate is not None else None
        self._stop = threading.Event()
        self.bound_port: int | None = None

    def set_zones(self, zones: Sequence[NetworkZone]) -> None:
        self._serial += 1
        self.resolver.set_zones(ZoneSet(self.domain, zones, serial=self._serial))

    def statistics(self) -> DNSStatistics:
        c = self.resolver.counters
        return DNSStatistics(c.queries, c.answered, c.refused, c.formerr, c.dropped_malformed,
                             c.rate_limited, c.truncated, c.tcp_queries, c.cache_hits)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((self.host, self.port))
            self.bound_port = udp.getsockname()[1]
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.host, self.bound_port))
            tcp.listen(64)
            udp.settimeout(POLL_S)
            tcp.settimeout(POLL_S)
            self._stop.clear()
            threads = [threading.Thread(target=self._udp_loop, args=(udp,), daemon=True,
                                        name="meshdns-udp"),
                       threading.Thread(target=self._tcp_loop, args=(tcp,), daemon=True,
                                        name="meshdns-tcp")]
            for t in threads:
                t.start()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._stop.set()
                with trio.CancelScope(shield=True):
                    for t in threads:
                        await trio.to_thread.run_sync(t.join, 2 * POLL_S + 1)
        finally:
            udp.close()
            tcp.close()

    def _udp_loop(self, sock: socket.socket) -> None:
        resolver, counters = self.resolver, self.resolver.counters
        allow = self.rrl.allow if self.rrl is not None else None
        recvfrom, sendto, stopped = sock.recvfrom, sock.sendto, self._stop.is_set
        while not stopped():
            try:
                data, src = recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if allow is not None and not allow(src[0], time.monotonic()):
                counters.rate_limited += 1
                continue
            hit = resolver.gen.udp_cache.get(data[2:])  # re-read: set_zones swaps it
            if hit is not None:
                counters.queries += 1
                counters.answered += 1
                counters.cache_hits += 1
                try:
                    sendto(data[:2] + hit, src)
                except OSError:
                    pass
                continue
            try:
                reply = resolver.answer(data, MAX_UDP_EDNS)
            except Exception:  # a parser corner case must not kill the listener thread
                counters.dropped_malformed += 1
                continue
            if reply is not None:
                try:
                    sendto(reply, src)
                except OSError:
                    pass

    def _tcp_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    self._serve_tcp(conn)
                except (OSError, struct.error):
                    pass

    def _serve_tcp(self, conn: socket.socket) -> None:
        # RFC 7766: two-byte length prefix; several queries may share a connection.
        for _ in range(100):
            head = _recv_exact(conn, 2)
            if head is None:
                return
            (length,) = struct.unpack("!H", head)
            query = _recv_exact(conn, length)
            if query is None:
                return
            self.resolver.counters.tcp_queries += 1
            try:
                reply = self.resolver.answer(query, None)
            except Exception:  # as for UDP: count it, keep serving
                self.resolver.counters.dropped_malformed += 1
                return
            if reply is None:
                return
            conn.sendall(struct.pack("!H", len(reply)) + reply)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
