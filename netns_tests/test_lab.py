"""The lab's self-tests: every NAT type behaves as built, and teardown leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from netns_tests.lab import SERVER_IPS, Host, Lab, LabError

P1, P2 = 3478, 3479

EXPECTED = {
    # nat: (mapping, filtering, port preserved)
    "none": ("endpoint-independent", "endpoint-independent", True),
    "cone": ("endpoint-independent", "endpoint-independent", True),
    "prc": ("endpoint-independent", "address-and-port-dependent", True),
    "sym": ("address-and-port-dependent", "address-and-port-dependent", None),
    "cgnat": ("endpoint-independent", "address-and-port-dependent", True),
    "block": ("endpoint-independent", "address-and-port-dependent", True),
}


def natprobe(host: Host) -> dict[str, Any]:
    res = host.run([sys.executable, "-m", "netns_tests.lab.natprobe", "probe",
                    SERVER_IPS[0], SERVER_IPS[1], str(P1), str(P2)], timeout=60)
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def start_probe_server(lab: Lab):  # type: ignore[no-untyped-def]
    proc = lab.server.spawn([sys.executable, "-m", "netns_tests.lab.natprobe", "serve",
                             SERVER_IPS[0], SERVER_IPS[1], str(P1), str(P2)], name="natprobe")
    for _ in range(100):
        if "serving" in proc.read_log():
            return proc
        assert proc.alive(), proc.read_log()
        import time
        time.sleep(0.05)
    raise AssertionError("natprobe server did not start: " + proc.read_log())


@pytest.mark.parametrize("nat", list(EXPECTED))
def test_nat_type_behaves_as_built(lab: Lab, nat: str) -> None:
    start_probe_server(lab)
    site = lab.add_site("a", nat=nat)
    report = natprobe(site.hosts[0])
    mapping, filtering, preserved = EXPECTED[nat]
    assert report["mapping"] == mapping, report
    assert report["filtering"] == filtering, report
    if preserved is not None:
        assert report["port_preserved"] is preserved, report
    seen_ip = report["mappings"][f"{SERVER_IPS[0]}:{P1}"].split(":")[0]
    # The server sees the site's outermost public address (the carrier's, for cgnat);
    # a routed host is seen as itself.
    assert seen_ip == (site.hosts[0].ip if nat == "none" else site.wan_ip), report


def test_sym_gives_a_new_port_per_destination(lab: Lab) -> None:
    start_probe_server(lab)
    site = lab.add_site("s", nat="sym")
    report = natprobe(site.hosts[0])
    ports = {m.split(":")[1] for m in report["mappings"].values()}
    assert len(ports) == 3, report


def test_cgnat_has_two_layers(lab: Lab) -> None:
    site = lab.add_site("c", nat="cgnat")
    assert site.carrier is not None
    assert site.router.ip.startswith("100.64.")
    site.hosts[0].run(["ping", "-c1", "-W2", lab.server.ip])
    # The mapping at the carrier's WAN side names the carrier's public address.
    entries = [e for e in (site.carrier.run(["conntrack", "-L"], check=False).stdout.splitlines())
               if lab.server.ip in e]
    assert any(f"dst={site.wan_ip}" in e for e in entries), entries


def test_block_lets_udp_reach_only_the_server(lab: Lab) -> None:
    start_probe_server(lab)
    blocked = lab.add_site("b", nat="block")
    other = lab.add_site("o", nat="none")
    other.hosts[0].spawn([sys.executable, "-m", "netns_tests.lab.natprobe", "serve",
                          other.hosts[0].ip, other.hosts[0].ip, "4000", "4001"], name="echo")
    # UDP to the server passes (natprobe answered above), to any other host it does not.
    assert natprobe(blocked.hosts[0])["mapping"] == "endpoint-independent"
    script = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.settimeout(1.5); s.sendto(b'see x', (sys.argv[1], 4000)); "
              "print(s.recvfrom(100)[0].decode())")
    res = blocked.hosts[0].run([sys.executable, "-c", script, other.hosts[0].ip], check=False)
    assert res.returncode != 0 and "timed out" in res.stderr, res
    # ...while a host behind an ordinary NAT gets its answer.
    prc = lab.add_site("p", nat="prc")
    res = prc.hosts[0].run([sys.executable, "-c", script, other.hosts[0].ip])
    assert res.stdout.startswith("x "), res


def test_two_hosts_behind_one_nat_share_a_lan(lab: Lab) -> None:
    site = lab.add_site("pair", nat="prc", hosts=2)
    a, b = site.hosts
    assert a.ip != b.ip
    a.run(["ping", "-c1", "-W2", b.ip])
    b.run(["ping", "-c1", "-W2", lab.server.ip])


def test_unsolicited_inbound_to_a_nat_router_is_dropped(lab: Lab) -> None:
    site = lab.add_site("r", nat="prc")
    site.router.spawn([sys.executable, "-m", "netns_tests.lab.natprobe", "serve",
                       site.wan_ip, site.wan_ip, "5000", "5001"], name="echo")
    script = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.settimeout(1.5); s.sendto(b'see x', (sys.argv[1], 5000)); s.recvfrom(100)")
    res = lab.server.run([sys.executable, "-c", script, site.wan_ip], check=False)
    assert res.returncode != 0 and "timed out" in res.stderr


def test_block_udp_between_sites_and_lift_it(lab: Lab) -> None:
    a = lab.add_site("a", nat="none")
    b = lab.add_site("b", nat="none")
    b.hosts[0].spawn([sys.executable, "-m", "netns_tests.lab.natprobe", "serve",
                      b.hosts[0].ip, b.hosts[0].ip, "4000", "4001"], name="echo")
    script = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.settimeout(1.0); s.sendto(b'see x', (sys.argv[1], 4000)); s.recvfrom(100)")

    def echoed(attempts: int) -> bool:
        # Several tries where it must pass: the echo server is a Python process that
        # may still be starting on a loaded machine.
        return any(a.hosts[0].run([sys.executable, "-c", script, b.hosts[0].ip],
                                  check=False).returncode == 0 for _ in range(attempts))

    assert echoed(5)
    lab.block_udp(a, b)
    assert not echoed(1)
    lab.unblock_udp(a, b)
    assert echoed(5)


def test_teardown_leaves_nothing_even_when_the_body_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), Lab(log_dir=tmp_path) as lab:
        site = lab.add_site("t", nat="sym")
        proc = site.hosts[0].spawn(["sleep", "300"], name="sleeper")
        prefix = lab.prefix
        raise RuntimeError("test body failed")
    assert not proc.alive()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in names


def test_bad_nat_type_is_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="unknown NAT type"):
        lab.add_site("x", nat="fullcone-ish")


def test_nft_errors_raise_lab_error_with_nfts_message(lab: Lab) -> None:
    with pytest.raises(LabError, match=r"nft -f - exited 1: .*Error: syntax error"):
        lab.server.nft("table ip broken { chain c { this is not nft } }\n")


def test_explicit_prefix_and_wireguard_sockets_are_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    sockdir = Path("/var/run/wireguard")
    sockdir.mkdir(parents=True, exist_ok=True)
    with Lab(prefix=None, log_dir=tmp_path) as auto:
        assert auto.prefix.startswith("pl") and len(auto.prefix) == 6
    with pytest.raises(LabError, match="prefix"):
        Lab(prefix="way-too-long-prefix", log_dir=tmp_path)
    with Lab(log_dir=tmp_path) as lab:
        by_prefix = sockdir / f"{lab.prefix}wg0.sock"
        registered = sockdir / f"x{lab.prefix}.sock"
        by_prefix.touch()
        registered.touch()
        lab.register_wg_interface(f"x{lab.prefix}")
    try:
        assert not by_prefix.exists() and not registered.exists()
    finally:
        by_prefix.unlink(missing_ok=True)
        registered.unlink(missing_ok=True)
