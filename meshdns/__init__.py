"""The mesh's authoritative DNS (dnslib), served by the signal server process.

Cores: ``zone.py`` (zones and the rules a record must follow) and, in ``server.py``,
:class:`~meshdns.server.Resolver` (a query's bytes in, the answer's out),
:class:`~meshdns.server.TcpSession` (RFC 7766 framing, pipelining and idle timeout)
and :class:`~meshdns.server.RateLimiter` (those two take the time as an argument);
and, for secondaries, ``xfr.py`` (:class:`~meshdns.xfr.Transfers`: AXFR, IXFR and
TSIG-checked queries), ``tsig.py`` (RFC 8945 sign/verify) and ``notify.py``
(:class:`~meshdns.notify.NotifySchedule`, RFC 1996 retries); none of them touches a
socket. Adapters: :class:`~meshdns.server.MeshDNSServer` in ``server.py``, one UDP
and one TCP socket served by two threads whose lifetime its trio ``run`` owns
(started by :class:`signal_server.dns.ZonePusher`), and the NOTIFY sender
:class:`~meshdns.notify.Notifier` in its nursery.
"""
