"""Port mapping on the gateway: NAT-PMP (RFC 6886), PCP (RFC 6887) and UPnP IGD.

Codecs (:mod:`.natpmp`, :mod:`.pcp`, :mod:`.upnp`) are pure functions over bytes; the
schedule (:mod:`.schedule`) is sans-IO; :mod:`.client` is the trio adapter,
``open_port_mapping``.
"""

from __future__ import annotations

import enum


def code_name(codes: type[enum.IntEnum], code: int) -> str:
    """A result code for a log line: the RFC's name, or the number for unknown ones."""
    try:
        return codes(code).name
    except ValueError:
        return f"result {code}"
