"""The daemon's loop helpers (punchd/daemon/tasks.py) and the port's services when none run."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from punchd.daemon.policy import PeerFacts
from punchd.daemon.portservices import PortServices
from punchd.daemon.tasks import TaskHost, Wakeup
from punchd.errors import PunchdError


async def test_a_wake_during_the_work_ends_the_wait_that_follows(
        autojump_clock: trio.testing.MockClock) -> None:
    wakeup = Wakeup()
    woken = wakeup.round()  # taken before the work, as the loops do
    wakeup.wake()  # ... and a wake comes while the loop works
    with trio.move_on_after(10) as waited:
        await woken.wait()
    assert not waited.cancelled_caught


async def test_a_wake_before_a_round_is_taken_is_not_seen_by_it(
        autojump_clock: trio.testing.MockClock) -> None:
    wakeup = Wakeup()
    wakeup.wake()
    with trio.move_on_after(10) as waited:
        await wakeup.round().wait()
    assert waited.cancelled_caught  # the timer ended the wait


async def test_one_wake_ends_every_wait_of_the_round(
        autojump_clock: trio.testing.MockClock) -> None:
    wakeup = Wakeup()
    done: list[int] = []

    async def waiter(i: int) -> None:
        await wakeup.round().wait()
        done.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
        wakeup.wake()
    assert sorted(done) == [0, 1, 2]


class _Host(TaskHost):
    def __init__(self) -> None:
        self.stopped = 0

    def _stopped(self) -> None:
        self.stopped += 1


async def test_a_task_host_holds_its_nursery_while_it_runs_and_forgets_it_after() -> None:
    host = _Host()
    assert host._nursery is None
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        assert host._nursery is not None and host.stopped == 0
        nursery.cancel_scope.cancel()
    assert host._nursery is None and host.stopped == 1


async def test_without_discovery_the_port_has_no_facts_nothing_to_show_and_says_why() -> None:
    port = PortServices()
    assert port.facts(["n2"]) == {"n2": PeerFacts()}
    assert port.punch_statuses(["n2"]) == {} and port.relay_statuses() == {}
    assert not port.relayed("n2")
    port.punch("n2")  # nothing to punch with: no-op
    port.sync_peers([])
    port.local_changed((), None, moved=True)
    with pytest.raises(PunchdError, match="offers no STUN"):
        await port.netcheck(None)
    with pytest.raises(PunchdError, match="discovery is not running"):
        await port.netcheck("192.0.2.1:3478")
