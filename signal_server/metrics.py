"""The server's Prometheus metrics: a few counters for events, the rest read at scrape time.

Each :class:`Service` owns one :class:`ServerMetrics` with its own registry (never
prometheus_client's global one), so several servers in one test process keep their
numbers apart. Counted as they happen: joins and the request latency histogram
(labels: method and route *template*, never the raw path, which a caller chooses).
Read when scraped, so they cannot drift from the truth: nodes by state and events
published (the store), open streams (the hub), and the STUN, DNS and relay counters
their services already keep (their ``statistics()``).

A scrape renders in the store's worker thread (:meth:`ServerMetrics.scrape`), where
store reads may run; what the trio thread owns (the hub) is read before, in it. The
list, with what each means, is docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# No ``*_created`` series beside every counter: a second series per counter that no
# dashboard reads (a library-wide switch, so punchd's module sets it too).
disable_created_metrics()  # type: ignore[no-untyped-call]
NODE_STATES = ("approved", "pending")


class HasStatistics(Protocol):
    """A STUN responder or DNS server: its counters as a dataclass of ints."""

    def statistics(self) -> Any: ...


@dataclass(frozen=True)
class HubFacts:
    """The hub's numbers, read in the trio thread that changes them."""

    streams: int
    streams_limit: int | None
    connected_nodes: int


class ServerMetrics:
    """One server's registry: the event counters, and the collector of everything else."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.joins = Counter("signal_server_joins", "nodes that joined (a retried join "
                             "is not counted again)", registry=self.registry)
        self.requests = Histogram("signal_server_request_duration_seconds",
                                  "time to answer an API request (to the first byte of "
                                  "an event stream)", ["method", "route"],
                                  registry=self.registry)
        self.responses = Counter("signal_server_responses", "API answers by status",
                                 ["method", "route", "code"], registry=self.registry)
        # Set by the server when it runs the service; None: not run here.
        self.stun: HasStatistics | None = None
        self.dns: HasStatistics | None = None
        self._state = _StateCollector(service, self)
        self.registry.register(self._state)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route).observe(seconds)
        self.responses.labels(method, route, str(status)).inc()

    async def scrape(self) -> bytes:
        """The text format of every metric, as of now."""
        hub = self.service.hub
        facts = HubFacts(hub.streams_held, hub.max_streams, hub.connected_nodes)
        return await self.service.call(self._render, facts)

    def _render(self, facts: HubFacts) -> bytes:
        # In the store thread, one scrape at a time (the service's limiter).
        self._state.hub = facts
        return generate_latest(self.registry)


def _counters(prefix: str, doc: str, stats: Any, rename: dict[str, str] | None = None
              ) -> list[Metric]:
    """One counter per field of a statistics dataclass: ``{prefix}_{field}_total``."""
    names = rename or {}
    return [CounterMetricFamily(f"{prefix}_{names.get(f.name, f.name)}",
                                f"{doc}: {f.name.replace('_', ' ')}",
                                value=float(getattr(stats, f.name)))
            for f in dataclasses.fields(stats)]


class _StateCollector(Collector):
    def __init__(self, service: Service, metrics: ServerMetrics) -> None:
        self.service = service
        self.metrics = metrics
        self.hub = HubFacts(0, None, 0)

    def collect(self) -> Iterable[Metric]:
        store = self.service.store
        nodes = GaugeMetricFamily("signal_server_nodes", "nodes by network and state "
                                  "(pending: awaiting the admin's approval)",
                                  labels=["network", "state"])
        for net in store.list_networks():
            members = store.list_nodes(net.name)
            approved = sum(n.approved for n in members)
            nodes.add_metric([net.name, "approved"], float(approved))
            nodes.add_metric([net.name, "pending"], float(len(members) - approved))
        yield nodes
        yield CounterMetricFamily("signal_server_events_published", "events appended to "
                                  "the networks' event logs (the store's log: every "
                                  "replica of one database reports the same)",
                                  value=float(store.last_seq()))
        yield GaugeMetricFamily("signal_server_event_streams", "event streams open on "
                                "this server", value=float(self.hub.streams))
        if self.hub.streams_limit is not None:
            yield GaugeMetricFamily("signal_server_event_streams_limit", "event streams "
                                    "this server holds at most (from the open-file limit)",
                                    value=float(self.hub.streams_limit))
        yield GaugeMetricFamily("signal_server_nodes_connected", "nodes with an event "
                                "stream open on this server",
                                value=float(self.hub.connected_nodes))
        if self.metrics.stun is not None:
            yield from _counters("signal_server_stun", "STUN datagrams",
                                 self.metrics.stun.statistics())
        if self.metrics.dns is not None:
            yield from _counters("signal_server_dns", "mesh DNS", self.metrics.dns.statistics())
        relay = self.service.relay
        if relay is not None:
            yield from _counters("signal_server_relay", "relay", relay.stats,
                                 {"forwarded_userspace": "forwarded_userspace_datagrams",
                                  "dropped": "dropped_datagrams"})
            yield GaugeMetricFamily("signal_server_relay_allocations_open",
                                    "relay allocations held now",
                                    value=float(len(relay.table.allocations)))
