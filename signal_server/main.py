"""The signal server process: one trio nursery tree owned by :class:`SignalServer`.

Services (HTTP API, STUN responder, mesh DNS) each have ``run(task_status=...)`` and
are started with ``nursery.start`` after binding, so a port in use fails start-up at
once, with its name, instead of half a server running.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshdns.xfr import Secondaries
from punchd.errors import AddrError, ConfigError
from punchd.metrics_http import MetricsListener
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr, parse_host_port

from .app import build_app
from .dist import Wheelhouse
from .event_feed import new_origin
from .limits import current_soft_limit, raise_open_file_limit, stream_capacity
from .relay import RelayMode, RelayPool, RelayService
from .relay.registry import RelayRegistry
from .service import Service
from .store import Store, open_store

ADMIN_TOKEN_FILE = "admin.token"
DNS_SERIAL_FILE = "dns.serial"  # meshdns's last SOA serial, kept across restarts


def parse_hostport(text: str, what: str) -> Addr:
    try:
        return parse_host_port(text)
    except AddrError as exc:
        raise ConfigError(f"{what}: expected HOST:PORT (IPv6 as [addr]:port): {exc}") from exc


def load_or_create_admin_token(data_dir: Path) -> str:
    """Created at first start, 0600, never logged."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not token:
            # An empty token would let any empty bearer in: refuse rather than guess.
            raise ConfigError(f"{path} is empty: write a token into it, or delete it "
                              "to have a new one created")
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


@dataclass
class ServerOptions:
    data_dir: Path
    http: tuple[str, int]
    stun: list[tuple[str, int]] = field(default_factory=list)
    stun_server: tuple[str, int] | None = None  # an external STUN server to advertise
    dns: tuple[str, int] | None = None
    domain: str = "mesh"
    dns_secondaries: Secondaries = field(default_factory=Secondaries)
    public_url: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    relay: list[RelayPool] = field(default_factory=list)
    relay_mode: RelayMode = "auto"
    database: str | None = None  # a postgresql:// URL or an SQLite path; None: data_dir's
    # Event streams held at once; None: what the open-file limit allows (limits.py).
    max_streams: int | None = None
    # GET /metrics without the admin token, on a listener of its own; None: none.
    metrics: Addr | None = None
    dist: Path | None = None  # a wheelhouse directory for /dist/ (install.sh), as given
    build_dist: bool = False  # else: build one into data_dir/dist on first use


class SignalServer:
    def __init__(self, options: ServerOptions, *,
                 http_socket: socket.socket | None = None,
                 metrics_socket: socket.socket | None = None) -> None:
        """``http_socket``: a listening socket bound to ``options.http`` to serve on
        instead of binding it (tests bind port 0 and pass it, so no one takes the port
        between choosing and binding it); the server owns it from here. Likewise
        ``metrics_socket`` for ``options.metrics``."""
        self.options = options
        self._http_socket = http_socket
        self._metrics_socket = metrics_socket
        options.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(options.data_dir, 0o700)
        scheme = "https" if options.certfile else "http"
        host, port = options.http
        if options.public_url is None and _unspecified(host):
            raise ConfigError(f"--http {host}:{port} listens on every address, so it is no "
                              "address for join tokens: give --public-url (e.g. "
                              f"{scheme}://203.0.113.10:{port})")
        self.admin_token = load_or_create_admin_token(options.data_dir)
        self.store = open_store(options.database or options.data_dir / "signal.db")
        url_host = f"[{host}]" if ":" in host else host
        self.public_url = options.public_url or f"{scheme}://{url_host}:{port}"
        self.relay = self._relay(options, self.store)
        self.max_streams = options.max_streams if options.max_streams is not None else \
            stream_capacity(current_soft_limit(),
                            relay_ports=sum(p.high - p.low + 1 for p in options.relay))
        self.service = Service(self.store, public_url=self.public_url,
                               dns=self._mesh_dns(options, self.public_url),
                               stun=self._stun_address(options, self.public_url),
                               relay=self.relay, max_streams=self.max_streams)
        self.dist = Wheelhouse(given=options.dist) if options.dist is not None else \
            Wheelhouse(build_root=options.data_dir / "dist") if options.build_dist else None
        self.app = build_app(self.service, self.admin_token, dist=self.dist)

    @staticmethod
    def _relay(options: ServerOptions, store: Store) -> RelayService | None:
        """The relay: with ``--relay``, or on PostgreSQL even without, since a replica
        without relay ports still answers with another replica's allocation (and 503
        only when there is none)."""
        if store.db.dialect != "postgresql":
            return RelayService(options.relay, options.relay_mode) if options.relay else None
        # The replica's id: the one its event notices carry, when the database has one.
        replica = getattr(store.db, "origin", None) or new_origin()
        return RelayService(options.relay, options.relay_mode,
                            registry=RelayRegistry(store.db, replica))

    @staticmethod
    def _stun_address(options: ServerOptions, public_url: str) -> str | None:
        """The STUN address nodes should use: --stun-server, else our primary --stun."""
        if options.stun_server is not None:
            host, port = options.stun_server
        elif options.stun:
            host, port = options.stun[0]
        else:
            return None
        if host in ("0.0.0.0", "::"):
            host = urlsplit(public_url).hostname or host
        return format_addr((host, port))

    @staticmethod
    def _mesh_dns(options: ServerOptions, public_url: str) -> api.MeshDns | None:
        """The DNS address nodes should use: --dns, or the public URL's host for a wildcard."""
        if options.dns is None:
            return None
        host, port = options.dns
        if host in ("0.0.0.0", "::"):
            host = urlsplit(public_url).hostname or host
        return api.MeshDns(address=format_addr((host, port)), domain=options.domain)

    async def run_http(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        host, port = self.options.http
        if self._http_socket is not None:
            # hypercorn adopts the descriptor (and closes it); ours must not close it too.
            config.bind = [f"fd://{self._http_socket.detach()}"]
            self._http_socket = None
        else:
            config.bind = [format_addr((host, port))]
        config.accesslog = None
        config.errorlog = "-"
        config.loglevel = "WARNING"
        config.keep_alive_timeout = 75
        if self.options.certfile:
            config.certfile = self.options.certfile
            config.keyfile = self.options.keyfile
        await serve(self.app, config, task_status=task_status)  # type: ignore[arg-type]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run_http)
            await nursery.start(self.service.expire_nodes)
            feed = self.store.db.event_feed()
            if feed is not None:  # PostgreSQL: other replicas' writes wake our streams
                await nursery.start(self.service.follow, feed)
            if self.options.stun:
                from .stun_server import StunResponder

                primary = self.options.stun[0]
                alternate = self.options.stun[1] if len(self.options.stun) > 1 else None
                responder = StunResponder(primary, alternate)
                self.service.metrics.stun = responder
                await nursery.start(responder.run)
            if self.options.dns:
                await nursery.start(self.run_dns)
            if self.relay is not None:
                await nursery.start(self.relay.run)
            if self.options.metrics is not None:
                listener = MetricsListener(self.options.metrics, self.service.metrics.scrape,
                                           sock=self._metrics_socket)
                self._metrics_socket = None
                await nursery.start(listener.run)
            task_status.started()

    async def run_dns(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .dns import ZonePusher

        assert self.options.dns is not None
        pusher = ZonePusher(self.service, self.options.dns, domain=self.options.domain,
                            secondaries=self.options.dns_secondaries,
                            serial_file=self.options.data_dir / DNS_SERIAL_FILE)
        self.service.metrics.dns = pusher.dns
        await pusher.run(task_status=task_status)


async def serve_forever(options: ServerOptions) -> None:
    # Before anything opens a descriptor, and in the process only: a SignalServer
    # built inside tests leaves the test runner's limit alone.
    limit = raise_open_file_limit()
    server = SignalServer(options)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            parts = [f"http={server.public_url}"]
            parts += [f"stun={h}:{p}" for h, p in options.stun]
            if options.dns:
                parts.append(f"dns={options.dns[0]}:{options.dns[1]}")
            if options.metrics:
                parts.append(f"metrics={format_addr(options.metrics)}")
            print("signal-server: ready " + " ".join(parts), flush=True)
            # After the ready line, which callers wait for as the first one.
            print("signal-server: " + limit.describe(server.max_streams), file=sys.stderr,
                  flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    server.store.close()
    print("signal-server: stopped", file=sys.stderr, flush=True)
