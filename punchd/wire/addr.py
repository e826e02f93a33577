"""Endpoints as the whole project writes them: one type, one parser, one formatter.

An endpoint on the wire, in a config file or on a command line is ``"ip:port"``, with
an IPv6 address in brackets (``"[2001:db8::1]:51820"``, RFC 3986 §3.2.2). In code it
is an :data:`Addr`, ``(ip, port)`` as the socket module uses it, the IP in its
canonical text form. Parsing raises :class:`~punchd.errors.AddrError`, a codec error,
with the text it refused; callers translate it once at their boundary.
"""

from __future__ import annotations

import ipaddress

from ..errors import AddrError

Addr = tuple[str, int]


def _port(text: str, whole: str, lowest: int = 1) -> int:
    if not text.isascii() or not text.isdigit() or not lowest <= int(text) <= 65535:
        raise AddrError(f"{whole!r}: the port must be {lowest}..65535")
    return int(text)


def _split(text: str) -> tuple[str, bool, str]:
    """``(host, bracketed, port)``; the host without brackets."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddrError(f"{text!r} has no port (expected ip:port, IPv6 as [addr]:port)")
    bracketed = host.startswith("[") and host.endswith("]")
    return (host[1:-1] if bracketed else host), bracketed, port


def parse_addr(text: str) -> Addr:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` to ``("1.2.3.4", 5)``; an IPv6 address must be
    bracketed and an IPv4 one must not. Raises AddrError."""
    host, bracketed, port_text = _split(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddrError(f"{text!r} is not ip:port (IPv6 as [addr]:port)") from None
    if ip.version != (6 if bracketed else 4):
        raise AddrError(f"{text!r} is not ip:port (IPv6 as [addr]:port)")
    return str(ip), _port(port_text, text)


def parse_host_port(text: str, *, port_zero: bool = False) -> Addr:
    """Like :func:`parse_addr`, but the host may also be a DNS name (a server address a
    user typed). The host comes back without brackets. ``port_zero`` admits port 0
    (a listener on any free port). Raises AddrError."""
    lowest = 0 if port_zero else 1
    host, bracketed, port_text = _split(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if bracketed or not _is_hostname(host):
            raise AddrError(f"{text!r} is not host:port") from None
        return host.lower().rstrip("."), _port(port_text, text, lowest)
    if ip.version != (6 if bracketed else 4):
        raise AddrError(f"{text!r} is not host:port (IPv6 as [addr]:port)")
    return str(ip), _port(port_text, text, lowest)


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(
        0 < len(label) <= 63 and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-") and not label.endswith("-")
        for label in labels)


def format_addr(addr: Addr) -> str:
    """``("::1", 5)`` to ``"[::1]:5"``; a host that is not an IP (a DNS name) as is."""
    host, port = addr
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def normalise_addr(text: str) -> str:
    """The canonical text of an endpoint (``"[2001:DB8::01]:7"`` -> ``"[2001:db8::1]:7"``)."""
    return format_addr(parse_addr(text))
