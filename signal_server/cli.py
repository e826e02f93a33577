"""``signal-server``: ``serve`` runs the control plane; ``admin ...`` drives its API.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import trio

from meshdns.tsig import load_key_file
from meshdns.xfr import LOOPBACK, Secondaries, parse_networks
from punchd import __version__
from punchd.errors import AddrError, CliError, ConfigError, PunchdError
from punchd.wire import api
from punchd.wire.addr import Addr, parse_addr
from punchd.wire.token import decode_token

from . import tables
from .main import ServerOptions, parse_hostport, serve_forever
from .relay import RelayPool

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_NAME_TYPE: Any = api.Name


def seg(value: str, what: str | None = None) -> str:
    """One URL path segment: validated as a Name when ``what`` says so, always quoted.

    Unquoted, ``node delete NET ../../prod`` resolved to ``/networks/prod``.
    """
    if what is not None:
        try:
            msgspec.convert(value, _NAME_TYPE)
        except msgspec.ValidationError as exc:
            raise CliError(f"bad {what} name {value!r}: lower-case letters, digits and "
                           "'-' (a DNS label)") from exc
    return quote(value, safe="")


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise CliError(f"bad duration {text!r}: use e.g. 30m, 12h, 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


ADMIN_CONFIG = Path("punchd") / "admin.toml"


def admin_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/punchd/admin.toml``, by default ``~/.config/punchd/admin.toml``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / ADMIN_CONFIG


def admin_settings(server: str | None, token_file: str | None,
                   env: Mapping[str, str]) -> tuple[str, str]:
    """(server URL, token file): the flag, else ``PUNCHD_SERVER`` /
    ``PUNCHD_ADMIN_TOKEN_FILE``, else ``server``/``token_file`` of admin.toml."""
    server = server or env.get("PUNCHD_SERVER") or None
    token_file = token_file or env.get("PUNCHD_ADMIN_TOKEN_FILE") or None
    path = admin_config_path(env)
    if (server is None or token_file is None) and path.exists():
        try:
            conf = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from exc
        for key in ("server", "token_file"):
            if key in conf and not isinstance(conf[key], str):
                raise CliError(f"{path}: {key} must be a string")
        server = server or conf.get("server")
        token_file = token_file or conf.get("token_file")
    if not server:
        raise CliError(f"no server: give --server URL, set PUNCHD_SERVER, or write "
                       f"server = \"URL\" into {path}")
    if not token_file:
        raise CliError(f"no admin token: give --token-file FILE, set PUNCHD_ADMIN_TOKEN_FILE, "
                       f"or write token_file = \"FILE\" into {path}")
    return server, token_file


def install_line(token: str) -> str:
    """The one-liner that installs punchd on a new host and joins it with ``token``."""
    server = decode_token(token).server.rstrip("/")
    return f"curl -fsSL {server}/install.sh | sudo sh -s -- --token {token}"


class Admin:
    def __init__(self, server: str, token_file: str) -> None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read token file {token_file}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from exc
        self.client = httpx.Client(base_url=server.rstrip("/"), timeout=15,
                                   headers={"authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            resp = self.client.request(method, "/api/v1" + path,
                                       content=None if body is None else msgspec.json.encode(body),
                                       headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the signal server: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()
                reason = err.get("error", resp.text)
                if err.get("field"):
                    reason += f" (field {err['field']})"
            except ValueError:
                reason = resp.text
            raise CliError(f"server refused ({resp.status_code}): {reason}")
        return resp.json() if resp.content else None


def _listing(args: argparse.Namespace, rows: list[dict[str, Any]],
             columns: list[tables.Column]) -> None:
    if args.json:  # the API's fields as they are, for scripts
        print(json.dumps(rows, indent=2))
    else:
        print(tables.render(rows, columns, time.time()))


def _given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """The API fields (keys) whose options (values) were given on the command line."""
    return {field: getattr(args, option) for field, option in fields.items()
            if getattr(args, option) is not None}


def _settings_line(net: dict[str, Any]) -> str:
    return (f"{net['ipv4_cidr']}" + (f" {net['ipv6_cidr']}" if net.get("ipv6_cidr") else "")
            + f", port {net['listen_port']}, keepalive {net['keepalive']} s, mtu {net['mtu']}"
            + (", local only" if net["local_only"] else "")
            + ("" if net["hole_punching"] else ", no hole punching")
            + (", approval required" if net["require_approval"] else ""))


def _node_line(node: dict[str, Any]) -> str:
    """A node's name-independent settings; "network's" where it follows the network."""
    addresses = " ".join(a for a in (node.get("ipv4"), node.get("ipv6")) if a) or "no address"
    keepalive, mtu = node.get("keepalive"), node.get("mtu")
    return (f"{addresses}, port {node['listen_port']}, keepalive "
            + ("network's" if keepalive is None else f"{keepalive} s")
            + ", mtu " + ("network's" if mtu is None else str(mtu)))


def _segments(args: argparse.Namespace) -> tuple[str, str]:
    """The network and node path segments the command names ("" where none)."""
    obj, verb = args.object, args.verb
    net_seg = node_seg = ""
    if obj == "network" and verb != "list":
        net_seg = seg(args.name, "network")
    elif obj != "network":
        net_seg = seg(args.network, "network")
    if obj == "node" and verb != "list":
        node_seg = seg(args.name, "node")
    return net_seg, node_seg


def run_admin(args: argparse.Namespace) -> int:
    # Names are checked before any request (and before the token file is read).
    segments = _segments(args)
    admin = Admin(*admin_settings(args.server, args.token_file, os.environ))
    try:
        return _admin_command(args, admin, *segments)
    finally:
        admin.client.close()


def _admin_command(args: argparse.Namespace, admin: Admin, net_seg: str, node_seg: str) -> int:
    obj, verb = args.object, args.verb
    if obj == "network":
        if verb == "create":
            body = {"name": args.name, "ipv4_cidr": args.cidr, "local_only": args.local_only,
                    "require_approval": args.require_approval}
            if args.ipv6:
                body["ipv6_cidr"] = args.ipv6
            if args.listen_port is not None:
                body["listen_port"] = args.listen_port
            net = admin.request("POST", "/networks", body)
            print(f"network {net['name']} created: {net['ipv4_cidr']}"
                  + (f" {net['ipv6_cidr']}" if net.get("ipv6_cidr") else ""))
        elif verb == "list":
            _listing(args, admin.request("GET", "/networks"), tables.NETWORK_COLUMNS)
        elif verb == "update":
            body = _given(args, ipv4_cidr="cidr", ipv6_cidr="ipv6", local_only="local_only",
                          hole_punching="hole_punching", require_approval="require_approval",
                          listen_port="listen_port", keepalive="keepalive", mtu="mtu")
            if not body:
                raise CliError("nothing to update: give at least one option (see --help)")
            net = admin.request("PATCH", f"/networks/{net_seg}", body)
            print(f"network {net['name']} updated: " + _settings_line(net))
        elif verb == "rotate-keys":
            asked = admin.request("POST", f"/networks/{net_seg}/rotate-keys")
            print(f"network {args.name}: {len(asked)} node(s) asked for new keys; each "
                  "switches when the batch's keys are in")
        elif verb == "delete":
            members = admin.request("GET", f"/networks/{net_seg}/nodes")
            if members and not args.yes:
                raise CliError(f"network {args.name} has {len(members)} node(s); deleting it "
                               "removes them from the mesh: run again with --yes")
            admin.request("DELETE", f"/networks/{net_seg}")
            print(f"network {args.name} deleted"
                  + (f" with its {len(members)} node(s)" if members else ""))
    elif obj == "key":
        if verb == "create":
            body = {"uses": args.uses}
            if args.expires:
                body["expires_in"] = parse_duration(args.expires)
            created = admin.request("POST", f"/networks/{net_seg}/keys", body)
            key = created["key"]
            now = time.time()
            print(f"access key {key['id']} for {args.network}: uses "
                  f"{tables.uses(key['uses_left'])}, expires "
                  f"{tables.expiry(key.get('expires_at'), now)}")
            print("install and join a new host with:")
            print(f"  {install_line(created['token'])}")
            print(created["token"])  # the join token alone on the last line: scripts read it
        elif verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/keys"),
                     tables.KEY_COLUMNS)
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}/keys/{seg(args.id)}")
            print(f"access key {args.id} deleted")
    elif obj == "node":
        if verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/nodes"),
                     tables.NODE_COLUMNS)
        elif verb == "approve":
            admin.request("POST", f"/networks/{net_seg}/nodes/{node_seg}/approve")
            print(f"node {args.name} approved")
        elif verb == "rotate-key":
            admin.request("POST", f"/networks/{net_seg}/nodes/{node_seg}/rotate-key")
            print(f"node {args.name} asked for new keys")
        elif verb == "expire":
            seconds = None if args.never else parse_duration(args.duration or "")
            node = admin.request("PATCH", f"/networks/{net_seg}/nodes/{node_seg}",
                                 {"expires_in": seconds})
            print(f"node {args.name} expires "
                  + ("never" if node["expires_at"] is None else f"in {args.duration}"))
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}/nodes/{node_seg}")
            print(f"node {args.name} deleted")
        elif verb == "update":
            body = _given(args, name="new_name", ipv4="address", ipv6="address6",
                          listen_port="listen_port", keepalive="keepalive", mtu="mtu")
            if not body:
                raise CliError("nothing to update: give at least one option (see --help)")
            node = admin.request("PATCH", f"/networks/{net_seg}/nodes/{node_seg}", body)
            print(f"node {args.name} updated: " + _node_line(node))
        elif verb == "get":
            node = admin.request("GET", f"/networks/{net_seg}/nodes/{node_seg}")
            if args.json:
                print(json.dumps(node, indent=2))
            else:
                print(f"node {node['name']} ({node['id']}) in {node['network']}: "
                      + _node_line(node))
    elif obj == "dns":
        if verb == "add":
            admin.request("POST", f"/networks/{net_seg}/dns",
                          {"name": args.name, "rtype": args.type.upper(), "value": args.value})
            print(f"{args.name} {args.type.upper()} {args.value} added to {args.network}")
        elif verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/dns"),
                     tables.DNS_COLUMNS)
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}/dns/{seg(args.name)}/{seg(args.type.upper())}")
            print(f"{args.name} {args.type.upper()} deleted from {args.network}")
    return 0


def parse_relay(text: str) -> RelayPool:
    """``HOST:LOW-HIGH`` -> a relay pool (IPv4: the in-kernel forwarder is IPv4)."""
    host, sep, ports = text.rpartition(":")
    low_text, dash, high_text = ports.partition("-")
    try:
        ip = ipaddress.ip_address(host)
        low, high = int(low_text), int(high_text)
    except ValueError as exc:
        raise ConfigError(f"--relay {text!r}: expected IPv4:LOW-HIGH, e.g. "
                          "203.0.113.10:40000-40999") from exc
    if not sep or not dash or ip.version != 4 or not 1024 <= low < high <= 65535:
        raise ConfigError(f"--relay {text!r}: expected IPv4:LOW-HIGH with 1024 <= LOW < HIGH")
    return RelayPool(str(ip), low, high)


def _start_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one line to show for a start-up failure trio wrapped in ExceptionGroups.

    A port in use surfaces from ``nursery.start`` inside two nurseries; the user wants
    the OSError, not the tree. Anything we do not recognise is re-raised as it was.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, PunchdError):
            return leaf
        if isinstance(leaf, OSError):
            return ConfigError(f"cannot start: {leaf}")
    return group


def secondaries_options(args: argparse.Namespace) -> Secondaries:
    """``--dns-notify``, ``--dns-transfer-allow`` and ``--dns-tsig-file``, checked."""
    try:
        notify = tuple(parse_addr(text) for text in args.dns_notify)
    except AddrError as exc:
        raise ConfigError(f"--dns-notify: {exc}") from exc
    try:
        allow = parse_networks(args.dns_transfer_allow) if args.dns_transfer_allow else LOOPBACK
    except ValueError as exc:
        raise ConfigError(f"--dns-transfer-allow: {exc}") from exc
    key = load_key_file(args.dns_tsig_file) if args.dns_tsig_file else None
    if (notify or args.dns_transfer_allow or key) and not args.dns:
        raise ConfigError("--dns-notify, --dns-transfer-allow and --dns-tsig-file need --dns")
    return Secondaries(notify=notify, transfer_allow=allow, tsig_key=key)


def _setting_options(p: argparse.ArgumentParser, port_help: str) -> None:
    """Options that a network and a node both have (the node's own win)."""
    p.add_argument("--listen-port", type=int, metavar="P", help=port_help)
    p.add_argument("--keepalive", type=int, metavar="S",
                   help="WireGuard persistent keepalive in seconds (0: off)")
    p.add_argument("--mtu", type=int, metavar="M", help="the interface MTU (1280-9000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-server", description="punchd's control plane")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the signal server")
    serve.add_argument("--data-dir", required=True, type=Path)
    serve.add_argument("--database", metavar="URL",
                       help="postgresql://... to share one database between replicas (a "
                            "password is better kept in PGPASSWORD or ~/.pgpass); "
                            "default: SQLite in --data-dir")
    serve.add_argument("--http", required=True, metavar="HOST:PORT")
    serve.add_argument("--stun", action="append", default=[], metavar="HOST:PORT",
                       help="STUN listener; give twice (second address) for RFC 5780")
    serve.add_argument("--stun-server", metavar="HOST:PORT",
                       help="advertise this (external, RFC 5780) STUN server to nodes "
                            "instead of our own --stun responder")
    serve.add_argument("--dns", metavar="HOST:PORT", help="mesh DNS listener (UDP and TCP)")
    serve.add_argument("--domain", default="mesh")
    serve.add_argument("--dns-notify", action="append", default=[], metavar="IP:PORT",
                       help="a DNS secondary to send NOTIFY to on each zone change "
                            "(repeatable; docs/meshdns.md)")
    serve.add_argument("--dns-transfer-allow", action="append", default=[], metavar="CIDR",
                       help="sources allowed to AXFR/IXFR the zones (repeatable; "
                            "default loopback only)")
    serve.add_argument("--dns-tsig-file", type=Path, metavar="FILE",
                       help="TSIG key (HMAC-SHA256) that transfers and NOTIFYs must carry: "
                            "an NSD key: clause, a BIND key statement or name:base64secret")
    serve.add_argument("--public-url", help="URL put into join tokens (default from --http)")
    serve.add_argument("--certfile")
    serve.add_argument("--keyfile")
    serve.add_argument("--relay", action="append", default=[], metavar="HOST:LOW-HIGH",
                       help="relay address and port range for allocations (repeatable)")
    serve.add_argument("--metrics", metavar="HOST:PORT",
                       help="also answer GET /metrics here WITHOUT the admin token "
                            "(a private address: it tells who is in which network)")
    dist = serve.add_mutually_exclusive_group()
    dist.add_argument("--dist", type=Path, metavar="DIR",
                      help="serve the wheels in DIR at /dist/ for install.sh (default: "
                           "build them from this installation into DATA_DIR/dist)")
    dist.add_argument("--no-dist", action="store_true",
                      help="serve no wheelhouse (install.sh then cannot install)")
    serve.add_argument("--relay-mode", choices=["auto", "nft", "userspace"], default="auto",
                       help="forward in the kernel (nft), in Python, or nft when it works")

    admin = sub.add_parser("admin", help="administer a running server over its API")
    admin.add_argument("--server", metavar="URL",
                       help="default: $PUNCHD_SERVER, else server in ~/.config/punchd/admin.toml")
    admin.add_argument("--token-file", metavar="FILE",
                       help="default: $PUNCHD_ADMIN_TOKEN_FILE, else token_file in "
                            "~/.config/punchd/admin.toml")
    objects = admin.add_subparsers(dest="object", required=True)

    def verb(parent: Any, name: str, *, listing: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name)
        if listing:
            p.add_argument("--json", action="store_true")
        return p

    net = objects.add_parser("network").add_subparsers(dest="verb", required=True)
    p = verb(net, "create")
    p.add_argument("name")
    p.add_argument("--cidr", required=True)
    p.add_argument("--ipv6")
    p.add_argument("--local-only", action="store_true")
    p.add_argument("--require-approval", action="store_true")
    p.add_argument("--listen-port", type=int)
    verb(net, "list", listing=True)
    p = verb(net, "update")
    p.add_argument("name")
    p.add_argument("--cidr", help="a new IPv4 range: renumbers every node")
    p.add_argument("--ipv6")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--local-only", action=flag, default=None,
                   help="LAN paths only: no STUN candidate, no relay")
    p.add_argument("--hole-punching", action=flag, default=None,
                   help="off: no probes, endpoints from the server only")
    p.add_argument("--require-approval", action=flag, default=None)
    _setting_options(p, "every node moves to this port")
    p = verb(net, "delete")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="delete it even when it has nodes")
    verb(net, "rotate-keys").add_argument("name")

    key = objects.add_parser("key").add_subparsers(dest="verb", required=True)
    p = verb(key, "create")
    p.add_argument("network")
    p.add_argument("--uses", type=int)
    p.add_argument("--expires", metavar="DURATION")
    verb(key, "list", listing=True).add_argument("network")
    p = verb(key, "delete")
    p.add_argument("network")
    p.add_argument("id")

    node = objects.add_parser("node").add_subparsers(dest="verb", required=True)
    verb(node, "list", listing=True).add_argument("network")
    for name in ("approve", "delete", "rotate-key"):
        p = verb(node, name)
        p.add_argument("network")
        p.add_argument("name")
    p = verb(node, "update")
    p.add_argument("network")
    p.add_argument("name")
    p.add_argument("--name", dest="new_name", metavar="N", help="rename (its DNS name follows)")
    p.add_argument("--address", metavar="IP", help="a free address of the network's range")
    p.add_argument("--address6", metavar="IP")
    _setting_options(p, "this node's WireGuard port")
    p = verb(node, "get", listing=True)
    p.add_argument("network")
    p.add_argument("name")
    p = verb(node, "expire")
    p.add_argument("network")
    p.add_argument("name")
    p.add_argument("duration", nargs="?", metavar="DURATION", help="e.g. 30m, 12h, 7d")
    p.add_argument("--never", action="store_true", help="clear the expiry")

    dns = objects.add_parser("dns").add_subparsers(dest="verb", required=True)
    p = verb(dns, "add")
    for a in ("network", "name", "type", "value"):
        p.add_argument(a)
    verb(dns, "list", listing=True).add_argument("network")
    p = verb(dns, "delete")
    for a in ("network", "name", "type"):
        p.add_argument(a)
    return parser


def _metrics_addr(text: str | None) -> Addr | None:
    if text is None:
        return None
    try:
        return parse_addr(text)
    except AddrError as exc:
        raise ConfigError(f"--metrics: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            options = ServerOptions(
                data_dir=args.data_dir,
                http=parse_hostport(args.http, "--http"),
                stun=[parse_hostport(s, "--stun") for s in args.stun],
                stun_server=parse_hostport(args.stun_server, "--stun-server")
                if args.stun_server else None,
                dns=parse_hostport(args.dns, "--dns") if args.dns else None,
                dns_secondaries=secondaries_options(args),
                domain=args.domain, public_url=args.public_url,
                certfile=args.certfile, keyfile=args.keyfile,
                relay=[parse_relay(r) for r in args.relay], relay_mode=args.relay_mode,
                database=args.database,
                metrics=_metrics_addr(args.metrics),
                dist=args.dist, build_dist=args.dist is None and not args.no_dist,
            )
            if options.dist is not None and not options.dist.is_dir():
                raise ConfigError(f"--dist {options.dist}: not a directory")
            if len(options.stun) > 2:
                raise ConfigError("--stun: give at most two (primary and alternate)")
            try:
                trio.run(serve_forever, options)
            except BaseExceptionGroup as group:
                raise _start_error(group) from group
            except OSError as exc:
                raise ConfigError(f"cannot start: {exc}") from exc
            return 0
        return run_admin(args)
    except PunchdError as exc:
        print(f"signal-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
