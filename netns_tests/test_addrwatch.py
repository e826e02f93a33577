"""The netlink address watcher, in a network namespace of the test's own (root only)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import trio

from punchd.discovery.addrwatch import watch_addresses

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pdaw{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # No IPv6 link-local addresses: they appear a moment after a link comes up (DAD)
        # and would be changes the test did not make.
        for scope in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                            f"net.ipv6.conf.{scope}.addr_gen_mode=1"], check=True)
        # A veth pair (this kernel has no dummy links): one watched, one excluded.
        subprocess.run(["ip", "-n", name, "link", "add", "watched", "type", "veth", "peer",
                        "name", "wgtest"], check=True)
        for link in ("watched", "wgtest"):
            subprocess.run(["ip", "-n", name, "link", "set", link, "up"], check=True)
        time.sleep(1.5)  # the kernel reports carrier changes up to a second late
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True)


async def test_address_changes_are_reported_once_per_burst(netns: str,
                                                           nursery: trio.Nursery) -> None:
    calls: list[float] = []
    changed = trio.Event()

    def on_change() -> None:
        calls.append(trio.current_time())
        changed.set()

    # A debounce long enough that four `ip` commands in a row are one burst even on a
    # loaded machine, where starting a process can take a few hundred milliseconds.
    await nursery.start(lambda task_status: watch_addresses(
        on_change, exclude={"wgtest"}, debounce=0.6, netns=netns, task_status=task_status))
    # The excluded interface (punchd's own WireGuard link) changes nothing.
    ip(netns, "addr", "add", "198.19.0.1/24", "dev", "wgtest")
    with trio.move_on_after(1.2):
        await changed.wait()
    assert calls == []
    # A burst on a watched interface is one call, within a second.
    start = trio.current_time()
    for i in range(1, 4):
        ip(netns, "addr", "add", f"192.0.2.{i}/24", "dev", "watched")
    ip(netns, "-6", "addr", "add", "2001:db8::1/64", "dev", "watched", "nodad")
    with trio.fail_after(3.0):
        await changed.wait()
    assert calls[0] - start < 2.5
    await trio.sleep(1.0)
    assert len(calls) == 1
    # Removal and link down count too.
    changed = trio.Event()
    ip(netns, "addr", "del", "192.0.2.1/24", "dev", "watched")
    with trio.fail_after(3.0):
        await changed.wait()
    await trio.sleep(0.8)  # past this burst's quiet period
    changed = trio.Event()
    ip(netns, "link", "set", "watched", "down")
    with trio.fail_after(3.0):
        await changed.wait()
    assert len(calls) == 3
