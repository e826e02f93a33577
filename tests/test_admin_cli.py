"""The admin CLI reads well (#17): tables in words, settings from the environment,
the install one-liner above the token, and a network delete that asks first."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from punchd.wire.token import decode_token
from signal_server import tables
from signal_server.cli import CliError, admin_settings, main

from .conftest import reap, start_server_process

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (61, "1m1s"), (5400, "1h30m"), (3 * 3600, "3h"),
    (86400 + 7200 + 59, "1d2h"), (-5, "0s"),
])
def test_span(seconds: float, text: str) -> None:
    assert tables.span(seconds) == text


def test_expiry_words() -> None:
    assert tables.expiry(None, NOW) == "never"
    assert tables.expiry(NOW, NOW) == "expired"
    assert tables.expiry(NOW - 1, NOW) == "expired"
    assert tables.expiry(NOW + 3 * 3600, NOW) == "in 3h"
    far = NOW + 30 * 86400
    assert tables.expiry(far, NOW) == time.strftime("%Y-%m-%d %H:%M", time.localtime(far))


def test_past_words() -> None:
    assert tables.past(0.0, NOW) == "never"
    assert tables.past(None, NOW) == "never"
    assert tables.past(NOW - 90, NOW) == "1m30s ago"
    old = NOW - 10 * 86400
    assert tables.past(old, NOW) == time.strftime("%Y-%m-%d %H:%M", time.localtime(old))
    assert "ago" not in tables.past(NOW + 60, NOW)  # a server clock ahead of ours


def test_keys_say_unlimited_exhausted_and_expired() -> None:
    keys = [
        {"id": "k1", "uses_left": None, "expires_at": None, "created_at": NOW - 60},
        {"id": "k2", "uses_left": 0, "expires_at": NOW + 3600, "created_at": NOW - 60},
        {"id": "k3", "uses_left": 2, "expires_at": NOW - 1, "created_at": NOW - 60},
        {"id": "k4", "uses_left": 0, "expires_at": NOW - 1, "created_at": NOW - 60},
    ]
    lines = tables.render(keys, tables.KEY_COLUMNS, NOW).splitlines()
    assert lines[0].split() == ["ID", "USES", "LEFT", "EXPIRES", "CREATED", "STATE"]
    assert lines[1].split() == ["k1", "unlimited", "never", "1m", "ago", "usable"]
    assert lines[2].split() == ["k2", "0", "in", "1h", "1m", "ago", "exhausted"]
    assert lines[3].split() == ["k3", "2", "expired", "1m", "ago", "expired"]
    assert lines[4].endswith("expired, exhausted")
    assert "1800000" not in "\n".join(lines)  # no raw epoch anywhere


def test_nodes_and_networks_render_in_words() -> None:
    node = {"name": "a", "ipv4": "198.19.0.2/24", "ipv6": None, "approved": False,
            "last_seen": NOW - 5, "expires_at": None, "wg_public_key": "K="}
    (_, row) = tables.render([node], tables.NODE_COLUMNS, NOW).splitlines()
    assert row.split() == ["a", "198.19.0.2/24", "-", "pending", "5s", "ago", "never", "K="]
    net = {"name": "n", "ipv4_cidr": "198.19.0.0/24", "local_only": True, "listen_port": 51820}
    (_, row) = tables.render([net], tables.NETWORK_COLUMNS, NOW).splitlines()
    assert row.split() == ["n", "198.19.0.0/24", "-", "51820", "yes", "yes", "no"]
    assert tables.render([], tables.NODE_COLUMNS, NOW) == "(none)"
    # A cell never breaks the table's lines.
    (_, row) = tables.render([{"name": "x\ny", "rtype": "A", "value": "v"}],
                             tables.DNS_COLUMNS, NOW).splitlines()
    assert row.startswith("x y")


def test_settings_flag_then_environment_then_file(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    with pytest.raises(CliError, match="PUNCHD_SERVER"):
        admin_settings(None, None, env)
    conf = tmp_path / ".config" / "punchd" / "admin.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('server = "http://file:1"\ntoken_file = "/file.token"\n')
    assert admin_settings(None, None, env) == ("http://file:1", "/file.token")
    env |= {"PUNCHD_SERVER": "http://env:2", "PUNCHD_ADMIN_TOKEN_FILE": "/env.token"}
    assert admin_settings(None, None, env) == ("http://env:2", "/env.token")
    assert admin_settings("http://flag:3", "/flag.token", env) == ("http://flag:3",
                                                                   "/flag.token")
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    (tmp_path / "xdg" / "punchd").mkdir(parents=True)
    (tmp_path / "xdg" / "punchd" / "admin.toml").write_text("server = [1]\n")
    with pytest.raises(CliError, match="server must be a string"):
        admin_settings(None, None, xdg)
    (tmp_path / "xdg" / "punchd" / "admin.toml").write_text("server = \n")
    with pytest.raises(CliError, match="cannot read"):
        admin_settings(None, None, xdg)


def test_admin_against_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    proc, port = start_server_process(tmp_path / "server", "--no-dist")
    try:
        monkeypatch.setenv("PUNCHD_SERVER", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("PUNCHD_ADMIN_TOKEN_FILE", str(tmp_path / "server" / "admin.token"))
        assert main(["admin", "network", "create", "office", "--cidr", "198.19.0.0/24"]) == 0
        assert main(["admin", "key", "create", "office", "--uses", "1", "--expires", "3h"]) == 0
        out = capsys.readouterr().out.splitlines()
        token = out[-1]
        assert decode_token(token).network == "office"  # still the last line, alone
        assert out[-2].strip() == (f"curl -fsSL http://127.0.0.1:{port}/install.sh | sudo sh "
                                   f"-s -- --token {token}")
        assert "uses 1, expires in 3h" in out[1]
        assert main(["admin", "key", "list", "office"]) == 0
        listing = capsys.readouterr().out
        assert "in 3h" in listing or "in 2h59m" in listing
        assert "usable" in listing
        assert main(["admin", "network", "delete", "office"]) == 0  # no nodes: no question
        assert "deleted" in capsys.readouterr().out
    finally:
        reap(proc)


class FakeAdmin:
    """The API as the CLI sees it: answers by (method, path), records every call."""

    def __init__(self, answers: dict[tuple[str, str], object]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: object = None) -> object:
        self.calls.append((method, path))
        return self.answers.get((method, path))


def test_network_delete_with_nodes_asks_for_yes(capsys: pytest.CaptureFixture[str]) -> None:
    from signal_server.cli import _admin_command, build_parser

    nodes = [{"name": "a"}, {"name": "b"}]
    fake = FakeAdmin({("GET", "/networks/office/nodes"): nodes})
    args = build_parser().parse_args(["admin", "network", "delete", "office"])
    with pytest.raises(CliError, match=r"has 2 node\(s\).*--yes"):
        _admin_command(args, fake, "office", "")  # type: ignore[arg-type]
    assert ("DELETE", "/networks/office") not in fake.calls  # nothing changed
    args = build_parser().parse_args(["admin", "network", "delete", "office", "--yes"])
    assert _admin_command(args, fake, "office", "") == 0  # type: ignore[arg-type]
    assert fake.calls[-1] == ("DELETE", "/networks/office")
    assert "with its 2 node(s)" in capsys.readouterr().out


def test_admin_without_settings_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PUNCHD_SERVER", "PUNCHD_ADMIN_TOKEN_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["admin", "network", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no server" in err and "PUNCHD_SERVER" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from punchd import __version__
    from punchd.cli import main as punchctl
    from punchd.daemon.main import main as punchd

    for prog, entry in (("signal-server", main), ("punchctl", punchctl), ("punchd", punchd)):
        with pytest.raises(SystemExit) as exit_:
            entry(["--version"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


def test_version_matches_pyproject() -> None:
    import tomllib

    from punchd import __version__

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__
