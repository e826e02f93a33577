"""The control socket: typed requests, and a daemon that outlives any bad request."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from punchd.daemon import control, results
from punchd.daemon.control import ControlServer, Request, ask, call, parse_request
from punchd.errors import ControlError

from .test_daemon import start_node

# The requests that killed punchd, and a few more of the same kind.
HOSTILE = [
    {"cmd": "ping", "args": {"peer": "b", "count": "many"}},
    {"cmd": "ping", "args": {"peer": "b", "count": 10_000}},
    {"cmd": "leave", "args": {"network": ["x"]}},
    {"cmd": "leave", "args": {"network": "../etc"}},
    {"cmd": "join", "args": {"token": 5}},
    {"cmd": "join", "args": {"token": None}},
    {"cmd": "join", "args": {"token": "x", "ifname": "bad/name"}},
    {"cmd": "status", "args": {"network": {"a": 1}}},
    {"cmd": "netcheck", "args": {"network": True}},
]


@pytest.mark.parametrize("doc", HOSTILE)
def test_wrong_typed_arguments_are_bad_arguments(doc: dict[str, Any]) -> None:
    request = msgspec.convert(doc, type=Request)
    with pytest.raises(ControlError, match=f"bad arguments for '{doc['cmd']}'"):
        parse_request(request)


def test_requests_decode_to_one_struct_per_command() -> None:
    ping = parse_request(Request(cmd="ping", args={"peer": "beta", "count": 3}))
    assert ping == control.Ping(peer="beta", count=3)
    assert parse_request(Request(cmd="list")) == control.List()
    with pytest.raises(ControlError, match="unknown command 'dance'"):
        parse_request(Request(cmd="dance"))


async def raw(path: Path, line: bytes) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(line + b"\n")
        answer = await control._read_line(stream)
    return msgspec.json.decode(answer, type=dict[str, Any])


async def test_daemon_lives_through_every_hostile_request(tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    node = await start_node(nursery, tmp_path, "a")
    for doc in HOSTILE:
        answer = await raw(node.socket, msgspec.json.encode(doc))
        assert answer["ok"] is False and "\n" not in answer["error"], (doc, answer)
        assert await node.call("list") == []  # still serving


async def test_read_only_state_dir_is_one_line(tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start_node(nursery, tmp_path, "a")

    def read_only(name: str) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "a" / name))

    # Root ignores permission bits, so a read-only disk is simulated at the StateDir.
    node.daemon.state.create_keys = read_only  # type: ignore[method-assign]
    from punchd.wire.token import encode_token
    token = encode_token("http://127.0.0.1:9", "net", "secret")
    with pytest.raises(ControlError, match="Read-only file system"):
        await node.call("join", token=token)
    assert await node.call("list") == []
    assert not node.daemon._joining  # the reservation is released


async def test_any_handler_failure_is_an_error_line_and_serving_goes_on(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    calls = 0

    async def handler(req: control.Command) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug\nover two lines")
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "fine"

    path = tmp_path / "ctl.sock"
    await nursery.start(ControlServer(path, handler).run)
    with pytest.raises(ControlError, match=r"internal error \(RuntimeError: a bug over two lines"):
        await call(path, "list")
    with pytest.raises(ControlError, match="No space left on device"):
        await call(path, "list")
    assert await call(path, "list") == "fine"


def test_every_command_has_a_typed_answer() -> None:
    assert set(results.RESULTS) == set(control.COMMANDS.values())


async def test_ask_decodes_the_answer_into_its_struct_and_refuses_other_shapes(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    answers: list[Any] = [
        results.PullResult(pulled=("home", "office")),
        {"pushed": "not a list"},
    ]

    async def handler(req: control.Command) -> Any:
        return answers.pop(0)

    path = tmp_path / "ctl.sock"
    await nursery.start(ControlServer(path, handler).run)
    assert await ask(path, control.Pull(), results.PullResult) == results.PullResult(
        pulled=("home", "office"))
    with pytest.raises(ControlError, match="shape this punchctl does not read"):
        await ask(path, control.Push(), results.PushResult)
