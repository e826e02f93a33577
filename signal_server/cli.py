"""``signal-server``: ``serve`` runs the control plane; ``admin ...`` drives its API.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import trio

from meshdns.tsig import load_key_file
from meshdns.xfr import LOOPBACK, Secondaries, parse_networks
from punchd.errors import AddrError, ConfigError, PunchdError
from punchd.wire import api
from punchd.wire.addr import parse_addr

from .main import ServerOptions, parse_hostport, serve_forever
from .relay import RelayPool

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(PunchdError):
    """A user-facing failure of the admin CLI."""


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


class Admin:
    def __init__(self, server: str, token_file: str) -> None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read token file {token_file}: {exc.strerror}") from exc
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


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _listing(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, columns)


def run_admin(args: argparse.Namespace) -> int:
    obj, verb = args.object, args.verb
    # Names are checked before any request (and before the token file is read).
    if obj == "network" and verb != "list":
        net_seg = seg(args.name, "network")
    elif obj != "network":
        net_seg = seg(args.network, "network")
    if obj == "node" and verb != "list":
        node_seg = seg(args.name, "node")
    admin = Admin(args.server, args.token_file)
    if obj == "network":
        if verb == "create":
            body = {"name": args.name, "ipv4_cidr": args.cidr, "local_only": args.local_only,
                    "require_approval": args.require_approval}
            if args.ipv6:
                body["ipv6_cidr"] = args.ipv6
            if args.listen_port:
                body["listen_port"] = args.listen_port
            net = admin.request("POST", "/networks", body)
            print(f"network {net['name']} created: {net['ipv4_cidr']}"
                  + (f" {net['ipv6_cidr']}" if net.get("ipv6_cidr") else ""))
        elif verb == "list":
            _listing(args, admin.request("GET", "/networks"),
                     ["name", "ipv4_cidr", "ipv6_cidr", "local_only", "hole_punching",
                      "require_approval"])
        elif verb == "update":
            body = {k: v for k, v in (("ipv4_cidr", args.cidr), ("ipv6_cidr", args.ipv6))
                    if v is not None}
            net = admin.request("PATCH", f"/networks/{net_seg}", body)
            print(f"network {net['name']} updated: {net['ipv4_cidr']}")
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}")
            print(f"network {args.name} deleted")
    elif obj == "key":
        if verb == "create":
            body = {"uses": args.uses}
            if args.expires:
                body["expires_in"] = parse_duration(args.expires)
            created = admin.request("POST", f"/networks/{net_seg}/keys", body)
            key = created["key"]
            uses = "unlimited" if key["uses_left"] is None else key["uses_left"]
            print(f"access key {key['id']} for {args.network}: uses {uses}")
            print(created["token"])  # the join token alone on the last line
        elif verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/keys"),
                     ["id", "uses_left", "expires_at"])
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}/keys/{seg(args.id)}")
            print(f"access key {args.id} deleted")
    elif obj == "node":
        if verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/nodes"),
                     ["name", "ipv4", "ipv6", "approved", "expires_at", "wg_public_key"])
        elif verb == "approve":
            admin.request("POST", f"/networks/{net_seg}/nodes/{node_seg}/approve")
            print(f"node {args.name} approved")
        elif verb == "expire":
            seconds = None if args.never else parse_duration(args.duration or "")
            node = admin.request("PATCH", f"/networks/{net_seg}/nodes/{node_seg}",
                                 {"expires_in": seconds})
            print(f"node {args.name} expires "
                  + ("never" if node["expires_at"] is None else f"in {args.duration}"))
        elif verb == "delete":
            admin.request("DELETE", f"/networks/{net_seg}/nodes/{node_seg}")
            print(f"node {args.name} deleted")
    elif obj == "dns":
        if verb == "add":
            admin.request("POST", f"/networks/{net_seg}/dns",
                          {"name": args.name, "rtype": args.type.upper(), "value": args.value})
            print(f"{args.name} {args.type.upper()} {args.value} added to {args.network}")
        elif verb == "list":
            _listing(args, admin.request("GET", f"/networks/{net_seg}/dns"),
                     ["name", "rtype", "value"])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-server", description="punchd's control plane")
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
    serve.add_argument("--relay-mode", choices=["auto", "nft", "userspace"], default="auto",
                       help="forward in the kernel (nft), in Python, or nft when it works")

    admin = sub.add_parser("admin", help="administer a running server over its API")
    admin.add_argument("--server", required=True, metavar="URL")
    admin.add_argument("--token-file", required=True, metavar="FILE")
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
    p.add_argument("--cidr")
    p.add_argument("--ipv6")
    verb(net, "delete").add_argument("name")

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
    for name in ("approve", "delete"):
        p = verb(node, name)
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
            )
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
