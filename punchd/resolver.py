"""Point this node's resolver at meshdns for the mesh domain only, and undo it on leave.

With systemd-resolved, the mesh interface gets meshdns as its DNS server and
``~<domain>`` as a routing-only domain, so only names under the mesh domain go to
meshdns and everything else resolves as before (``resolvectl revert`` undoes it).
Without systemd-resolved nothing is changed behind the user's back: punchd reports
the manual step instead (also in docs/meshdns.md).

The plans are pure (tested without root); :func:`apply` runs one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import trio

from punchd.wire import api
from punchd.wire.addr import parse_host_port

RESOLVED_BUS = Path("/run/systemd/resolve/io.systemd.Resolve")


@dataclass(frozen=True)
class ResolverPlan:
    commands: list[list[str]] = field(default_factory=list)
    manual: str | None = None  # what the user must do instead, when nothing can be run


def resolved_running() -> bool:
    return RESOLVED_BUS.exists() and shutil.which("resolvectl") is not None


def plan_configure(ifname: str, dns: api.MeshDns, *, resolved: bool) -> ResolverPlan:
    domain = dns.domain.strip(".")
    if not resolved:
        host, port = parse_host_port(dns.address)
        return ResolverPlan(manual=(
            f"systemd-resolved is not running: to resolve *.{domain}, forward the zone "
            f"{domain} to {host} port {port} in your resolver "
            f"(e.g. dnsmasq: server=/{domain}/{host}#{port})"))
    return ResolverPlan(commands=[
        ["resolvectl", "dns", ifname, dns.address],
        ["resolvectl", "domain", ifname, f"~{domain}"],
        # Routing-only: this link is never the default route for other names.
        ["resolvectl", "default-route", ifname, "false"],
    ])


def plan_revert(ifname: str, *, resolved: bool) -> ResolverPlan:
    return ResolverPlan(commands=[["resolvectl", "revert", ifname]] if resolved else [])


async def apply(plan: ResolverPlan) -> str:
    """Runs the plan; returns a one-line outcome for status and logs."""
    if plan.manual is not None:
        return plan.manual
    for argv in plan.commands:
        result = await trio.run_process(argv, check=False, capture_stdout=True,
                                        capture_stderr=True)
        if result.returncode != 0:
            return f"{' '.join(argv)} failed: {result.stderr.decode(errors='replace').strip()}"
    return "configured through systemd-resolved" if plan.commands else "nothing to do"
