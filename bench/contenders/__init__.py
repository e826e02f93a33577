"""The contenders of the comparative benchmark, behind one small interface.

Each module has ``NAME`` and ``start(lab, site_a, site_b, run_id) -> Handle``; the
handle knows both ends' mesh addresses, reads the path from the contender's own
status (``reported_path()``: "direct" | "relay" | "none") and ``stop()``s everything
it started. ``start`` returns when both nodes are up: that instant is t0 of the
connect-time measurement. Which address the traffic really goes to is checked
outside the contender, on the NAT's WAN side (``bench.labtools.wan_path_during``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from netns_tests.lab import Host, Lab, Site


class Handle(Protocol):
    @property
    def host_a(self) -> Host: ...

    @property
    def host_b(self) -> Host: ...

    @property
    def mesh_ip_a(self) -> str: ...

    @property
    def mesh_ip_b(self) -> str: ...

    def reported_path(self) -> str: ...

    def stop(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Contender(Protocol):
    NAME: str
    # How long the matrix waits for "direct" after the first ping (an upper bound).
    DIRECT_WAIT_S: float

    def applies(self, site_a: Site, site_b: Site) -> bool: ...

    def start(self, lab: Lab, site_a: Site, site_b: Site, run_id: int) -> Handle: ...


@dataclass
class Stoppers:
    """Things to stop, in reverse order of starting, whatever fails on the way."""

    items: list[Any] = field(default_factory=list)

    def add(self, thing: Any) -> Any:
        self.items.append(thing)
        return thing

    def stop_all(self) -> None:
        for thing in reversed(self.items):
            try:
                thing.stop()
            except Exception:
                pass
        self.items.clear()


def all_contenders() -> list[Contender]:
    from . import nebula, punchd, relay_mesh, wg_static

    return [punchd.PunchdContender(), nebula.NebulaContender(),
            relay_mesh.RelayMeshContender(), wg_static.WgStaticContender()]
