"""install.sh, the wheelhouse behind /dist/, and punchctl uninstall (#17)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest
import trio

from punchd import __version__
from punchd.cli import removal_plan, uninstall
from punchd.errors import DistUnavailable, PunchdError
from signal_server.dist import Wheelhouse, index_html, is_wheel_name, repack, wheel_filename
from signal_server.main import ServerOptions, SignalServer
from signal_server.routes.install import install_script

from .conftest import BIN, bound_socket, port_of, reap, start_server_process


@pytest.mark.parametrize("name", [
    "punchd-0.1.0-py3-none-any.whl",
    "PyNaCl-1.6.2-cp38-abi3-manylinux_2_34_x86_64.whl",
    "msgspec-0.22.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "outcome-1.3.0.post0-py2.py3-none-any.whl",
    "foo-1.0-1build-py3-none-any.whl",
])
def test_wheel_names_admitted(name: str) -> None:
    assert is_wheel_name(name)


@pytest.mark.parametrize("name", [
    "", ".whl", "../punchd-0.1.0-py3-none-any.whl", "..%2Fetc-1-py3-none-any.whl",
    "punchd-0.1.0-py3-none-any.whl/x", "admin.token", "signal.db", "punchd-0.1.0.tar.gz",
    ".complete", "punchd-0.1.0-py3-none-any.whl\x00", "punchd-0.1.0-py3-none-any.WHL",
    "punchd-0.1.0-py3-none-any.whl\n", "-0.1.0-py3-none-any.whl", "a..b-1-py3-none-any.whl",
    "x" * 300 + "-1-py3-none-any.whl", "punchd-0.1.0-py3-none.whl",
])
def test_hostile_wheel_names_refused(name: str) -> None:
    assert not is_wheel_name(name)


def test_wheel_filename_compresses_tags() -> None:
    tags = ["cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"]
    assert wheel_filename("psycopg-binary", "3.3.9", tags) == \
        "psycopg_binary-3.3.9-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64"
    assert wheel_filename("outcome", "1.3.0.post0", ["py2-none-any", "py3-none-any"]) == \
        "outcome-1.3.0.post0-py2.py3-none-any"


def test_index_links_every_wheel_escaped() -> None:
    page = index_html(["b-1-py3-none-any.whl", "a-1-py3-none-any.whl"])
    assert page.index('href="a-1') < page.index('href="b-1')
    assert '<a href="x&lt;y">' in index_html(["x<y"])


def test_install_script_quotes_the_server_and_is_posix_sh(tmp_path: Path) -> None:
    text = install_script("http://h:1/'; rm -rf /; '")
    assert "SERVER='http://h:1/'\"'\"'; rm -rf /; '\"'\"''" in text
    assert f"VERSION={__version__}" in text
    script = tmp_path / "install.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)], timeout=10).returncode == 0
    res = subprocess.run(["sh", str(script), "--token", "t"], capture_output=True, text=True,
                         timeout=10)  # a server URL that made it in quoted is still refused
    assert res.returncode != 0 and "unexpected characters" in res.stderr
    script.write_text(install_script("http://127.0.0.1:9"))
    # Bad arguments: one line, non-zero, nothing made.
    for args, reason in ((["--prefix", str(tmp_path / "p")], "--token TOKEN is required"),
                         (["--token"], "--token needs a value"),
                         (["--token", "t", "--bogus"], "unknown argument --bogus"),
                         (["--token", "t", "--prefix", "rel"], "absolute path"),
                         (["--token", "t", "--prefix", "/a b"], "--prefix /a b"),
                         (["--token", "t", "--server", "ftp://x"], "http:// or https://"),
                         (["--token", "t", "--server", "http://x --index-url http://e"],
                          "unexpected characters")):
        res = subprocess.run(["sh", str(script), *args], capture_output=True, text=True,
                             timeout=10)
        assert res.returncode != 0 and reason in res.stderr, (args, res.stderr)
    assert not (tmp_path / "p").exists()


def test_repack_writes_a_record_of_what_it_packed(tmp_path: Path) -> None:
    import importlib.metadata as md

    wheel = repack(md.distribution("sniffio"), tmp_path)
    assert is_wheel_name(wheel.name)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert "sniffio/__init__.py" in names and not any(".pyc" in n for n in names)
    assert {ln.split(",")[0] for ln in record.splitlines()} == set(names)
    assert not any(n.endswith(("INSTALLER", "direct_url.json")) for n in names)


async def _server(tmp_path: Path, dist: Path | None) -> SignalServer:
    listener = bound_socket()
    options = ServerOptions(data_dir=tmp_path / "server", http=("127.0.0.1", port_of(listener)),
                            dist=dist)
    return SignalServer(options, http_socket=listener)


async def test_dist_serves_listed_wheels_only(tmp_path: Path, nursery: trio.Nursery) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "punchd-0.1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    (dist / "notes.txt").write_text("not a wheel")
    (tmp_path / "secret-1-py3-none-any.whl").write_bytes(b"outside")
    server = await _server(tmp_path, dist)
    await nursery.start(server.run)
    async with httpx.AsyncClient(base_url=server.public_url, timeout=10) as client:
        index = await client.get("/dist/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert "punchd-0.1.0-py3-none-any.whl" in index.text and "notes.txt" not in index.text
        wheel = await client.get("/dist/punchd-0.1.0-py3-none-any.whl")
        assert wheel.status_code == 200 and wheel.content == b"PK wheel"
        for bad in ("notes.txt", "..%2Fsecret-1-py3-none-any.whl", "missing-1-py3-none-any.whl",
                    "%2E%2E", "..%2F..%2Fserver%2Fadmin.token"):
            resp = await client.get(f"/dist/{bad}")
            assert resp.status_code == 404, (bad, resp.status_code)
        script = await client.get("/install.sh")
        assert script.status_code == 200 and f"SERVER={server.public_url}" in script.text
    nursery.cancel_scope.cancel()


async def test_no_wheelhouse_is_a_503(tmp_path: Path, nursery: trio.Nursery) -> None:
    server = await _server(tmp_path, None)
    await nursery.start(server.run)
    async with httpx.AsyncClient(base_url=server.public_url, timeout=10) as client:
        resp = await client.get("/dist/")
        assert resp.status_code == 503 and "no wheelhouse" in resp.json()["error"]
        assert (await client.get("/install.sh")).status_code == 200
    nursery.cancel_scope.cancel()


async def test_wheelhouse_is_built_once(tmp_path: Path) -> None:
    house = Wheelhouse(build_root=tmp_path / "dist")
    names = await house.names()
    assert f"punchd-{__version__}-py3-none-any.whl" in names
    assert any(n.startswith("trio-") for n in names) and any(n.startswith("PyNaCl-") for n in names)
    built = (tmp_path / "dist" / __version__ / f"punchd-{__version__}-py3-none-any.whl")
    with zipfile.ZipFile(built) as zf:
        assert "signal_server/install.sh" in zf.namelist()
        assert "punchd/systemd/punchd.service" in zf.namelist()
        assert not any("__editable__" in n for n in zf.namelist())
    stamp = built.stat().st_mtime_ns
    assert await Wheelhouse(build_root=tmp_path / "dist").names() == names
    assert built.stat().st_mtime_ns == stamp  # cached by version


async def test_a_failed_build_is_not_retried_per_request(tmp_path: Path) -> None:
    root = tmp_path / "dist"
    root.write_text("a file where the wheelhouse's directory should be")
    house = Wheelhouse(build_root=root)
    with pytest.raises(DistUnavailable, match="cannot build"):
        await house.names()
    root.unlink()  # fixed now, but only a restart builds again
    with pytest.raises(DistUnavailable, match="cannot build"):
        await house.names()
    assert not root.exists()


def _venv(prefix: Path) -> None:
    prefix.mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "punchctl").write_text("")


def test_removal_plan_removes_only_what_is_punchds(tmp_path: Path) -> None:
    prefix, state, units = tmp_path / "p", tmp_path / "state", tmp_path / "units"
    _venv(prefix)
    (state / "networks").mkdir(parents=True)
    units.mkdir()
    (units / "punchd.service").write_text("[Unit]\n")
    assert removal_plan(prefix, state, units) == [units / "punchd.service", state, prefix]
    assert removal_plan(tmp_path / "none", tmp_path / "nostate", tmp_path / "nounits") == []
    with pytest.raises(PunchdError, match="not a punchd virtual environment"):
        removal_plan(tmp_path, state, units)  # a directory that is not our venv
    (state / "photos").mkdir()
    with pytest.raises(PunchdError, match="did not write"):
        removal_plan(prefix, state, units)


async def test_uninstall_asks_for_yes_and_changes_nothing_without_it(tmp_path: Path) -> None:
    prefix, state, units = tmp_path / "p", tmp_path / "state", tmp_path / "units"
    _venv(prefix)
    (state / "networks").mkdir(parents=True)
    with pytest.raises(PunchdError, match="--yes"):
        await uninstall(tmp_path / "no.sock", units, prefix, state, yes=False)
    assert prefix.exists() and state.exists()
    left, removed = await uninstall(tmp_path / "no.sock", units, prefix, state, yes=True)
    assert left == [] and removed == [state, prefix]
    assert not prefix.exists() and not state.exists()


def test_install_script_without_a_wheelhouse_changes_nothing(tmp_path: Path) -> None:
    proc, port = start_server_process(tmp_path / "server", "--no-dist")
    try:
        prefix = tmp_path / "p"
        res = subprocess.run(["sh", "-c", f"curl -fsSL http://127.0.0.1:{port}/install.sh | sh "
                              f"-s -- --token T --prefix {prefix} --no-start"],
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"})
        assert res.returncode != 0 and "this server has no wheelhouse" in res.stderr
        assert not prefix.exists()
    finally:
        reap(proc)


@pytest.mark.slow
def test_install_script_against_a_running_server(tmp_path: Path) -> None:
    """The one-liner, end to end on loopback, with a scratch prefix and --no-start
    (no systemd touched): a venv from the server's wheelhouse alone, twice, then
    uninstalled."""
    proc, port = start_server_process(tmp_path / "server")
    try:
        url = f"http://127.0.0.1:{port}"
        prefix, units = tmp_path / "opt" / "punchd", tmp_path / "units"
        line = (f"curl -fsSL {url}/install.sh | sh -s -- --token T --prefix {prefix} "
                f"--unit-dir {units} --no-start")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
               # pip must not reach for any index but the server's.
               "PIP_CONFIG_FILE": "/dev/null", "no_proxy": "*"}
        for attempt in ("install", "upgrade"):
            res = subprocess.run(["sh", "-c", line], capture_output=True, text=True,
                                 timeout=300, env=env)
            assert res.returncode == 0, (attempt, res.stdout, res.stderr)
            assert f"installed punchctl {__version__}" in res.stdout
        assert "upgrading" in res.stdout
        version = subprocess.run([str(prefix / "bin" / "punchctl"), "--version"],
                                 capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"punchctl {__version__}"
        unit = (units / "punchd.service").read_text()
        assert f"ExecStart={prefix}/bin/punchd " in unit
        if shutil.which("systemd-analyze"):  # the unit as installed, pointing into the venv
            verify = subprocess.run(["systemd-analyze", "verify", str(units / "punchd.service")],
                                    capture_output=True, text=True, timeout=60)
            problems = [ln for ln in verify.stderr.splitlines() if "punchd.service" in ln]
            assert verify.returncode == 0 and not problems, verify.stderr
        res = subprocess.run([str(prefix / "bin" / "punchctl"), "--socket",
                              str(tmp_path / "none.sock"), "uninstall", "--prefix", str(prefix),
                              "--unit-dir", str(units), "--state-dir", str(tmp_path / "state"),
                              "--yes"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert not prefix.exists() and not (units / "punchd.service").exists()
    finally:
        reap(proc)
    assert BIN.exists()
