"""Resolver plans: routing-only mesh domain through systemd-resolved, or a manual step."""

from __future__ import annotations

from punchd import resolver
from punchd.wire import api

DNS = api.MeshDns(address="203.0.113.10:53", domain="mesh")


def test_resolved_plan_routes_only_the_mesh_domain() -> None:
    plan = resolver.plan_configure("pd-office", DNS, resolved=True)
    assert plan.manual is None
    assert plan.commands == [
        ["resolvectl", "dns", "pd-office", "203.0.113.10:53"],
        ["resolvectl", "domain", "pd-office", "~mesh"],
        ["resolvectl", "default-route", "pd-office", "false"],
    ]
    assert resolver.plan_revert("pd-office", resolved=True).commands == [
        ["resolvectl", "revert", "pd-office"]]


def test_without_resolved_nothing_runs_and_the_manual_step_is_named() -> None:
    plan = resolver.plan_configure("pd-office", DNS, resolved=False)
    assert plan.commands == [] and plan.manual is not None
    assert "server=/mesh/203.0.113.10#53" in plan.manual
    assert resolver.plan_revert("pd-office", resolved=False).commands == []


async def test_apply_reports_the_manual_step_and_failures() -> None:
    manual = resolver.plan_configure("x", DNS, resolved=False)
    assert await resolver.apply(manual) == manual.manual
    failing = resolver.ResolverPlan(commands=[["false"]])
    assert "false failed" in await resolver.apply(failing)
    assert await resolver.apply(resolver.ResolverPlan(commands=[["true"]])) == \
        "configured through systemd-resolved"
