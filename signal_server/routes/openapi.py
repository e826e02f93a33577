"""The OpenAPI 3.1 document, generated from the operations and their Structs.

The same :class:`~.common.Operation` list that becomes the Starlette routes becomes
the document, so every route is in it with its security scheme, and the schemas are
msgspec's own of the Structs the handlers decode and answer (the one schema).
Also the two routes that describe the server itself: health and this document.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, get_args, get_type_hints

import msgspec
from starlette.responses import Response

from punchd.wire import api

from .common import Call, Operation, Security, json_response

# The four headers of punchd.wire.signing, all required together on a node call.
_NODE_HEADERS = {"nodeKey": "x-punchd-node", "nodeTimestamp": "x-punchd-timestamp",
                 "nodeNonce": "x-punchd-nonce", "nodeSignature": "x-punchd-signature"}
_NODE_SECURITY: list[dict[str, list[str]]] = [{key: [] for key in _NODE_HEADERS}]
SECURITY: dict[Security, list[dict[str, list[str]]]] = {
    "admin": [{"adminBearer": []}], "node": _NODE_SECURITY, "joining": _NODE_SECURITY,
    "none": []}
# A path segment's schema: a record type is one of the Struct's; the rest are names.
_SEGMENTS: dict[str, dict[str, Any]] = {
    "rtype": {"enum": list(get_args(get_type_hints(api.DnsRecord)["rtype"]))}}
_SEGMENT = {"type": "string", "minLength": 1}


def openapi_document(operations: Sequence[Operation]) -> dict[str, Any]:
    """OpenAPI 3.1 for ``operations``, with the Structs' schemas as components."""
    types: list[Any] = [api.ErrorBody]
    for op in operations:
        types += [t for t in (op.request, op.response) if t is not None]
    schema_list, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(map(repr, types), schema_list, strict=True))

    def content(type_: Any, media: str = "application/json") -> dict[str, Any]:
        return {"content": {media: {"schema": schema_of[repr(type_)]}}}

    err = {"description": "refused: the reason, and the field when one is at fault",
           **content(api.ErrorBody)}
    paths: dict[str, Any] = {}
    for op in operations:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": _SEGMENTS.get(p, _SEGMENT)}
            for p in re.findall(r"\{(\w+)\}", op.path)]
        params += op.query
        ok: dict[str, Any] = {"description": op.summary}
        if op.response is not None:
            ok |= content(op.response, op.media)
        method = op.method.lower()
        doc: dict[str, Any] = {"summary": op.summary, "operationId": f"{method}{op.path}",
                               "security": SECURITY[op.security],
                               "responses": {str(op.status): ok, "4XX": err}}
        if op.unavailable:  # 503 when the server runs without the component
            doc["responses"]["5XX"] = err
        if params:
            doc["parameters"] = params
        if op.request is not None:
            doc["requestBody"] = {"required": True, **content(op.request)}
        paths.setdefault(op.path, {})[method] = doc
    schemes: dict[str, Any] = {
        "adminBearer": {"type": "http", "scheme": "bearer",
                        "description": "the server's admin token"},
        **{name: {"type": "apiKey", "in": "header", "name": header,
                  "description": "Ed25519 request signature (punchd.wire.signing)"}
           for name, header in _NODE_HEADERS.items()},
    }
    return {"openapi": "3.1.0", "info": {"title": "punchd signal server", "version": "1"},
            "paths": paths, "components": {"schemas": components, "securitySchemes": schemes}}


async def health(call: Call) -> Response:
    return json_response({"ok": True, "time": time.time()})


async def openapi(call: Call) -> Response:
    return json_response(openapi_document(call.ctx.operations))


OPERATIONS = [
    Operation("GET", "/api/v1/health", "liveness and server time", "none", health,
              response=dict[str, Any]),
    Operation("GET", "/api/v1/openapi.json", "this document", "none", openapi,
              response=dict[str, Any]),
]
