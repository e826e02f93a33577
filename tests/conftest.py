"""Fast tests: no root, no real sleeping in logic tests, network only on loopback."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from signal_server.main import ServerOptions, SignalServer


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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_dns_port(taken: tuple[int, ...] = ()) -> int:
    """A port free for both UDP and TCP (DNS servers bind both), not one of ``taken``."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


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
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", free_port()))
    server = SignalServer(options)
    await nursery.start(server.run)
    running = RunningServer(server)
    yield running
    await running.admin.aclose()
