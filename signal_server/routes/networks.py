"""Admin: networks (``/networks``, ``/networks/{network}``)."""

from __future__ import annotations

from starlette.responses import Response

from punchd.wire import api

from ..store import Store
from .common import Call, Operation, json_response, network_read, no_content

NETWORKS = "/api/v1/networks"
NETWORK = "/api/v1/networks/{network}"
ROTATE = "/api/v1/networks/{network}/rotate-keys"


async def list_networks(call: Call) -> Response:
    return json_response(await call.service.call(call.service.store.list_networks))


async def create_network(call: Call) -> Response:
    req = await call.body(api.NetworkCreate)
    return json_response(await call.service.write(req.name, call.service.store.create_network,
                                                  req), 201)


async def update_network(call: Call) -> Response:
    name = call.path("network")
    req = await call.body(api.NetworkUpdate)
    return json_response(await call.service.write(name, call.service.store.update_network,
                                                  name, req))


async def delete_network(call: Call) -> Response:
    name = call.path("network")
    await call.service.write(name, call.service.store.delete_network, name)
    return no_content()


async def rotate_keys(call: Call) -> Response:
    name = call.path("network")
    return json_response(await call.service.write(name, call.service.store.request_rotation,
                                                  name), 202)


OPERATIONS = [
    Operation("GET", NETWORKS, "list networks", "admin", list_networks,
              response=list[api.Network]),
    Operation("POST", NETWORKS, "create a network", "admin", create_network,
              request=api.NetworkCreate, response=api.Network, status=201),
    Operation("GET", NETWORK, "one network", "admin", network_read(Store.get_network),
              response=api.Network),
    Operation("PATCH", NETWORK, "update, renumber", "admin", update_network,
              request=api.NetworkUpdate, response=api.Network),
    Operation("DELETE", NETWORK, "delete a network and its nodes", "admin", delete_network,
              status=204),
    Operation("POST", ROTATE, "ask every node for new WireGuard and probe keys (after a "
              "compromise)", "admin", rotate_keys, response=list[api.Node], status=202),
]
