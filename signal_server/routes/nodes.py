"""Admin: a network's nodes (list, inspect, expire, approve, remove)."""

from __future__ import annotations

from starlette.responses import Response

from punchd.wire import api

from ..store import Store
from .common import Call, Operation, json_response, network_read, no_content

NODES = "/api/v1/networks/{network}/nodes"
NODE = "/api/v1/networks/{network}/nodes/{node}"
APPROVE = "/api/v1/networks/{network}/nodes/{node}/approve"
ROTATE = "/api/v1/networks/{network}/nodes/{node}/rotate-key"


async def get_node(call: Call) -> Response:
    return json_response(await call.service.call(call.service.store.get_node,
                                                 call.path("network"), call.path("node")))


async def update_node(call: Call) -> Response:
    net, name = call.path("network"), call.path("node")
    req = await call.body(api.NodeAdminUpdate)
    return json_response(await call.service.write(net, call.service.store.admin_update_node,
                                                  net, name, req))


async def delete_node(call: Call) -> Response:
    net, name = call.path("network"), call.path("node")
    await call.service.write(net, call.service.store.delete_node, net, name)
    return no_content()


async def approve_node(call: Call) -> Response:
    net, name = call.path("network"), call.path("node")
    return json_response(await call.service.write(net, call.service.store.approve_node,
                                                  net, name))


async def rotate_key(call: Call) -> Response:
    net, name = call.path("network"), call.path("node")
    asked = await call.service.write(net, call.service.store.request_rotation, net, name)
    return json_response(asked[0], 202)


OPERATIONS = [
    Operation("GET", NODES, "list nodes", "admin", network_read(Store.list_nodes),
              response=list[api.Node]),
    Operation("GET", NODE, "one node", "admin", get_node, response=api.Node),
    Operation("PATCH", NODE, "change the node's settings, address, name or expiry", "admin",
              update_node, request=api.NodeAdminUpdate, response=api.Node),
    Operation("DELETE", NODE, "remove a node", "admin", delete_node, status=204),
    Operation("POST", APPROVE, "approve a waiting node", "admin", approve_node,
              response=api.Node),
    Operation("POST", ROTATE, "ask the node for new WireGuard and probe keys", "admin",
              rotate_key, response=api.Node, status=202),
]
