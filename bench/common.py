"""What the matrix and data-plane benchmarks share: machine facts, versions, lab set-up."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netns_tests.lab import Lab, Site

from .labtools import enable_wan_accounting


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return ((res.stdout or res.stderr).strip().splitlines() or ["?"])[0]


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_avg_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": {
            "nebula": _first_line(["nebula", "-version"]),
            "wireguard-go": _first_line(["wireguard-go", "--version"]),
            "iperf3": _first_line(["iperf3", "--version"]),
            "wg": _first_line(["wg", "--version"]),
        },
    }


_RUN_LOG_DIR: Path | None = None


def lab_log_dir(name: str) -> Path:
    """Per-lab log folder inside one temp folder per benchmark process (kept for
    post-mortems; every process, namespace and socket is still removed at teardown)."""
    global _RUN_LOG_DIR
    if _RUN_LOG_DIR is None:
        _RUN_LOG_DIR = Path(tempfile.mkdtemp(prefix="punchd-bench-"))
    return _RUN_LOG_DIR / name


def add_site(lab: Lab, name: str, nat: str) -> Site:
    """A one-host site whose WAN side counts packets per flow (see labtools)."""
    site = lab.add_site(name, nat=nat)
    enable_wan_accounting(site)
    return site
