"""The shipped unit file verifies, and punchd speaks sd_notify to a real socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from punchd.cli import unit_source

from .conftest import reap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (Debian package systemd; scripts/setup installs it)")
def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "punchd.service"
    exe = Path(sys.executable).parent / "punchd"
    unit.write_text(unit_source().replace("/usr/local/bin/punchd", str(exe)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    problems = [ln for ln in res.stderr.splitlines() if "punchd.service" in ln]
    assert res.returncode == 0 and not problems, res.stderr


def test_unit_hardening() -> None:
    text = unit_source()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=",
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "ProtectSystem=strict",
                 "NoNewPrivileges=yes"):
        assert line in text, line


def test_optional_paths_do_not_fail_the_namespace() -> None:
    """A host without /var/run/wireguard must not fail the unit with 226/NAMESPACE:
    every ReadWritePaths entry outside punchd's own state and /run is "-"-prefixed."""
    (line,) = [ln for ln in unit_source().splitlines() if ln.startswith("ReadWritePaths=")]
    paths = line.split("=", 1)[1].split()
    assert "-/var/run/wireguard" in paths and "/var/run/wireguard" not in paths


def test_setup_does_not_kill_by_name() -> None:
    setup = (Path(__file__).parent.parent / "scripts" / "setup").read_text()
    assert "pkill" not in setup and "killall" not in setup


def test_ready_and_stopping_reach_notify_socket(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "punchd.daemon.main", "--state-dir", str(tmp_path / "state"),
             "--socket", str(tmp_path / "ctl.sock"), "--wg-backend", "fake"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert sock.recv(256) == b"READY=1"
            assert (tmp_path / "ctl.sock").exists()
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
            assert proc.wait(timeout=5) == 0
        finally:
            reap(proc)
