"""Runs the WireGuard conformance suite inside a namespace: ``python -m ... BACKEND IFNAME``.

The backends act on the calling process's network namespace, so the netns tests
run this module in a lab host rather than touching the machine's own namespace.
"""

from __future__ import annotations

import sys

import trio

from punchd.wg import open_backend
from tests.wg_conformance import run_conformance


def main() -> int:
    kind, ifname = sys.argv[1], sys.argv[2]
    backend = open_backend(kind)  # type: ignore[arg-type]
    trio.run(run_conformance, backend, ifname)
    print("conformance: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
