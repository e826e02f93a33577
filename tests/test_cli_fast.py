"""punchctl's hot commands import nothing heavy, and its blocking client (#21).

Each hot command runs in a fresh interpreter against a canned control socket served from
a thread here; the child reports which of the heavy modules it loaded. No timing asserts:
what is held is what makes punchctl slow (trio, httpx, rich, nacl, the daemon), and the
speed itself is measured by ``python -m bench cli``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from punchd.cli import PEER_COLUMNS, table_lines
from punchd.daemon import client, commands, results
from punchd.errors import ControlError
from punchd.wire import api
from punchd.wire.token import encode_token

# Packages (and punchd modules) whose import is what made ``punchctl status`` cost half a
# second; a hot command that loads any of them has regressed.
HEAVY = ("trio", "httpx", "rich", "nacl", "aioice", "pyroute2", "prometheus_client")
DAEMON = ("punchd.daemon.control", "punchd.daemon.main", "punchd.daemon.network",
          "punchd.daemon.state", "punchd.serverapi", "punchd.wg")

PEER = results.PeerStatus(
    name="b", address="10.77.0.2", address6=None, public_key="k" * 43 + "=",
    endpoint="[fd00::2]:51820", path="direct", rtt_ms=1.25, last_handshake_age_s=3.0,
    rx_bytes=2048, tx_bytes=10, in_wireguard=True, nat=api.NatReport(), punch=None,
    relay=None, confirmed=True)
NETWORK = results.NetworkStatus(
    name="lab", interface="pd-lab", node="a", address="10.77.0.1", address6=None,
    public_key="k" * 43 + "=", listen_port=51820, interface_up=True,
    server="http://127.0.0.1:1", server_connected=True, nat=None, dns=None,
    last_error=None, peers=(PEER,))
ANSWERS: dict[str, Any] = {
    "status": results.StatusResult(networks=(NETWORK,)),
    "list": [results.NetworkSummary(name="lab", interface="pd-lab", peers=1)],
    "netcheck": results.NetcheckResult(network="lab", stun_server=None),
    "ping": results.PingResult(peer="b", address="10.77.0.2", sent=1, mode="probe",
                               replies=(results.PingReply(seq=0, rtt_ms=0.5, endpoint=None,
                                                          path="direct"),),
                               path="direct", endpoint=None),
    "pull": results.PullResult(pulled=("lab",)),
    "push": results.PushResult(pushed=("lab",)),
    "leave": results.LeaveResult(left="lab"),
    "join": results.JoinResult(network="lab", node="a", interface="pd-lab",
                               address="10.77.0.1", address6=None, approved=True),
}
MAX_CONNECTIONS = 64  # bounds the canned server's loop


@pytest.fixture
def canned_socket(tmp_path: Path) -> Iterator[Path]:
    """A control socket answering each command from :data:`ANSWERS`, in a thread."""
    path = tmp_path / "ctl.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(30)

    def serve() -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                conn, _addr = listener.accept()
            except OSError:  # closed by the fixture: done
                return
            with conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline()
                request = msgspec.json.decode(line, type=commands.Request)
                answer = commands.Response(ok=True, result=ANSWERS[request.cmd])
                conn.sendall(msgspec.json.encode(answer) + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        listener.close()
        thread.join(timeout=10)


CHILD = """
import json, sys
from punchd.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in {heavy!r} or m.startswith({daemon!r}))
print(json.dumps({{"rc": rc, "heavy": heavy}}), file=sys.stderr)
"""


def run_child(*args: str) -> tuple[str, dict[str, Any]]:
    code = CHILD.format(heavy=set(HEAVY), daemon=DAEMON)
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                         text=True, timeout=60)
    report = json.loads(res.stderr.strip().splitlines()[-1])
    return res.stdout, report


TOKEN = encode_token("http://127.0.0.1:1", "lab", "secret")


@pytest.mark.parametrize("argv", [
    ("status",), ("status", "--json"), ("list",), ("list", "--json"), ("netcheck",),
    ("ping", "b", "-c", "1"), ("pull",), ("push",), ("leave", "lab"),
    ("join", "--token", TOKEN),
])
def test_hot_commands_import_nothing_heavy(canned_socket: Path, argv: tuple[str, ...]) -> None:
    out, report = run_child("--socket", str(canned_socket), *argv)
    assert report == {"rc": 0, "heavy": []}, out
    assert out  # it did answer, from the canned socket


def test_no_daemon_imports_nothing_heavy_either(tmp_path: Path) -> None:
    _out, report = run_child("--socket", str(tmp_path / "none.sock"), "status")
    assert report == {"rc": 1, "heavy": []}


def test_status_table_is_aligned_columns() -> None:
    lines = table_lines(PEER_COLUMNS, [
        ("b", "10.77.0.2", "[fd00::2]:51820", "direct", "1.2ms", "3s ago", "2.0KiB", "10B"),
        ("longer-name", "-", "-", "none", "-", "never", "0B", "1.0KiB")])
    # rich's Table(box=None, pad_edge=False) layout: two spaces between columns, every
    # cell padded, the last one too.
    assert lines == [
        "peer         address    endpoint         path    rtt    handshake  rx      tx    ",
        "b            10.77.0.2  [fd00::2]:51820  direct  1.2ms  3s ago     2.0KiB  10B   ",
        "longer-name  -          -                none    -      never      0B      1.0KiB",
    ]
    assert table_lines(PEER_COLUMNS, []) == ["  ".join(PEER_COLUMNS)]


def test_status_text_shows_the_peer_row(canned_socket: Path) -> None:
    out, report = run_child("--socket", str(canned_socket), "status")
    assert report["rc"] == 0
    assert out.splitlines()[0] == ("lab  node a  interface pd-lab  address 10.77.0.1  "
                                   "port 51820  state unknown")
    assert out.splitlines()[-1].split() == ["b", "10.77.0.2", "[fd00::2]:51820", "direct",
                                            "1.2ms", "3s", "ago", "2.0KiB", "10B"]


def test_client_decodes_into_result_structs(canned_socket: Path) -> None:
    status = client.ask(canned_socket, commands.Status(), results.StatusResult)
    assert status == ANSWERS["status"]


def one_answer(tmp_path: Path, answer: bytes) -> Path:
    """A socket that answers its one connection with ``answer`` and closes."""
    path = tmp_path / "one.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _addr = listener.accept()
            with conn:
                conn.makefile("rb").readline()
                try:
                    conn.sendall(answer)
                except OSError:  # the client stopped reading a too-long answer: fine
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return path


@pytest.mark.parametrize(("answer", "message"), [
    (b"", "unreadable"),
    (b"not json\n", "unreadable"),
    (b'{"ok": false, "error": "no such peer"}\n', "no such peer"),
    (b'{"ok": true, "result": {"networks": 5}}\n', "shape this punchctl does not read"),
    (b"x" * (commands.MAX_LINE + 10), "too long"),
])
def test_client_bad_answers_are_control_errors(tmp_path: Path, answer: bytes,
                                               message: str) -> None:
    path = one_answer(tmp_path, answer)
    with pytest.raises(ControlError, match=message):
        client.ask(path, commands.Status(), results.StatusResult, timeout=10)


def test_client_without_daemon_says_not_running(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="punchd is not running"):
        client.call(tmp_path / "none.sock", "status")
