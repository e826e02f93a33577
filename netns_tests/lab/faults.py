"""Real processes for the fault suite: a ``signal-server`` we can kill, pause and restore,
and ``punchd --wg-backend fake`` nodes we can ask whether they are on a stream.

Everything runs on loopback in the test's own namespace (no raw sockets: the server is
started without ``--stun``, so punchd has no discovery to open). Every process is
ended by PID by :meth:`FaultServer.close` / :meth:`FaultNode.close`.

Times are measured from the moment the (re)started server prints its ready line, which
is when it accepts connections, to each node's ``server_connected`` in ``list``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from punchd.daemon.control import Request, Response
from punchd.errors import ControlError
from tests.conftest import BIN, PORT_ATTEMPTS, in_use, unheld_dns_port, unheld_port

POLL_S = 0.05  # how often the control sockets are polled while waiting for a stream
READY_TIMEOUT_S = 20.0


class FaultError(AssertionError):
    """A process of the fault suite did not do what it must (start, answer, stop)."""


def end(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """End a child we started, by its PID: SIGCONT (it may be stopped), SIGTERM, SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(fault: str, **figures: object) -> None:
    """One line per fault for docs/reliability.md (shown with ``pytest -s``)."""
    print(f"\nFAULT {fault}: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of a store (read-only; works beside a running server)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def backup(db: Path, to: Path) -> None:
    """A consistent copy of a live store through SQLite's online backup API."""
    src = sqlite3.connect(db, timeout=10)
    dst = sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


class FaultServer:
    """``signal-server serve`` on loopback, on one data dir and one port across restarts.

    The ports are picked at the first start, which picks others when one was taken
    before the server bound it; restarts keep them, as the nodes know this URL."""

    def __init__(self, data_dir: Path, *, dns: bool = False, extra: Sequence[str] = ()) -> None:
        """``extra``: more ``serve`` arguments (``--database``, ``--public-url``)."""
        self.data_dir = data_dir
        self.dns = dns
        self.extra = tuple(extra)
        self.port = 0  # until the first start
        self.dns_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.ready_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.data_dir / "signal.db"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start it and wait for its ready line; returns (and keeps) the monotonic time
        the line appeared."""
        if self.starts:
            return self._start_once()
        for _ in range(PORT_ATTEMPTS):
            self.port = unheld_port()
            self.dns_port = unheld_dns_port(taken=(self.port,)) if self.dns else None
            try:
                return self._start_once()
            except FaultError as exc:
                if not in_use(str(exc)):
                    raise
        raise FaultError(f"every one of {PORT_ATTEMPTS} free ports was taken before use")

    def _start_once(self) -> float:
        argv = [str(BIN / "signal-server"), "serve", "--data-dir", str(self.data_dir),
                "--http", f"127.0.0.1:{self.port}"]
        if self.dns_port is not None:
            argv += ["--dns", f"127.0.0.1:{self.dns_port}"]
        argv += self.extra
        self.starts += 1
        log = self.data_dir.parent / f"server-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log.read_bytes()
            if b"signal-server: ready" in text:
                self.ready_at = time.monotonic()
                return self.ready_at
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)  # the ready line is timed to within 5 ms
        raise FaultError(f"signal-server did not become ready:\n{log.read_text()[-2000:]}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM and wait; returns how long it took to exit."""
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FaultError(f"signal-server ignored SIGTERM for {timeout} s") from exc
        return time.monotonic() - t0

    def close(self) -> None:
        end(self.proc)

    # -- admin API ----------------------------------------------------------------------

    def _admin(self) -> httpx.Client:
        token = (self.data_dir / "admin.token").read_text().strip()
        return httpx.Client(base_url=self.url + "/api/v1", timeout=10,
                            headers={"authorization": f"Bearer {token}"})

    def create_network(self, name: str, cidr: str) -> str:
        """Creates the network and returns a join token (unlimited uses)."""
        with self._admin() as admin:
            resp = admin.post("/networks", json={"name": name, "ipv4_cidr": cidr})
            if resp.status_code != 201:
                raise FaultError(f"network create: {resp.status_code} {resp.text}")
            resp = admin.post(f"/networks/{name}/keys", json={})
            if resp.status_code != 201:
                raise FaultError(f"key create: {resp.status_code} {resp.text}")
            return str(resp.json()["token"])

    def nodes(self, network: str) -> list[dict[str, Any]]:
        with self._admin() as admin:
            resp = admin.get(f"/networks/{network}/nodes")
            if resp.status_code != 200:
                raise FaultError(f"node list: {resp.status_code} {resp.text}")
            return list(resp.json())


class FaultNode:
    """``punchd --wg-backend fake`` with its own state dir and control socket."""

    def __init__(self, root: Path, name: str, *, state_dir: Path | None = None) -> None:
        self.name = name
        self.state_dir = state_dir or root / f"state-{name}"
        self.socket = root / f"{name}.sock"
        self.log = root / f"punchd-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FaultNode:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "punchd"), "--state-dir", str(self.state_dir), "--socket",
                 str(self.socket), "--wg-backend", "fake"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise FaultError(f"punchd {self.name} did not start:\n{self.read_log()}")
            time.sleep(0.02)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def call(self, cmd: str, timeout: float = 15.0, **args: Any) -> Any:
        """One control request (the protocol of punchd/daemon/control.py), synchronously:
        polling every 50 ms must not cost a trio.run each time."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket))
                sock.sendall(msgspec.json.encode(Request(cmd=cmd, args=args)) + b"\n")
                buf = b""
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except OSError as exc:
                raise ControlError(f"punchd {self.name}: no answer to {cmd!r}: {exc}") from exc
        if b"\n" not in buf:
            raise ControlError(f"punchd {self.name} closed the control socket without an "
                               f"answer to {cmd!r} (alive: {self.alive()})")
        response = msgspec.json.decode(buf.split(b"\n", 1)[0], type=Response)
        if not response.ok:
            raise ControlError(response.error or "refused")
        return response.result

    def join(self, token: str) -> dict[str, Any]:
        return dict(self.call("join", timeout=30, token=token, name=self.name))

    def networks(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.call("list")}

    def connected(self, network: str) -> bool:
        net = self.networks().get(network)
        return bool(net and net["server_connected"])

    def status(self, network: str) -> dict[str, Any]:
        (net,) = self.call("status", network=network)["networks"]
        return dict(net)

    def close(self) -> None:
        end(self.proc)


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check`` every 50 ms until true; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise FaultError(f"not within {timeout} s: {what}")
        time.sleep(POLL_S)


def times_back_on_stream(nodes: Sequence[FaultNode], network: str, since: float,
                         timeout: float = 10.0) -> dict[str, float | None]:
    """Per node, seconds from ``since`` (the ready line) to ``server_connected``; None for
    a node that was not back within ``timeout`` (the caller asserts the 2 s bar, so the
    figures of the slow ones are still printed)."""
    back: dict[str, float | None] = {n.name: None for n in nodes}
    while time.monotonic() - since < timeout and None in back.values():
        for node in nodes:
            if back[node.name] is None and node.connected(network):
                back[node.name] = time.monotonic() - since
        time.sleep(POLL_S)
    return back


def peer_counts(nodes: Sequence[FaultNode], network: str) -> dict[str, int]:
    return {n.name: int(n.networks()[network]["peers"]) for n in nodes}


def figures(back: dict[str, float | None]) -> dict[str, str]:
    done = [t for t in back.values() if t is not None]
    return {"back_p50_s": f"{pct(done, 50):.2f}" if done else "-",
            "back_max_s": f"{max(done):.2f}" if done else "-",
            "not_back": str(len(back) - len(done))}


def dump(obj: object) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]
