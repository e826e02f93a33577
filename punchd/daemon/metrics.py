"""punchd's Prometheus metrics: per-peer facts, read from the status at scrape time.

Nothing is counted here: :func:`families` turns the same :class:`NetworkStatus`
values ``punchctl status`` shows into metric families, so the metrics say what
status says (byte counters are WireGuard's own, punch attempts the session's). Labels
are ``network`` and ``peer`` (names the admin chose, a handful per node), and ``kind``
for the path. The list, with what each means, is docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .paths import PathKind
from .status import NetworkStatus

PATH_KINDS: tuple[str, ...] = get_args(PathKind)
# No ``*_created`` series beside every counter (a library-wide switch).
disable_created_metrics()  # type: ignore[no-untyped-call]
PEER = ["network", "peer"]
# punchd_peer_punch_probes_{name}_total: the PunchStatus field it reads.
PROBE_FIELDS = {"sent": "probes_sent", "received": "probes_received",
                "rejected": "rejected", "replayed": "replays"}


def families(networks: Sequence[NetworkStatus], *, broken: int = 0) -> list[Metric]:
    """The metric families of these networks' statuses; ``broken``: networks not running."""
    up = GaugeMetricFamily("punchd_network_up", "1 when the network's WireGuard interface "
                           "is up", labels=["network", "interface"])
    server = GaugeMetricFamily("punchd_network_server_connected",
                               "1 while the event stream from the signal server is open",
                               labels=["network"])
    peers = GaugeMetricFamily("punchd_network_peers", "peers the server lists",
                              labels=["network"])
    path = GaugeMetricFamily("punchd_peer_path", "1 for the path kind the peer's traffic "
                             "takes now (direct, relay, none), 0 for the others",
                             labels=[*PEER, "kind"])
    rtt = GaugeMetricFamily("punchd_peer_rtt_seconds", "round-trip time of the chosen path",
                            labels=PEER)
    handshake = GaugeMetricFamily("punchd_peer_last_handshake_age_seconds",
                                  "seconds since WireGuard's last handshake with the peer",
                                  labels=PEER)
    rx = CounterMetricFamily("punchd_peer_receive_bytes", "bytes WireGuard received from "
                             "the peer", labels=PEER)
    tx = CounterMetricFamily("punchd_peer_transmit_bytes", "bytes WireGuard sent to the peer",
                             labels=PEER)
    attempts = CounterMetricFamily("punchd_peer_punch_attempts", "hole-punch attempts of "
                                   "the peer's current punch session", labels=PEER)
    probes = {field: CounterMetricFamily(f"punchd_peer_punch_probes_{field}", f"punch probes "
                                         f"{field} in the peer's current punch session",
                                         labels=PEER)
              for field in PROBE_FIELDS}
    failed = GaugeMetricFamily("punchd_peer_punch_failed", "1 when the last punch found no "
                               "direct path", labels=PEER)
    relay = GaugeMetricFamily("punchd_peer_relay_allocated", "1 while this node holds a "
                              "relay allocation for the peer", labels=PEER)
    for net in networks:
        up.add_metric([net.name, net.interface], float(net.interface_up))
        server.add_metric([net.name], float(net.server_connected))
        peers.add_metric([net.name], float(len(net.peers)))
        for p in net.peers:
            labels = [net.name, p.name]
            for kind in PATH_KINDS:
                path.add_metric([*labels, kind], float(p.path == kind))
            if p.rtt_ms is not None:
                rtt.add_metric(labels, p.rtt_ms / 1000)
            if p.last_handshake_age_s is not None:
                handshake.add_metric(labels, p.last_handshake_age_s)
            rx.add_metric(labels, float(p.rx_bytes))
            tx.add_metric(labels, float(p.tx_bytes))
            if p.punch is not None:
                attempts.add_metric(labels, float(p.punch.attempts))
                for field, family in probes.items():
                    family.add_metric(labels, float(getattr(p.punch, PROBE_FIELDS[field])))
                failed.add_metric(labels, float(p.punch.failure is not None))
            relay.add_metric(labels, float(p.relay is not None and p.relay.endpoint is not None))
    broken_family = GaugeMetricFamily("punchd_networks_broken", "joined networks whose "
                                      "config or keys do not load (punchctl list says why)",
                                      value=float(broken))
    return [up, server, peers, path, rtt, handshake, rx, tx, attempts, *probes.values(), failed,
            relay, broken_family]


class _Families(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def exposition(metrics: Iterable[Metric]) -> bytes:
    """The Prometheus text format of ``metrics`` (a registry of this scrape alone)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))
    return generate_latest(registry)
