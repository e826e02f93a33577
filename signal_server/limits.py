"""How many event streams this server can hold: the open-file limit and its budget.

Theory of operation
-------------------
Every event stream is a TCP connection held open for as long as its node runs, so
descriptors, not CPU, are what a large mesh exhausts first: at Linux's default soft
limit of 1,024 open files the server stopped accepting near 1,000 streams (issue #22),
and trio's accept loop then retries forever while every new request times out.

At start :func:`raise_open_file_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard
limit (``setrlimit(2)``: an unprivileged process may raise its soft limit up to the
hard one) and the server says what it got. :func:`stream_capacity` then budgets that
limit: a fixed reserve for what is not a stream (listening sockets, the store's
connections or SQLite's files, STUN and DNS sockets, log files, the connections of
API calls in flight), a descriptor per port of the userspace relay pools (each relay
allocation binds two ports), and two descriptors per stream, because a node holds its
stream and, between its API calls, an idle keep-alive connection beside it (hypercorn
keeps one open 75 s). Past the budget a new stream is refused with a 503 naming the
cause, which a node retries with backoff, instead of the server running dry and
failing every request alike.

Both functions take what they touch as arguments, so tests inject any limit.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass

# Descriptors kept for everything that is not a stream (see the module docstring);
# PostgreSQL's pool holds at most 8 (db_postgres.POOL_MAX).
BASE_RESERVE = 256
# A node's stream plus its idle keep-alive API connection.
DESCRIPTORS_PER_STREAM = 2
# The kernel's default fs.nr_open: the most a soft limit can be when the hard limit is
# "unlimited" (setrlimit(2) refuses RLIM_INFINITY for RLIMIT_NOFILE above nr_open).
NR_OPEN_DEFAULT = 1_048_576

GetLimit = Callable[[int], tuple[int, int]]
SetLimit = Callable[[int, tuple[int, int]], None]


@dataclass(frozen=True)
class OpenFileLimit:
    """The soft limit before and after the raise, the hard limit, and why not higher."""

    before: int
    soft: int
    hard: int
    error: str | None = None  # setrlimit's refusal, when the raise failed

    def describe(self, streams: int) -> str:
        """One log line: what the server got and the streams that allows."""
        if self.error is not None:
            got = f"{self.soft} (raising it to {self.hard} failed: {self.error})"
        elif self.soft > self.before:
            got = f"{self.soft} (raised from {self.before})"
        else:
            got = f"{self.soft} (the hard limit)"
        return f"open-file limit {got}: up to {streams} event streams"


def raise_open_file_limit(getrlimit: GetLimit = resource.getrlimit,
                          setrlimit: SetLimit = resource.setrlimit) -> OpenFileLimit:
    """Raises the soft RLIMIT_NOFILE to the hard limit; never fails (says why instead)."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft >= target:
        return OpenFileLimit(before=soft, soft=soft, hard=target)
    try:
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:  # ValueError: target above nr_open
        return OpenFileLimit(before=soft, soft=soft, hard=target, error=str(exc))
    return OpenFileLimit(before=soft, soft=target, hard=target)


def stream_capacity(soft_limit: int, *, relay_ports: int = 0) -> int:
    """The most event streams ``soft_limit`` descriptors hold (see the module docstring)."""
    spare = soft_limit - BASE_RESERVE - relay_ports
    return max(0, spare // DESCRIPTORS_PER_STREAM)


def current_soft_limit(getrlimit: GetLimit = resource.getrlimit) -> int:
    soft, _ = getrlimit(resource.RLIMIT_NOFILE)
    return NR_OPEN_DEFAULT if soft == resource.RLIM_INFINITY else soft
