"""punchd: a NAT-traversal-first WireGuard mesh node.

Layers, by package: :mod:`punchd.wire` (codecs and the schema shared with the signal
server: pure), :mod:`punchd.discovery` (STUN and NAT classification on WireGuard's
port), :mod:`punchd.punch` (hole punching), :mod:`punchd.wg` (WireGuard backends
behind one interface) and :mod:`punchd.daemon` (the node process, which owns the one
nursery tree). Each of the first four keeps its sans-IO cores apart from its trio
adapters and says which is which. At the top: ``errors.py`` (the one exception tree,
no I/O); ``cli.py`` (``punchctl``, a client of the control socket), ``serverapi.py``
(the signed HTTP client of the signal server, httpx) and ``resolver.py``
(systemd-resolved, by subprocess) are adapters.
"""

__version__ = "0.1.0"
