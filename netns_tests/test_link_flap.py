"""A laptop loses its link during netcheck: punchd logs it, stays up, and re-punches
when the link comes back (issue #14 item 6: link loss is weather, not an error)."""

from __future__ import annotations

import json
import subprocess
import time

from netns_tests.lab import Lab
from netns_tests.test_punch import NETWORK, is_direct, start_pair, wait_until

FLAP_S = 2.0
RECOVER_WITHIN_S = 40.0  # a fresh netcheck, publish and punch on a loaded CI machine


def test_uplink_down_during_netcheck_the_daemon_stays_and_repunches(lab: Lab) -> None:
    pair = start_pair(lab, "cone", "cone")
    wait_until(pair, is_direct, 10.0)
    host = pair.a.host
    gateway = host.ip.rsplit(".", 1)[0] + ".1"

    netcheck = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "punchctl", "--socket", pair.a.socket,
         "netcheck", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # the classification is under way: its sends start to fail
        host.run(["ip", "link", "set", "eth0", "down"])
        out, err = netcheck.communicate(timeout=60)
    finally:
        if netcheck.poll() is None:
            netcheck.kill()
            netcheck.wait()
    assert "Traceback" not in err, err
    if netcheck.returncode == 0:
        json.loads(out)  # a report (with what it could learn), or ...
    else:
        assert err.count("\n") == 1, err  # ... one line saying why
    # While the link is down, asking again is an answer too, and the daemon is alive.
    res = pair.a.punchctl("netcheck", "--json", check=False, timeout=60)
    assert "Traceback" not in res.stderr and pair.a.proc.alive(), pair.a.proc.read_log()[-3000:]

    time.sleep(FLAP_S)
    host.run(["ip", "link", "set", "eth0", "up"])
    host.run(["ip", "route", "replace", "default", "via", gateway])
    assert pair.a.proc.alive(), pair.a.proc.read_log()[-3000:]
    wait_until(pair, is_direct, RECOVER_WITHIN_S)
    for src, dst in ((pair.a, pair.b), (pair.b, pair.a)):
        assert src.ping(dst.mesh_address(NETWORK), count=3).returncode == 0
    log = pair.a.proc.read_log()
    assert "Traceback" not in log and "ExceptionGroup" not in log, log[-3000:]
