"""``punchctl``: talks to punchd's control socket. Tables for people, ``--json`` for scripts.

Every failure is one line on stderr and a non-zero exit, never a traceback.

punchctl answers at once: the commands users run all day (status, list, netcheck, ping,
pull, push, join, leave) import only msgspec, the pure protocol and the blocking client
(:mod:`punchd.daemon.client`), never trio, httpx, rich, nacl or the daemon; ``install``
and ``uninstall`` import what they need when they run (tests/test_cli_imports.py holds
this).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from punchd import __version__
from punchd.daemon import client, commands, results
from punchd.errors import PunchdError, TokenError, main_error
from punchd.wire.token import decode_token

DEFAULT_SOCKET = Path("/run/punchd.sock")
UNIT_NAME = "punchd.service"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _bytes(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


PEER_COLUMNS = ("peer", "address", "endpoint", "path", "rtt", "handshake", "rx", "tx")


def _bold(text: str) -> str:
    """Bold on a terminal (as rich drew it), plain text in pipes and files."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or \
            not sys.stdout.isatty():
        return text
    return f"\x1b[1m{text}\x1b[0m"


def table_lines(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, every cell padded to its column's width
    (the layout rich's ``Table(box=None, pad_edge=False)`` printed, byte for byte)."""
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(columns)]
    header = "  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))
    return [_bold(header)] + [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def print_status(status: results.StatusResult) -> None:
    if not status.networks and not status.broken:
        print("not joined to any network (punchctl join --token T)")
    for b in status.broken:
        print(f"{b.name}  broken, not started: {b.error}")
    for net in status.networks:
        nat = net.nat
        nat_text = (f"mapping {nat.mapping}, filtering {nat.filtering}"
                    if nat is not None and nat.mapping else "not measured")
        print(
            f"{_bold(net.name)}  node {net.node}  interface {net.interface}"
            f"  address {net.address}"
            + (f"  address6 {net.address6}" if net.address6 else "")
            + f"  port {net.listen_port}  state {net.node_state}"
            + (f" ({net.state_reason})" if net.state_reason else "") + "\n"
            f"  server {net.server} ({'connected' if net.server_connected else 'disconnected'})"
            f"  NAT: {nat_text}"
            + (f"\n  DNS: *.{net.dns.domain} -> {net.dns.address} ({net.dns.resolver})"
               if net.dns else "")
            + (f"\n  last error: {net.last_error}" if net.last_error else "")
        )
        rows = [(p.name, " ".join(a for a in (p.address, p.address6) if a) or "-",
                 p.endpoint or "-", p.path,
                 f"{p.rtt_ms:.1f}ms" if p.rtt_ms is not None else "-",
                 _age(p.last_handshake_age_s), _bytes(p.rx_bytes), _bytes(p.tx_bytes))
                for p in net.peers]
        for line in table_lines(PEER_COLUMNS, rows):
            print(line)


def print_checkin(r: results.CheckinResult) -> None:
    for n in r.networks:
        reason = f" ({n.state_reason})" if n.state_reason else ""
        print(f"{n.network}: node {n.node_state}{reason}")
        if n.error:
            print(f"  failed: {n.error}")
        if n.pushed:
            print(f"  pushed {len(n.pushed)} candidate(s)"
                  + (" (the server had others)" if n.push_changed else ""))
        for name in n.peers_added:
            print(f"  peer {name} added")
        for name in n.peers_removed:
            print(f"  peer {name} removed")
        for p in n.peers_changed:
            print(f"  peer {p.name} changed: {', '.join(p.fields)}")
        for c in (*n.settings_changed, *n.node_changed):
            print(f"  {c.field}: {c.old} -> {c.new}")
        if not (n.peers_added or n.peers_removed or n.peers_changed or n.settings_changed
                or n.node_changed):
            print("  nothing changed on the server")
        print(f"  {n.wireguard_changes} WireGuard change(s) applied")


def print_netcheck(r: results.NetcheckResult) -> None:
    print(f"Report for {r.network} (STUN server {r.stun_server}, from the WireGuard port):")
    print(f"  * Public endpoint: {r.public_endpoint or 'unknown'}")
    print(f"  * Mapping:         {r.mapping or 'unknown'}"
          + ("  (varies by destination: direct paths need the peer to punch)"
             if r.mapping not in (None, "endpoint-independent") else ""))
    print(f"  * Filtering:       {r.filtering or 'unknown'}")
    print(f"  * Port preserved:  {'yes' if r.port_preserved else 'no'}")
    if r.port_deltas:
        print(f"  * Port deltas:     {', '.join(str(d) for d in r.port_deltas)}")
    mapped = (f"{r.mapped_endpoint} by {r.port_mapping.upper()}" if r.mapped_endpoint and
              r.port_mapping else f"none ({r.port_mapping_error or 'not tried yet'})")
    print(f"  * Port mapping:    {mapped}")


def print_list(networks: list[results.NetworkSummary]) -> None:
    if not networks:
        print("not joined to any network")
        return
    for n in networks:
        if n.broken:
            print(f"{n.name:16} broken: {n.broken}")
            continue
        state = "connected" if n.server_connected else "disconnected"
        print(f"{n.name:16} {n.interface or '-':15} {n.address or '-':16} "
              f"{n.peers} peer(s)  server {state}")


def print_json(result: object) -> None:
    print(json.dumps(msgspec.to_builtins(result), indent=2))


def unit_source() -> str:
    from importlib import resources  # install only: 20 ms punchctl's hot commands skip

    return resources.files("punchd").joinpath("systemd", UNIT_NAME).read_text()


def install(unit_dir: Path, *, start: bool) -> str:
    import subprocess  # install only

    unit_dir.mkdir(parents=True, exist_ok=True)
    target = unit_dir / UNIT_NAME
    text = unit_source()
    # This installation's own punchd first: one in a venv (install.sh) must not find
    # another one on PATH.
    own = Path(sys.executable).parent / "punchd"
    exe = str(own) if own.exists() else shutil.which("punchd") or str(own)
    target.write_text(text.replace("/usr/local/bin/punchd", exe))
    if start and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=False)
    return str(target)


DEFAULT_PREFIX = Path("/opt/punchd")
DEFAULT_STATE_DIR = Path("/var/lib/punchd")
# All punchd ever writes into its state directory (punchd.daemon.state.StateDir).
_STATE_ENTRIES = {"networks"}


def removal_plan(prefix: Path, state_dir: Path, unit_dir: Path) -> list[Path]:
    """What ``punchctl uninstall`` removes, after checking each is punchd's: a prefix
    is removed only when it is a venv holding punchctl (``--prefix /`` is refused), a
    state directory only when it holds nothing punchd did not write there."""
    plan: list[Path] = []
    if (unit_dir / UNIT_NAME).exists():
        plan.append(unit_dir / UNIT_NAME)
    if state_dir.exists():
        if not state_dir.is_dir():
            raise PunchdError(f"state directory {state_dir} is not a directory: left alone")
        foreign = sorted(set(os.listdir(state_dir)) - _STATE_ENTRIES)
        if foreign:
            raise PunchdError(f"{state_dir} holds files punchd did not write "
                              f"({', '.join(foreign[:3])}): not removing it")
        plan.append(state_dir)
    if prefix.exists():
        if not ((prefix / "pyvenv.cfg").is_file() and (prefix / "bin" / "punchctl").exists()):
            raise PunchdError(f"{prefix} is not a punchd virtual environment (no pyvenv.cfg "
                              "and bin/punchctl): not removing it")
        plan.append(prefix)
    return plan


async def leave_all(socket: Path) -> list[str]:
    """Leave every network (the daemon says goodbye to each server); none if not running."""
    from punchd.daemon.control import ask

    left: list[str] = []
    try:
        for net in await ask(socket, commands.List(), list[results.NetworkSummary]):
            await ask(socket, commands.Leave(network=net.name), results.LeaveResult)
            left.append(net.name)
    except PunchdError as exc:
        if "not running" not in str(exc):
            raise
    return left


async def uninstall(socket: Path, unit_dir: Path, prefix: Path, state_dir: Path, *,
                    yes: bool) -> tuple[list[str], list[Path]]:
    """Leave the networks, stop and remove the unit, then the state and the venv."""
    import trio  # uninstall only: the hot commands never load it

    plan = removal_plan(prefix, state_dir, unit_dir)  # refused before anything changes
    if not yes:
        what = ", ".join(map(str, plan)) or "nothing on disk"
        raise PunchdError(f"this leaves every network and removes {what}: "
                          "run again with --yes")
    left = await leave_all(socket)
    if shutil.which("systemctl") and (unit_dir / UNIT_NAME).exists():
        await trio.run_process(["systemctl", "disable", "--now", UNIT_NAME], check=False)
    remove_paths(plan)
    if systemd_running():
        await trio.run_process(["systemctl", "daemon-reload"], check=False)
    return left, plan


def remove_paths(plan: list[Path]) -> None:
    for path in plan:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def systemd_running() -> bool:
    """sd_booted(3): systemd is PID 1 here, so systemctl has someone to talk to."""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="punchctl", description="control punchd")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("join", help="join a network with a token")
    p.add_argument("--token", required=True)
    p.add_argument("--name")
    p.add_argument("--ifname")
    sub.add_parser("leave", help="leave a network").add_argument("network")
    for name in ("list", "status", "netcheck"):
        q = sub.add_parser(name)
        q.add_argument("--json", action="store_true")
        if name != "list":
            q.add_argument("--network")
    p = sub.add_parser("ping", help="ping a peer: each answer's path (direct or relay) and RTT")
    p.add_argument("peer")
    p.add_argument("--icmp", action="store_true",
                   help="ICMP echo through WireGuard instead of punch probes")
    p.add_argument("-c", "--count", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--network")
    for name in ("pull", "push"):
        sub.add_parser(name).add_argument("--network")
    p = sub.add_parser("checkin", help="push local changes, pull the server's, say what changed")
    p.add_argument("network", nargs="?")
    p.add_argument("--json", action="store_true")
    for name in ("install", "uninstall"):
        q = sub.add_parser(name)
        q.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
        if name == "install":
            q.add_argument("--no-start", action="store_true")
        else:
            q.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX,
                           help="the virtual environment install.sh made (default %(default)s)")
            q.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
            q.add_argument("--yes", action="store_true", help="really remove it all")
    return parser


def run(args: argparse.Namespace) -> int:
    sock: Path = args.socket
    cmd = args.command
    if cmd == "join":
        try:
            decode_token(args.token)
        except TokenError as exc:
            raise PunchdError(f"bad token: {exc}") from exc
        joined = client.ask(sock, commands.Join(token=args.token, name=args.name,
                                              ifname=args.ifname), results.JoinResult)
        pending = "" if joined.approved else " (pending approval)"
        print(f"joined {joined.network} as {joined.node}: {joined.address} on "
              f"{joined.interface}{pending}")
    elif cmd == "leave":
        client.ask(sock, commands.Leave(network=args.network), results.LeaveResult)
        print(f"left {args.network}")
    elif cmd == "list":
        networks = client.ask(sock, commands.List(), list[results.NetworkSummary])
        print_json(networks) if args.json else print_list(networks)
    elif cmd == "status":
        status = client.ask(sock, commands.Status(network=args.network), results.StatusResult)
        print_json(status) if args.json else print_status(status)
    elif cmd == "netcheck":
        report = client.ask(sock, commands.Netcheck(network=args.network), results.NetcheckResult)
        print_json(report) if args.json else print_netcheck(report)
    elif cmd == "ping":
        ping = client.ask(sock, commands.Ping(peer=args.peer, network=args.network,
                                            count=args.count, icmp=args.icmp), results.PingResult)
        if args.json:
            print_json(ping)
        else:
            for reply in ping.replies:
                print(f"pong from {ping.peer} ({ping.address}) via {reply.path} "
                      f"{reply.endpoint} in {reply.rtt_ms:.2f}ms (seq {reply.seq})")
            print(f"{len(ping.replies)}/{ping.sent} answered")
        if not ping.replies:
            raise PunchdError(f"no answer from {ping.peer} ({ping.address})")
    elif cmd == "pull":
        pulled = client.ask(sock, commands.Pull(network=args.network), results.PullResult)
        print(f"pull: {', '.join(pulled.pulled) or 'no networks'}")
    elif cmd == "push":
        pushed = client.ask(sock, commands.Push(network=args.network), results.PushResult)
        print(f"push: {', '.join(pushed.pushed) or 'no networks'}")
    elif cmd == "checkin":
        checked = client.ask(sock, commands.Checkin(network=args.network), results.CheckinResult)
        print_json(checked) if args.json else print_checkin(checked)
        if any(n.error for n in checked.networks):
            return 1
    elif cmd == "install":
        print(f"installed {install(args.unit_dir, start=not args.no_start)}")
    elif cmd == "uninstall":
        import trio

        left, removed = trio.run(partial(uninstall, sock, args.unit_dir, args.prefix,
                                         args.state_dir, yes=args.yes))
        print(f"left {', '.join(left) or 'no networks'}; removed "
              f"{', '.join(map(str, removed)) or 'nothing (not installed)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BaseException as group:  # the top level: one line, never a traceback
        exc = main_error(group)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, PunchdError):
            text = str(exc)
        elif isinstance(exc, OSError):
            text = (exc.strerror or str(exc)) + (f" ({exc.filename})" if exc.filename else "")
        else:
            text = f"unexpected answer or failure ({type(exc).__name__}: {exc})"
        print(f"punchctl: {' '.join(text.split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
