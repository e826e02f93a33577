"""The signed node's own calls: join, its view and update, leave, punch, relay.

Every call here is signed by the node's Ed25519 key (:mod:`punchd.wire.signing`),
except the admin's look at the relay, which shares the relay's path.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from punchd.errors import Forbidden, Invalid, Unavailable
from punchd.wire import api

from .common import Call, Operation, json_response, no_content

JOIN = "/api/v1/join"
NODE = "/api/v1/node"
NODE_KEYS = "/api/v1/node/keys"
PUNCH = "/api/v1/punch"
RELAY = "/api/v1/relay"


def _joined(result: tuple[api.JoinResponse, bool]) -> tuple[str, ...]:
    joined, resumed = result
    return () if resumed else (joined.network.name,)  # a resumed join changed nothing


async def join(call: Call) -> Response:
    # The key is unknown until the join commits: its nonce is remembered inside it.
    assert call.signed is not None
    signed = call.signed
    req = await call.body(api.JoinRequest)
    joined, resumed = await call.service.write(_joined, call.service.store.join_or_resume, req,
                                               signed.key, None, (signed.nonce, signed.timestamp))
    resp = msgspec.structs.replace(joined, dns=call.service.dns, stun=call.service.stun)
    if not resumed:
        call.service.metrics.joins.inc()
    # A retry of a committed join: nothing changed, same answer.
    return json_response(resp, 200 if resumed else 201)


async def me(call: Call) -> Response:
    service = call.service
    node = await service.call(service.store.touch_node, call.signer)
    snap = await service.call(service.store.snapshot, node.network)
    # A node awaiting approval learns nothing of its peers.
    peers = tuple(p for p in snap.peers if p.id != node.id) if node.approved else ()
    return json_response(api.NetworkSnapshot(seq=snap.seq, network=snap.network, node=node,
                                             peers=peers, dns=service.dns, stun=service.stun))


def _its_network(node: api.Node) -> tuple[str]:
    return (node.network,)


async def update_me(call: Call) -> Response:
    req = await call.body(api.NodeUpdate)
    return json_response(await call.service.write(_its_network, call.service.store.update_node,
                                                  call.signer, req))


async def submit_keys(call: Call) -> Response:
    # Signed with the node's current key (node security), which is the proof the server
    # asks for: only that node could have asked for this node's keys to change.
    req = await call.body(api.KeyRotation)
    return json_response(await call.service.write(_its_network, call.service.store.submit_keys,
                                                  call.signer, req))


async def leave(call: Call) -> Response:
    service = call.service
    node = await service.call(service.store.node_by_signing_key, call.signer)
    await service.write(node.network, service.store.delete_node, node.network, node.name)
    return no_content()


async def _approved(call: Call) -> api.Node:
    node = await call.service.call(call.service.store.node_by_signing_key, call.signer)
    if not node.approved:
        raise Forbidden("this node awaits the admin's approval")
    return node


async def punch(call: Call) -> Response:
    req = await call.body(api.PunchCreate)
    node = await _approved(call)
    return json_response(await call.service.write(node.network, call.service.store.punch,
                                                  call.signer, req.peer), 202)


async def relay_status(call: Call) -> Response:
    if call.service.relay is None:
        raise Unavailable("this server has no relay")
    return json_response(call.service.relay.status())


async def relay(call: Call) -> Response:
    service = call.service
    req = await call.body(api.RelayCreate)
    node = await _approved(call)
    peer = await service.call(service.store.get_node, node.network, req.peer)
    if peer.id == node.id:
        raise Invalid("a node cannot relay to itself", "peer")
    if service.relay is None:
        raise Unavailable("this server has no relay (signal-server serve --relay "
                          "HOST:LOW-HIGH)")
    return json_response(await service.relay.allocate(node.network, node.id, peer.id))


OPERATIONS = [
    Operation("POST", JOIN, "join with an access key (signed by the new node key)", "joining",
              join, request=api.JoinRequest, response=api.JoinResponse, status=201),
    Operation("GET", NODE, "this node's view of its network", "node", me,
              response=api.NetworkSnapshot),
    Operation("PATCH", NODE, "update candidates / NAT report / key", "node", update_me,
              request=api.NodeUpdate, response=api.Node),
    Operation("DELETE", NODE, "leave", "node", leave, status=204),
    Operation("POST", NODE_KEYS, "this node's new public keys, when a rotation was asked",
              "node", submit_keys, request=api.KeyRotation, response=api.Node),
    Operation("POST", PUNCH, "rendezvous with a peer", "node", punch,
              request=api.PunchCreate, response=api.PunchRequest, status=202),
    Operation("GET", RELAY, "what the relay is doing", "admin", relay_status,
              response=dict[str, Any], unavailable=True),
    Operation("POST", RELAY, "this node's side of the relay allocation with a peer", "node",
              relay, request=api.RelayCreate, response=api.RelayAllocation, unavailable=True),
]
