"""The one exception tree for the whole project.

Every error the project raises on purpose derives from :class:`PunchdError`.
Errors from libraries are translated at the boundary with ``raise ... from exc``
(``OSError``/``NetlinkError`` -> :class:`WireGuardError`, ``httpx.HTTPError`` ->
:class:`ServerUnreachable`, ``msgspec.ValidationError`` -> :class:`ConfigError` or a
codec error), so callers catch ours and never a library's::

    PunchdError
    ├── CodecError                 untrusted bytes that do not parse
    │   ├── StunParseError
    │   │   └── RelayBindError     a relay bind that does not authenticate
    │   ├── ProbeParseError
    │   ├── PortmapParseError      a NAT-PMP/PCP datagram, SSDP answer or UPnP XML that does not parse
    │   ├── TokenError             a join token that does not decode
    │   ├── AddrError              an endpoint that is not ip:port ([v6]:port)
    │   ├── EventNoticeError       a replica's event notice (PostgreSQL NOTIFY payload) that does not parse
    │   ├── HttpRequestError       a request head on a metrics listener that does not parse
    │   └── TsigError              a DNS message whose TSIG (RFC 8945) is malformed or does not verify
    ├── ConfigError                bad configuration or state files; names the field
    ├── WireGuardError             a WireGuard backend failed
    │   └── BackendUnavailable     the chosen backend cannot run on this machine
    ├── SharedPortError            the raw sockets on WireGuard's port would not open
    ├── ServerError                talking to the signal server
    │   ├── ServerUnreachable      transport-level failure (retry with backoff)
    │   └── APIError               the server answered 4xx/5xx with a reason
    ├── ControlError               punchctl <-> punchd control socket
    ├── CliError                   a user-facing failure of the admin CLI
    ├── RelayError                 the relay cannot start or program its forwarding
    ├── StunServerError            the STUN responder cannot start
    ├── NetworkDown                the host cannot send or receive now (link/address gone)
    ├── PortmapError               the gateway would not map a port (refused, no answer, fault)
    └── ServiceError               the signal server's own domain errors
        ├── NotFound               (API: 404)
        ├── Conflict               (API: 409)
        │   └── DuplicateRow       the store's UNIQUE constraint refused a row
        ├── Invalid                (API: 400/422, names the field)
        ├── Unauthorized           (API: 401)
        │   └── Forbidden          (API: 403: a known caller not allowed this, e.g. pending)
        ├── TooMany                (API: 429)
        └── Unavailable            (API: 503)
            ├── StoreUnavailable   the store's database cannot be reached now
            ├── TooManyStreams     the server holds all the event streams its open-file limit allows
            └── DistUnavailable    no wheelhouse for install.sh (none given, or its build failed)

This is the whole tree: every class is defined in this module.
"""

from __future__ import annotations


class PunchdError(Exception):
    """Root of every error punchd, the signal server and meshdns raise on purpose."""


class CodecError(PunchdError, ValueError):
    """Untrusted bytes that do not parse. Codecs raise only this family."""


class StunParseError(CodecError):
    """A datagram that is not a well-formed STUN message."""


class RelayBindError(StunParseError):
    """A datagram that is not an authentic relay bind (or bind answer)."""


class ProbeParseError(CodecError):
    """A datagram that is not a well-formed, authentic punch probe."""


class PortmapParseError(CodecError):
    """A NAT-PMP or PCP datagram, an SSDP answer or a UPnP document that does not parse."""


class TokenError(CodecError):
    """A join token that does not decode."""


class AddrError(CodecError):
    """An endpoint (``ip:port``, ``[v6]:port``) that does not parse; names the text."""


class EventNoticeError(CodecError):
    """A NOTIFY payload on the replicas' event channel that is not ``origin/network/seq``."""


class HttpRequestError(CodecError):
    """A request head on a ``--metrics`` listener that is not ``METHOD target HTTP/1.x``."""


class TsigError(CodecError):
    """A TSIG-signed DNS message that does not verify. ``error`` is the RFC 8945 §4.3
    TSIG error code to answer with (BADSIG 16, BADKEY 17, BADTIME 18), or 0 when the
    message is malformed (answered FORMERR)."""

    def __init__(self, message: str, error: int = 0) -> None:
        super().__init__(message)
        self.error = error


class ConfigError(PunchdError):
    """Bad configuration or state; the message names the field."""


class WireGuardError(PunchdError):
    """A WireGuard backend operation failed."""


class BackendUnavailable(WireGuardError):
    """The requested WireGuard backend cannot run on this machine."""


class SharedPortError(PunchdError):
    """The raw sockets for the WireGuard port could not be opened (needs CAP_NET_RAW)."""


class ServerError(PunchdError):
    """Talking to the signal server failed."""


class ServerUnreachable(ServerError):
    """The signal server could not be reached (transport failure)."""


class APIError(ServerError):
    """The signal server refused a request; carries the HTTP status and reason."""

    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(f"{status}: {reason}" + (f" (field {field!r})" if field else ""))
        self.status = status
        self.reason = reason
        self.field = field


class ControlError(PunchdError):
    """A punchctl request to the daemon failed; the message is one user-facing line."""


class CliError(PunchdError):
    """A user-facing failure of the admin CLI."""


class RelayError(PunchdError):
    """The relay cannot start or program its forwarding."""


class StunServerError(PunchdError):
    """The responder cannot start: a bad address pair, or a socket that will not bind."""


class NetworkDown(PunchdError):
    """A socket operation failed because of the host's network, not ours: the link or
    address went away (ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ENETDOWN, ENOBUFS...).
    Weather, not a bug: log it, retry with backoff, recover when the link returns."""


class PortmapError(PunchdError):
    """No port mapping: the gateway refused, faulted or did not answer (names which)."""


class ServiceError(PunchdError):
    """A domain error inside the signal server, mapped to an HTTP status."""

    status = 400

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Invalid(ServiceError):
    status = 422


class Unauthorized(ServiceError):
    status = 401


class Forbidden(Unauthorized):
    """The caller is who it says, but may not do this (e.g. a node awaiting approval)."""

    status = 403


class TooMany(ServiceError):
    status = 429


class Unavailable(ServiceError):
    status = 503


class DistUnavailable(Unavailable):
    """The server has no wheelhouse for ``/dist/``: none was given and building one
    failed (a dependency not installed from a wheel, pip wheel failed)."""


class DuplicateRow(Conflict):
    """A row a UNIQUE or PRIMARY KEY constraint of the store refused. The store's
    rules refuse such requests first, with a better reason; this is the backstop."""


class StoreUnavailable(Unavailable):
    """The store's database is unreachable or has no free connection: retry later."""


class TooManyStreams(Unavailable):
    """A new event stream would take descriptors the server keeps for everything else
    (``signal_server.limits``): refused before the server runs out, retried later."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many open streams on this server (limit {limit})")
        self.limit = limit


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (trio's strict) ExceptionGroups, flattened, so a program's
    top level can report the one that matters as one line."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def main_error(exc: BaseException) -> BaseException:
    """The error a top level reports: KeyboardInterrupt first, then ours, then any."""
    leaves = leaf_errors(exc)
    for kind in (KeyboardInterrupt, PunchdError, OSError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]
