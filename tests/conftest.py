"""Fast tests: no root, no real sleeping in logic tests, network only on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio

from signal_server.main import ServerOptions, SignalServer

BIN = Path(sys.executable).parent  # the venv's console scripts (signal-server, punchd)
T = TypeVar("T")


def reap(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 10) -> None:
    """End a child the test started (SIGTERM, then SIGKILL) and close its pipe."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def bound_socket(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> socket.socket:
    """A socket on port 0 of ``host``: the kernel picks the port and the test holds it
    until it hands the socket to the code under test, so no one else can take it first
    (a TCP one is listening already)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


PORT_ATTEMPTS = 5  # a child given a port taken since we looked starts again on another


def unheld_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago, for a child process that must be told a number.

    Another process can take it before the child binds it: start such a child with
    :func:`start_on_free_port` (or retry the same way), never assume it is still free."""
    with bound_socket(kind) as sock:
        return port_of(sock)


def unheld_dns_port(taken: tuple[int, ...] = ()) -> int:
    """As :func:`unheld_port`, free for both UDP and TCP (DNS servers bind both)."""
    for _ in range(50):
        port = unheld_port(socket.SOCK_DGRAM)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def in_use(output: str) -> bool:
    """The child could not bind because the port was taken after we picked it."""
    return "Address already in use" in output  # strerror(EADDRINUSE)


def start_on_free_port(start: Callable[[int], T | None], *,
                       pick: Callable[[], int] = unheld_port) -> tuple[T, int]:
    """``start(port)`` for a child process that must be given a port number.

    ``start`` returns the started thing, or None when the child said the port was in
    use (:func:`in_use`), and raises on any other failure; then a new port is tried, at
    most ``PORT_ATTEMPTS`` times."""
    for _ in range(PORT_ATTEMPTS):
        port = pick()
        started = start(port)
        if started is not None:
            return started, port
    raise RuntimeError(f"every one of {PORT_ATTEMPTS} free ports was taken before use")


def start_server_process(data: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """``signal-server serve`` on a loopback port, after its ready line; and the port."""

    def start(port: int) -> subprocess.Popen[str] | None:
        proc = subprocess.Popen([str(BIN / "signal-server"), "serve", "--data-dir", str(data),
                                 "--http", f"127.0.0.1:{port}", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "signal-server: ready" in line:
            return proc
        reap(proc)
        if in_use(line):
            return None
        raise AssertionError(f"signal-server did not start: {line}")

    return start_on_free_port(start)


class RunningServer:
    def __init__(self, server: SignalServer) -> None:
        self.server = server
        self.url = server.public_url
        self.admin = httpx.AsyncClient(base_url=self.url + "/api/v1", timeout=10,
                                       headers={"authorization": f"Bearer {server.admin_token}"})

    async def create_network(self, name: str = "net", cidr: str = "198.19.0.0/24",
                             **extra: object) -> dict[str, object]:
        resp = await self.admin.post("/networks", json={"name": name, "ipv4_cidr": cidr, **extra})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def create_token(self, network: str = "net", **body: object) -> str:
        resp = await self.admin.post(f"/networks/{network}/keys", json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])


@pytest.fixture
async def signal_server(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    """A real signal server (hypercorn on loopback) inside the test's nursery."""
    listener = bound_socket()
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", port_of(listener)))
    server = SignalServer(options, http_socket=listener)
    await nursery.start(server.run)
    running = RunningServer(server)
    yield running
    await running.admin.aclose()
