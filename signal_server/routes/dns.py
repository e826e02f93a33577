"""Admin: a network's custom DNS records (the node records follow the nodes)."""

from __future__ import annotations

from starlette.responses import Response

from punchd.wire import api

from ..store import Store
from .common import Call, Operation, json_response, network_read, no_content

RECORDS = "/api/v1/networks/{network}/dns"
RECORD = "/api/v1/networks/{network}/dns/{name}/{rtype}"


async def add_record(call: Call) -> Response:
    net = call.path("network")
    rec = await call.body(api.DnsRecord)
    return json_response(await call.service.write(net, call.service.store.add_dns_record,
                                                  net, rec), 201)


async def delete_record(call: Call) -> Response:
    net, p = call.path("network"), call.request.path_params
    await call.service.write(net, call.service.store.delete_dns_record, net, p["name"],
                             p["rtype"])
    return no_content()


OPERATIONS = [
    Operation("GET", RECORDS, "list custom DNS records", "admin",
              network_read(Store.list_dns_records), response=list[api.DnsRecord]),
    Operation("POST", RECORDS, "add a custom DNS record", "admin", add_record,
              request=api.DnsRecord, response=api.DnsRecord, status=201),
    Operation("DELETE", RECORD, "delete a custom DNS record", "admin", delete_record,
              status=204),
]
