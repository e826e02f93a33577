"""Two trio helpers the daemon's services share: waking a loop, and hosting peer tasks.

*Wake this loop now.* The reconcile and publish loops of
:class:`~punchd.daemon.network.NetworkAgent` and the relay binds of
:class:`~punchd.daemon.relaying.Relaying` sleep until their next pass is due, or until
something says it is due now: that is :meth:`Wakeup.wake`, the one name for it. A wake
ends every wait on the current round and starts a new one. A loop takes its round with
:meth:`Wakeup.round` *before* its work, so a wake that comes while it works ends the wait
that follows at once instead of being lost; a waiter that takes the round only when it
starts waiting sees the wakes from then on.

*Peer tasks.* :class:`~punchd.daemon.punching.Punching` and ``Relaying`` start one task
per peer from synchronous calls (``sync_peers``), so each owns a nursery that lives as
long as its ``run``: :class:`TaskHost`.
"""

from __future__ import annotations

import trio


class Wakeup:
    def __init__(self) -> None:
        self._round = trio.Event()

    def wake(self) -> None:
        """End every wait on the current round: the loops run their next pass now."""
        self._round.set()
        self._round = trio.Event()

    def round(self) -> trio.Event:
        """What the next :meth:`wake` sets."""
        return self._round


class TaskHost:
    """A service whose tasks are started from sync code, into the nursery ``run`` holds."""

    _nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._stopped()

    def _stopped(self) -> None:
        """The nursery is gone (its tasks with it): forget them."""
