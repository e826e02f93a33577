"""The HTTP API (``/api/v1``): Starlette routes over the store, run by hypercorn's trio worker.

Admin calls carry ``Authorization: Bearer <admin token>``; node calls are signed with
the node's Ed25519 key (:mod:`punchd.wire.signing`). Every body is decoded into the
Structs of :mod:`punchd.wire.api`; a bad request gets a 4xx ``{"error", "field"}`` and
changes nothing. Store calls run one at a time in a worker thread (SQLite is
blocking; one writer also keeps access-key use counts exact).

The handlers live by resource in :mod:`signal_server.routes`; this module puts their
operations together into the app and the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from .dist import Wheelhouse
from .routes import dns, events, install, keys, metrics, networks, node, nodes, openapi
from .routes.common import BodyLimit, Context, Operation, endpoint
from .routes.openapi import openapi_document
from .service import Service

# Every operation the server answers, in route order; both the routes and the OpenAPI
# document are made from this list.
OPERATIONS: list[Operation] = [
    *openapi.OPERATIONS, *networks.OPERATIONS, *keys.OPERATIONS, *nodes.OPERATIONS,
    *dns.OPERATIONS, *node.OPERATIONS, *events.OPERATIONS, *metrics.OPERATIONS,
    *install.OPERATIONS,
]


def build_app(service: Service, admin_token: str, *, dist: Wheelhouse | None = None
              ) -> Starlette:
    """``dist``: the wheelhouse ``/dist/`` serves (None: it answers 503)."""
    ctx = Context(service, admin_token, OPERATIONS, dist)
    by_path: dict[str, list[Operation]] = {}
    for op in OPERATIONS:
        by_path.setdefault(op.path, []).append(op)
    routes = [Route(path, endpoint(ops, ctx), methods=[op.method for op in ops])
              for path, ops in by_path.items()]
    return Starlette(routes=routes, middleware=[Middleware(BodyLimit)])


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document of every route :func:`build_app` serves."""
    return openapi_document(OPERATIONS)
