"""The install one-liner in a lab host (#17): from the server's wheelhouse alone, then
joined with the installed punchd, then ``punchctl uninstall`` leaves and removes it all.

The lab has no systemd, so install.sh runs with ``--no-start`` and a scratch prefix
and unit directory, and the test starts the installed punchd itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from netns_tests.lab import Lab, LabError
from netns_tests.lab.mesh import Mesh
from punchd import __version__

NET = "office"
CIDR = "198.19.0.0/24"
# Nothing of the test runner's environment may reach the installed programs: they
# must run their own copy, not this checkout's.
CLEAN = {"PYTHONPATH": "", "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1"}


@pytest.mark.slow
def test_install_one_liner_in_a_lab_host(lab: Lab) -> None:
    mesh = Mesh(lab)
    mesh.start_server(dns=False)
    token = mesh.create_network(NET, CIDR)
    host = lab.add_site("i", nat="none").hosts[0]
    prefix, units, state = (lab.log_dir / "opt-punchd", lab.log_dir / "units",
                            lab.log_dir / "state-installed")
    line = (f"curl -fsSL {mesh.url}/install.sh | sh -s -- --token {token} "
            f"--prefix {prefix} --unit-dir {units} --no-start")
    res = host.run(["sh", "-c", line], timeout=300, env=CLEAN)
    assert f"installed punchctl {__version__}" in res.stdout, res.stdout + res.stderr
    assert f"ExecStart={prefix}/bin/punchd " in (units / "punchd.service").read_text()

    socket = str(lab.log_dir / "installed.sock")
    proc = host.spawn([str(prefix / "bin" / "punchd"), "--state-dir", str(state), "--socket",
                       socket, "--wg-backend", "userspace"], name="installed-punchd", env=CLEAN)
    deadline = time.monotonic() + 20
    while not Path(socket).exists():
        if time.monotonic() > deadline or not proc.alive():
            raise LabError(f"installed punchd did not start:\n{proc.read_log()[-2000:]}")
        time.sleep(0.05)
    punchctl = [str(prefix / "bin" / "punchctl"), "--socket", socket]
    joined = host.run([*punchctl, "join", "--token", token], timeout=60, env=CLEAN)
    assert f"joined {NET}" in joined.stdout
    nodes = json.loads(mesh.admin("node", "list", NET, "--json").stdout)
    assert len(nodes) == 1

    # Refused without --yes, and nothing changed.
    refused = host.run([*punchctl, "uninstall", "--prefix", str(prefix), "--unit-dir",
                        str(units), "--state-dir", str(state)], check=False, env=CLEAN)
    assert refused.returncode == 1 and "--yes" in refused.stderr and prefix.exists()
    done = host.run([*punchctl, "uninstall", "--prefix", str(prefix), "--unit-dir", str(units),
                     "--state-dir", str(state), "--yes"], timeout=60, env=CLEAN)
    assert f"left {NET}" in done.stdout, done.stdout
    assert not prefix.exists() and not state.exists() and not (units / "punchd.service").exists()
    assert json.loads(mesh.admin("node", "list", NET, "--json").stdout) == []
    proc.stop()
