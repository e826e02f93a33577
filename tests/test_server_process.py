"""The real ``signal-server`` process: CLI contract, admin token, kill -9 durability."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import (
    BIN,
    bound_socket,
    in_use,
    port_of,
    reap,
    start_on_free_port,
    start_server_process,
)


def admin(port: int, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "signal-server"), "admin", "--server",
                           f"http://127.0.0.1:{port}", "--token-file", str(data / "admin.token"),
                           *args], capture_output=True, text=True, timeout=30)


def test_cli_contract_and_kill_9_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, port = start_server_process(data)
    try:
        assert stat.S_IMODE(os.stat(data / "admin.token").st_mode) == 0o600
        token = (data / "admin.token").read_text().strip()
        res = admin(port, data, "network", "create", "office", "--cidr", "198.19.0.0/24",
                    "--require-approval")
        assert res.returncode == 0, res.stderr
        res = admin(port, data, "key", "create", "office", "--uses", "3", "--expires", "2h")
        join_token = res.stdout.strip().splitlines()[-1]
        assert res.returncode == 0 and len(join_token) > 40 and " " not in join_token
        res = admin(port, data, "network", "create", "clash", "--cidr", "198.19.0.128/25")
        assert res.returncode == 1 and "overlaps" in res.stderr and "Traceback" not in res.stderr
        res = admin(port, data, "key", "create", "office", "--expires", "soon")
        assert res.returncode == 1 and "bad duration" in res.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        assert token not in proc.stdout.read()  # the admin token is never logged
    finally:
        reap(proc)
    # Restart on the same data: everything answered before the kill is still there.
    proc, port = start_server_process(data)
    try:
        assert (data / "admin.token").read_text().strip() == token  # same admin token
        res = admin(port, data, "network", "list", "--json")
        (net,) = json.loads(res.stdout)
        assert net["name"] == "office" and net["require_approval"] is True
        keys = json.loads(admin(port, data, "key", "list", "office", "--json").stdout)
        assert keys[0]["uses_left"] == 3
        assert json.loads(admin(port, data, "node", "list", "office", "--json").stdout) == []
        res = admin(port, data, "node", "approve", "office", "ghost")
        assert res.returncode == 1 and "no node 'ghost'" in res.stderr
        res = admin(port, data, "node", "expire", "office", "ghost", "1h")
        assert res.returncode == 1 and "no node 'ghost'" in res.stderr
    finally:
        reap(proc)


def test_bad_listen_address_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([str(BIN / "signal-server"), "serve", "--data-dir", str(tmp_path),
                          "--http", "nonsense"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "expected HOST:PORT" in res.stderr
    assert "Traceback" not in res.stderr


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port we listen on, so a server told to bind it fails at once."""
    with bound_socket() as taken:
        yield port_of(taken)


def serve(data: Path, *extra: str, http: str | None = None) -> subprocess.CompletedProcess[str]:
    # Every call here must fail before it binds. Its port is one we hold: a bug that got
    # as far as binding fails "cannot start" (not the message asked for) instead of
    # serving until the timeout.
    with held_port() as port:
        return subprocess.run([str(BIN / "signal-server"), "serve", "--data-dir", str(data),
                               "--http", http or f"127.0.0.1:{port}", *extra],
                              capture_output=True, text=True, timeout=30)


def one_line_failure(res: subprocess.CompletedProcess[str], text: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "ExceptionGroup" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], res.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with held_port() as port:
        res = serve(tmp_path, http=f"127.0.0.1:{port}")
    one_line_failure(res, "cannot start")
    assert in_use(res.stderr)  # what start_server_process takes as "pick another port"


def test_a_port_taken_before_the_child_binds_is_replaced() -> None:
    tried: list[int] = []

    def start(port: int) -> str | None:
        tried.append(port)
        return None if len(tried) < 3 else "up"  # "in use" twice, then started

    assert start_on_free_port(start) == ("up", tried[-1])
    assert len(tried) == 3
    with pytest.raises(RuntimeError, match="taken before use"):
        start_on_free_port(lambda port: None)


def test_garbage_and_truncated_store_are_one_line(tmp_path: Path) -> None:
    import sqlite3
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "signal.db").write_bytes(b"this is not sqlite" * 100)
    one_line_failure(serve(garbage), "signal.db")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    db = sqlite3.connect(truncated / "signal.db")
    db.execute("CREATE TABLE filler (x BLOB)")
    db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(3000),) for _ in range(50)])
    db.commit()
    db.close()
    size = (truncated / "signal.db").stat().st_size
    with open(truncated / "signal.db", "r+b") as f:
        f.truncate(size // 2)
    one_line_failure(serve(truncated), "signal.db")


def test_empty_admin_token_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("\n")
    one_line_failure(serve(tmp_path), "admin.token is empty")


def test_wildcard_http_needs_a_public_url(tmp_path: Path) -> None:
    one_line_failure(serve(tmp_path, http="0.0.0.0:1"), "--public-url")
    one_line_failure(serve(tmp_path, http="[::]:1"), "--public-url")


def test_admin_cli_refuses_path_tricks_before_any_request(tmp_path: Path) -> None:
    # No server listens on port 1 and no token file exists: the name check comes first.
    for args in (["node", "delete", "net", "../../prod"], ["network", "delete", "a/b"],
                 ["key", "list", "../x"], ["node", "approve", "Net", "x"]):
        res = subprocess.run([str(BIN / "signal-server"), "admin", "--server",
                              "http://127.0.0.1:1", "--token-file", str(tmp_path / "none"),
                              *args], capture_output=True, text=True, timeout=30)
        one_line_failure(res, "name")


def test_admin_cli_quotes_segments() -> None:
    from signal_server.cli import seg
    assert seg("a/b%c?d") == "a%2Fb%25c%3Fd"
