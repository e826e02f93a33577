"""meshdns's listeners: UDP and TCP on one port, answered from dedicated threads.

Why threads: trio's recvfrom/sendto path costs ~100 µs a query here, which caps a
trio loop at a few thousand qps; a blocking socket in its own thread with a
wire-format answer cache answers at a large multiple of that. The trio side only
swaps in new zones (:meth:`MeshDNSServer.set_zones`) and owns the threads' lifetime.

The cache maps the query bytes after the ID to the response bytes after the ID, so a
repeated question costs one dict lookup and the ID is patched in. It is dropped
whole whenever the zones change (reference swap: readers never see a half-built
zone), and when it reaches its bound (unique names must not grow memory without
limit; a hot name is back in the cache on its next query). Response rate limiting
per source prefix (/24, /56) keeps meshdns from being an amplifier; malformed
queries get FORMERR when their header parses and are dropped otherwise; everything
is counted.

TCP is one thread too, but non-blocking: a selector serves every connection at once,
each framed by :class:`TcpSession` (sans-IO: pipelined queries, an idle timeout, and
a total deadline per message so a sender trickling bytes is cut off), under a cap on
open connections; at the cap the longest-idle connection makes room for a new one.

Zone transfers and signed queries go to :class:`~meshdns.xfr.Transfers` first (both
listeners; over UDP a transfer is refused); the NOTIFY sender runs in ``run``'s
nursery when secondaries are configured.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSHeader, DNSLabel, DNSRecord

from punchd.wire.addr import Addr

from . import tsig
from .notify import Notifier, NotifySchedule
from .xfr import LOOPBACK, IPNetwork, Transfers, header_answer, is_transfer
from .zone import NetworkZone, ZoneSet

MAX_UDP_NO_EDNS = 512  # RFC 1035 §4.2.1
MAX_UDP_EDNS = 1232  # the DNS flag day 2020 recommendation
RRL_RATE = 500.0  # responses per second per prefix
RRL_BURST = 1000.0
POLL_S = 0.2  # how soon threads notice a stop
CACHE_MAX = 10_000  # answers per cache; full -> cleared (O(1), no per-query bookkeeping)
CACHE_MAX_QUERY = 512  # longer queries (padding, odd options) are answered, not cached
# RFC 7766 §6.2.3: servers should close idle connections after a few seconds;
# §10: limit the connections open and the time one request may take to arrive.
TCP_IDLE_S = 10.0
TCP_MESSAGE_S = 2.0  # a whole message, first byte to last (slowloris)
TCP_MAX_CONNECTIONS = 512  # below the common 1024 open-files soft limit
TCP_OUT_MAX = 256 * 1024  # answers queued for a client that does not read: stop reading
_TCP_ACCEPTS_PER_WAKE = 64
_BIND_ATTEMPTS = 8


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
    tcp_timeouts: int = 0  # connections closed idle or mid-message past its deadline
    tcp_evicted: int = 0  # idle connections closed to admit a new one at the cap
    tcp_refused: int = 0  # connections closed at once: at the cap, none could be evicted


class _Counters:
    def __init__(self) -> None:
        self.queries = self.answered = self.refused = self.formerr = 0
        self.dropped_malformed = self.rate_limited = self.truncated = 0
        self.tcp_queries = self.cache_hits = 0
        self.tcp_timeouts = self.tcp_evicted = self.tcp_refused = 0


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
        except (DNSError, struct.error, IndexError, ValueError, UnicodeError):
            return self._formerr(query)
        if request.header.qr or len(request.questions) != 1 or request.header.opcode != 0:
            return self._formerr(query)
        q = request.questions[0]
        if q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            # Transfers are :class:`~meshdns.xfr.Transfers`' (TCP, allow-listed); one
            # reaching here came over UDP or around it: RFC 5936 §4.2, refused.
            c.refused += 1
            head = request.header
            return bytes(DNSRecord(DNSHeader(id=head.id, qr=1, opcode=0, rcode=RCODE.REFUSED),
                                   q=q).pack())
        # A fresh header, not the query's flags: RD and CD echoed (RFC 1035 §4.1.1,
        # RFC 4035 §3.2.2), AD clear since nothing here is DNSSEC-validated (RFC 4035
        # §3.2.3), RA clear (no recursion), TC and Z never copied from a query.
        head = request.header
        reply = DNSRecord(DNSHeader(id=head.id, qr=1, opcode=head.opcode, aa=1, rd=head.rd,
                                    cd=head.cd, ra=0), q=q)
        opt = next((ar for ar in request.ar if ar.rtype == QTYPE.OPT), None)
        limit = max_size
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=MAX_UDP_EDNS))
            if limit is not None:
                limit = max(MAX_UDP_NO_EDNS, min(int(opt.rclass), MAX_UDP_EDNS))
        elif limit is not None:
            limit = MAX_UDP_NO_EDNS
        try:
            result = gen.zones.lookup(q.qname, q.qtype)
        except UnicodeError:  # a label dnslib parses but cannot turn into text (a "." inside)
            return self._formerr(query)
        reply.header.rcode = result.rcode
        reply.header.aa = int(result.aa)
        if result.rcode == RCODE.REFUSED:
            c.refused += 1
        for rr in result.answers:
            reply.add_answer(rr)
        for rr in result.authority:
            reply.add_auth(rr)
        for rr in result.additional:
            reply.add_ar(rr)
        wire = bytes(reply.pack())  # dnslib packs into a bytearray
        if limit is not None and len(wire) > limit:
            c.truncated += 1
            reply.rr, reply.auth = [], []
            reply.ar = [ar for ar in reply.ar if ar.rtype == QTYPE.OPT]
            reply.header.tc = 1
            wire = bytes(reply.pack())
        if len(query) <= CACHE_MAX_QUERY:
            if len(gen.cache) >= CACHE_MAX:
                gen.cache.clear()
            gen.cache[key] = wire[2:]
            if max_size == MAX_UDP_EDNS:
                if len(gen.udp_cache) >= CACHE_MAX:
                    gen.udp_cache.clear()
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


class TcpSession:
    """One DNS-over-TCP connection's framing and deadlines, sans-IO.

    RFC 1035 §4.2.2 / RFC 7766 §8: each message has a two-byte length prefix;
    :meth:`receive` returns every complete query so far (pipelined ones included,
    RFC 7766 §6.2.1.1). The connection expires when idle for ``idle_timeout``, or when
    a message begun ``message_timeout`` ago is still incomplete — bytes trickling in
    keep a connection active but do not extend that deadline.
    """

    __slots__ = ("_buf", "_message_started", "idle_timeout", "last_activity",
                 "message_timeout")

    def __init__(self, now: float, *, idle_timeout: float = TCP_IDLE_S,
                 message_timeout: float = TCP_MESSAGE_S) -> None:
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.last_activity = now
        self._buf = bytearray()
        self._message_started: float | None = None

    @property
    def mid_message(self) -> bool:
        return self._message_started is not None

    def receive(self, data: bytes, now: float) -> list[bytes]:
        self._buf += data
        self.last_activity = now
        queries = []
        buf = self._buf
        start = 0
        while len(buf) - start >= 2:
            length = (buf[start] << 8) | buf[start + 1]
            if len(buf) - start - 2 < length:
                break
            queries.append(bytes(buf[start + 2:start + 2 + length]))
            start += 2 + length
        del buf[:start]
        if not buf:
            self._message_started = None
        elif queries or self._message_started is None:
            self._message_started = now  # a new message began in this chunk
        return queries

    def activity(self, now: float) -> None:
        """Answer bytes went out: the connection is not idle."""
        self.last_activity = now

    def deadline(self) -> float:
        if self._message_started is not None:
            return min(self._message_started + self.message_timeout,
                       self.last_activity + self.idle_timeout)
        return self.last_activity + self.idle_timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline()


class _TcpConn:
    __slots__ = ("events", "out", "peer", "session", "sock")

    def __init__(self, sock: socket.socket, session: TcpSession, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.session = session
        self.out = bytearray()
        self.events = selectors.EVENT_READ


class MeshDNSServer:
    def __init__(self, host: str, port: int, *, domain: str = "mesh",
                 rrl_rate: float | None = RRL_RATE, rrl_burst: float = RRL_BURST,
                 nameserver: str | None = None,
                 tcp_max_connections: int = TCP_MAX_CONNECTIONS,
                 tcp_idle_timeout: float = TCP_IDLE_S,
                 tcp_message_timeout: float = TCP_MESSAGE_S,
                 clock: Callable[[], float] = time.monotonic,
                 transfer_allow: Sequence[IPNetwork] = LOOPBACK,
                 tsig_key: tsig.TsigKey | None = None,
                 notify: Sequence[Addr] = (),
                 wall_clock: Callable[[], float] = time.time,
                 last_serial: int = 0) -> None:
        """``rrl_rate`` None turns response rate limiting off (benchmarks only).
        ``nameserver``: the address (or host name) this server is reached at, served
        for the NS target; default ``host`` unless it is a wildcard. ``clock`` times
        rate limits and TCP deadlines (tests pass a fake one).

        Secondaries (:mod:`meshdns.xfr`): ``transfer_allow`` are the sources that may
        AXFR/IXFR, ``tsig_key`` (if given) must sign their requests, and ``notify``
        are the secondaries told of each change (:mod:`meshdns.notify`).
        ``wall_clock`` (Unix time) makes the SOA serials and TSIG times;
        ``last_serial`` is the highest this server served before a restart (every new
        serial is above it)."""
        self.host = host
        self.port = port
        self.domain = domain
        if nameserver is None and host not in ("0.0.0.0", "::", ""):
            nameserver = host
        self.nameserver = nameserver
        self.wall_clock = wall_clock
        self._serial = self._next_serial(last_serial)
        self._zones_in: dict[str, NetworkZone] | None = None
        self._zone_serials: dict[str, int] = {}
        # The domain apex holds SOA, NS and ns.<domain> only: it changes with nothing.
        self._apex_serial = self._serial
        self.resolver = Resolver(ZoneSet(domain, (), serial=self._serial, nameserver=nameserver))
        self.transfers = Transfers(lambda: self.resolver.zones, self.resolver.answer,
                                   allow=transfer_allow, key=tsig_key, wall_clock=wall_clock,
                                   keep_history=bool(notify))
        self.transfers.record(self.resolver.zones)
        source = host if host not in ("0.0.0.0", "::", "") else None
        self.notifier = Notifier(NotifySchedule(notify, key=tsig_key, soa=self._soa_of),
                                 source=source, wall_clock=wall_clock) if notify else None
        self.rrl = RateLimiter(rrl_rate, rrl_burst) if rrl_rate is not None else None
        self.tcp_max_connections = max(1, tcp_max_connections)
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.clock = clock
        self._stop = threading.Event()
        self.bound_port: int | None = None

    def _next_serial(self, previous: int) -> int:
        """The SOA serial for a change: the Unix time, or one more than the last when
        changes come faster than one a second. Time-based, so a restarted server's
        serials still move forward (RFC 1982 comparisons; 32 bits last until 2106)
        and a secondary that held the old zone transfers the new one."""
        return max(previous + 1, int(self.wall_clock())) & 0xFFFFFFFF

    @property
    def serial(self) -> int:
        return self._serial

    def _soa_of(self, zone: str, serial: int) -> object:
        zones = self.resolver.zones
        return zones.names[DNSLabel(zone)][QTYPE.SOA][0]

    def set_zones(self, zones: Sequence[NetworkZone]) -> ZoneSet:
        """Build and swap in new zones; returns them (``skipped`` says what was left out).

        Each network's zone has its own serial, moved only when that zone changed, and
        only changed zones are NOTIFYed (all of them the first time: secondaries learn
        of a restart). The same zones again change nothing at all."""
        by_name = {z.network.lower(): z for z in zones}
        previous = self._zones_in
        if previous is not None and by_name == previous:
            return self.resolver.zones
        self._serial = self._next_serial(self._serial)
        serials = {name: self._zone_serials[name]
                   if previous is not None and previous.get(name) == zone
                   and name in self._zone_serials else self._serial
                   for name, zone in by_name.items()}
        zoneset = ZoneSet(self.domain, zones, serial=self._serial, nameserver=self.nameserver,
                          zone_serials=serials, apex_serial=self._apex_serial)
        self._zones_in, self._zone_serials = by_name, serials
        changed = [str(apex).lower() for apex in zoneset.apexes
                   if previous is None or zoneset.serial_of(apex) == self._serial]
        # Before the swap, so an IXFR at the new serial finds it.
        self.transfers.record(zoneset, changed)
        self.resolver.set_zones(zoneset)
        if self.notifier is not None:
            self.notifier.changed(changed, self._serial)
        return zoneset

    def statistics(self) -> DNSStatistics:
        c = self.resolver.counters
        return DNSStatistics(c.queries, c.answered, c.refused, c.formerr, c.dropped_malformed,
                             c.rate_limited, c.truncated, c.tcp_queries, c.cache_hits,
                             c.tcp_timeouts, c.tcp_evicted, c.tcp_refused)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP on one port. Port 0: the kernel picks UDP's, and TCP may find it
        taken (a connection's local port); then another pick, a bounded few times."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(_BIND_ATTEMPTS):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self.port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(1024)
            except OSError as exc:
                udp.close()
                tcp.close()
                if self.port != 0 or exc.errno != errno.EADDRINUSE or \
                        attempt == _BIND_ATTEMPTS - 1:
                    raise
                continue
            self.bound_port = port
            return udp, tcp
        raise AssertionError("unreachable")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        udp, tcp = self._bind()
        try:
            udp.settimeout(POLL_S)
            tcp.settimeout(POLL_S)
            self._stop.clear()
            threads = [threading.Thread(target=self._udp_loop, args=(udp,), daemon=True,
                                        name="meshdns-udp"),
                       threading.Thread(target=self._tcp_loop, args=(tcp,), daemon=True,
                                        name="meshdns-tcp")]
            for t in threads:
                t.start()
            try:
                async with trio.open_nursery() as nursery:
                    if self.notifier is not None:
                        await nursery.start(self.notifier.run)
                    task_status.started()
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
        resolver, counters, transfers = self.resolver, self.resolver.counters, self.transfers
        allow = self.rrl.allow if self.rrl is not None else None
        recvfrom, sendto, stopped = sock.recvfrom, sock.sendto, self._stop.is_set
        clock = self.clock
        while not stopped():
            try:
                data, src = recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if allow is not None and not allow(src[0], clock()):
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
                # Signed queries and transfer requests first; None: a plain query.
                replies = transfers.handle(data, src[0], tcp=False)
                if replies is None:
                    reply = resolver.answer(data, MAX_UDP_EDNS)
                    replies = [reply] if reply is not None else []
            except Exception:  # a parser corner case must not kill the listener thread
                counters.dropped_malformed += 1
                continue
            for reply in replies:
                try:
                    sendto(reply, src)
                except OSError:
                    pass

    def _tcp_loop(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        conns: dict[socket.socket, _TcpConn] = {}
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, None)
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                for key, events in sel.select(POLL_S / 2):
                    if key.data is None:
                        self._tcp_accept(listener, sel, conns)
                        continue
                    conn: _TcpConn = key.data
                    if conn.sock not in conns:  # closed earlier in this batch (evicted)
                        continue
                    if events & selectors.EVENT_READ:
                        self._tcp_read(conn, sel, conns)
                    elif events & selectors.EVENT_WRITE:
                        self._tcp_flush(conn, sel, conns)
                now = self.clock()
                if now >= next_sweep:  # deadlines are seconds: a sweep per 50 ms will do
                    next_sweep = now + 0.05
                    for conn in [c for c in conns.values() if c.session.expired(now)]:
                        self.resolver.counters.tcp_timeouts += 1
                        self._tcp_close(conn, sel, conns)
        finally:
            for conn in list(conns.values()):
                self._tcp_close(conn, sel, conns)
            sel.close()

    def _tcp_accept(self, listener: socket.socket, sel: selectors.BaseSelector,
                    conns: dict[socket.socket, _TcpConn]) -> None:
        counters = self.resolver.counters
        for _ in range(_TCP_ACCEPTS_PER_WAKE):
            try:
                sock, peer = listener.accept()
            except OSError:  # nothing left to accept (BlockingIOError), or EMFILE
                return
            sock.setblocking(False)
            if len(conns) >= self.tcp_max_connections:
                # Under pressure the longest-idle connection goes first (RFC 7766
                # §6.2.3): a crowd of idle connections cannot lock out new clients.
                idle = [c for c in conns.values() if not c.out]
                if not idle:
                    counters.tcp_refused += 1
                    sock.close()
                    continue
                counters.tcp_evicted += 1
                self._tcp_close(min(idle, key=lambda c: c.session.last_activity), sel, conns)
            session = TcpSession(self.clock(), idle_timeout=self.tcp_idle_timeout,
                                 message_timeout=self.tcp_message_timeout)
            conn = _TcpConn(sock, session, peer[0])
            conns[sock] = conn
            sel.register(sock, conn.events, conn)

    def _tcp_read(self, conn: _TcpConn, sel: selectors.BaseSelector,
                  conns: dict[socket.socket, _TcpConn]) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._tcp_close(conn, sel, conns)
            return
        if not data:  # the client is done sending; what was answered is already queued
            self._tcp_flush(conn, sel, conns, closing=True)
            return
        counters = self.resolver.counters
        closing = False
        for query in conn.session.receive(data, self.clock()):
            counters.tcp_queries += 1
            if len(conn.out) >= TCP_OUT_MAX and is_transfer(query):
                # A client that asks faster than it reads (a pipeline of AXFRs, each a
                # whole zone) gets REFUSED, not another copy queued: memory stays bounded.
                counters.refused += 1
                conn.out += struct.pack("!H", 12) + header_answer(query, RCODE.REFUSED)
                continue
            try:
                replies = self.transfers.handle(query, conn.peer, tcp=True)
                if replies is None:
                    reply = self.resolver.answer(query, None)
                    replies = [reply] if reply is not None else None
            except Exception:  # as for UDP: a parser corner case must not kill the loop
                counters.dropped_malformed += 1
                replies = None
            if not replies:  # not a DNS query: answer what came before, then close
                closing = True
                break
            for reply in replies:
                conn.out += struct.pack("!H", len(reply)) + reply
        self._tcp_flush(conn, sel, conns, closing=closing)

    def _tcp_flush(self, conn: _TcpConn, sel: selectors.BaseSelector,
                   conns: dict[socket.socket, _TcpConn], *, closing: bool = False) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._tcp_close(conn, sel, conns)
                return
            if sent:
                del conn.out[:sent]
                conn.session.activity(self.clock())
        if closing:
            self._tcp_close(conn, sel, conns)  # best effort: what did not fit is dropped
            return
        events = selectors.EVENT_READ if len(conn.out) < TCP_OUT_MAX else 0
        if conn.out:
            events |= selectors.EVENT_WRITE
        if events != conn.events:
            conn.events = events
            sel.modify(conn.sock, events, conn)

    @staticmethod
    def _tcp_close(conn: _TcpConn, sel: selectors.BaseSelector,
                   conns: dict[socket.socket, _TcpConn]) -> None:
        if conns.pop(conn.sock, None) is None:
            return
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
