"""Issue #22's lab check: one real punchd (fake WireGuard) among a few hundred simulated
punch peers on loopback keeps every path for a minute (``bench scale``'s harness)."""

from __future__ import annotations

from pathlib import Path

import trio

from bench.scale import run_size

PEERS = 200
SECONDS = 60.0


def test_a_few_hundred_peers_for_a_minute_without_a_lost_path(tmp_path: Path) -> None:
    row = trio.run(run_size, PEERS, SECONDS, tmp_path)
    assert row["connected_before_window"] == PEERS, row
    assert row["path_losses_window"] == 0, row
    assert row["connected_end"] == row["sim_connected_end"] == PEERS, row
