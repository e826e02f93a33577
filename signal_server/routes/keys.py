"""Admin: a network's access keys and the join tokens that wrap them."""

from __future__ import annotations

from starlette.responses import Response

from punchd.wire import api
from punchd.wire.token import encode_token

from ..store import Store
from .common import Call, Operation, json_response, network_read, no_content

KEYS = "/api/v1/networks/{network}/keys"
KEY = "/api/v1/networks/{network}/keys/{key}"


async def create_key(call: Call) -> Response:
    name = call.path("network")
    req = await call.body(api.AccessKeyCreate)
    # No member sees an access key: the write announces it to the hooks alone.
    key, secret = await call.service.write(None, call.service.store.create_access_key, name, req)
    token = encode_token(call.service.public_url, name, secret)
    return json_response(api.AccessKeyCreated(key=key, token=token), 201)


async def delete_key(call: Call) -> Response:
    await call.service.write(None, call.service.store.delete_access_key, call.path("network"),
                             call.request.path_params["key"])
    return no_content()


OPERATIONS = [
    Operation("GET", KEYS, "list access keys (no secrets)", "admin",
              network_read(Store.list_access_keys), response=list[api.AccessKey]),
    Operation("POST", KEYS, "create an access key and its join token", "admin", create_key,
              request=api.AccessKeyCreate, response=api.AccessKeyCreated, status=201),
    Operation("DELETE", KEY, "revoke an access key", "admin", delete_key, status=204),
]
