"""Relay capacity: UDP through the relay alone, in-kernel (nftables) vs userspace.

In the lab, two hosts on routed sites (no NAT, so the relay is what is measured) get
an allocation from the real relay service running in the server's namespace, bind
their sides with the real bind codec from the ports iperf2 will use, and then iperf2
in UDP mode (no TCP control channel, which the relay would not carry) sends 1400-byte
datagrams as fast as it can from one host through the relay to the other. Rounds
alternate nft, userspace, nft, … so drift on this shared machine hits both alike.
Reported per mode: datagrams/s offered (sent) and delivered, loss, and the ratio of
delivered rates nft ÷ userspace (medians over rounds).

    python -m bench relay [--rounds 3] [--seconds 5] [--out bench/results/relay.json]

The module is also the helper the benchmark runs inside the lab's namespaces:
``serve`` (the relay service with one allocation, printed as JSON) and ``bind``
(one bind from a given local port).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from punchd.wire.addr import parse_addr

PAYLOAD = 1400
SERVER_PORT = 5001  # iperf2 server on host B (B's bound endpoint)
CLIENT_PORT = 45001  # iperf2 client source port on host A (A's bound endpoint)
RELAY_PORTS = (42000, 42099)


# -- helpers run inside the lab ------------------------------------------------------------

def serve(mode: str, address: str) -> int:
    import logging

    import trio

    logging.basicConfig(level=logging.INFO, stream=sys.stdout)

    from signal_server.relay import RelayPool, RelayService

    async def main() -> None:
        service = RelayService([RelayPool(address, *RELAY_PORTS)], mode,  # type: ignore[arg-type]
                               idle_timeout=3600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            a = await service.allocate("bench", "a", "b")
            b = await service.allocate("bench", "b", "a")
            print(json.dumps({"forwarder": service.forwarder.kind, "a": _side(a), "b": _side(b)}),
                  flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                nursery.start_soon(_report, service)
                async for _ in signals:  # stop cleanly: the forwarder removes its rules
                    nursery.cancel_scope.cancel()
                    break

    async def _report(service: RelayService) -> None:
        while True:
            await trio.sleep(0.5)
            print(json.dumps({"stats": service.stats.__dict__}), flush=True)

    trio.run(main)
    return 0


def _side(alloc: Any) -> dict[str, Any]:
    return {"id": alloc.id, "side": alloc.side, "relay": alloc.relay, "secret": alloc.secret}


def bind(local: str, relay: str, alloc_id: str, side: int, secret: str) -> int:
    from punchd.wire import relay as wire

    host, port = parse_addr(local)
    rhost, rport = parse_addr(relay)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.settimeout(0.5)
        for _ in range(6):
            data, _txid = wire.bind_request(alloc_id, side, bytes.fromhex(secret),
                                            int(time.time() * 1000))
            sock.sendto(data, (rhost, rport))
            try:
                answer, _ = sock.recvfrom(2048)
            except TimeoutError:
                continue
            print(wire.parse_bind_success(answer, bytes.fromhex(secret))[1])
            return 0
    print("no answer to the bind", file=sys.stderr)
    return 1


# -- the benchmark -----------------------------------------------------------------------------

def one_round(lab: Any, mode: str, seconds: float, rate: str, index: int) -> dict[str, Any]:
    from netns_tests.lab.mesh import wait_for_log

    host_a, host_b = lab.sites["a"].hosts[0], lab.sites["b"].hosts[0]
    # One log per round: the allocation printed at start is this round's.
    relay = lab.server.spawn([sys.executable, "-m", "bench.relay_capacity", "serve", mode,
                              lab.server.ip], name=f"relay-{mode}-{index}")
    try:
        wait_for_log(relay, '"forwarder"', timeout=20)
        alloc = json.loads(next(line for line in relay.read_log().splitlines()
                                if '"forwarder"' in line))
        for host, side, port in ((host_a, alloc["a"], CLIENT_PORT), (host_b, alloc["b"],
                                                                      SERVER_PORT)):
            res = host.run([sys.executable, "-m", "bench.relay_capacity", "bind",
                            f"{host.ip}:{port}", side["relay"], side["id"], str(side["side"]),
                            side["secret"]], check=False)
            if res.returncode != 0:
                raise RuntimeError(f"bind from {host.name} failed: {res.stderr.strip()}\n"
                                   f"{relay.read_log()[-2000:]}")
        # A large receive buffer: the receiving iperf2 must not be what drops datagrams.
        server = host_b.spawn(["iperf", "-s", "-u", "-p", str(SERVER_PORT), "-l", str(PAYLOAD),
                               "-w", "8M", "-y", "C"], name=f"iperf-s-{mode}-{index}")
        time.sleep(0.3)
        rhost, rport = parse_addr(alloc["a"]["relay"])
        client = host_a.run(["iperf", "-c", rhost, "-p", str(rport), "-u", "-l", str(PAYLOAD),
                             "-b", rate, "-t", str(seconds), "-B", f"{host_a.ip}:{CLIENT_PORT}",
                             "-y", "C"], check=False, timeout=seconds + 30)
        time.sleep(0.5)
        server.stop()
        report = _server_report(server.read_log())
        sent = _client_datagrams(client.stdout, seconds)
        stats = [json.loads(line)["stats"] for line in relay.read_log().splitlines()
                 if '"stats"' in line]
        return {"mode": alloc["forwarder"], "offered_pps": sent / seconds,
                "delivered_pps": report["received"] / seconds,
                "loss": 1 - report["received"] / sent if sent else 1.0,
                "lost_reported": report["lost"], "sent": sent,
                "userspace_forwarded": stats[-1]["forwarded_userspace"] if stats else None}
    finally:
        relay.stop()


def _server_report(csv_text: str) -> dict[str, int]:
    """iperf2 -y C server line: ...,jitter,lost,total,pct,... -> received datagrams."""
    rows = [line.split(",") for line in csv_text.splitlines() if line.count(",") >= 12]
    if not rows:
        return {"received": 0, "lost": 0}
    row = rows[-1]
    lost, total = int(row[10]), int(row[11])
    return {"received": total - lost, "lost": lost}


def _client_datagrams(csv_text: str, seconds: float) -> int:
    """Datagrams the client sent: bytes of its summary line / payload size."""
    rows = [line.split(",") for line in csv_text.splitlines() if line.count(",") >= 8]
    if not rows:
        return 0
    return int(rows[0][7]) // PAYLOAD


def run(rounds: int, seconds: float, rate: str, out: Path) -> dict[str, Any]:
    from netns_tests.lab import Lab

    results: dict[str, list[dict[str, Any]]] = {"nft": [], "userspace": []}
    with Lab() as lab:
        lab.add_site("a", nat="none")
        lab.add_site("b", nat="none")
        for index in range(rounds):
            for mode in ("nft", "userspace"):
                result = one_round(lab, mode, seconds, rate, index)
                results[mode].append(result)
                print(f"  {mode:9} offered {result['offered_pps']:>8.0f} pkt/s, delivered "
                      f"{result['delivered_pps']:>8.0f} pkt/s, loss {100 * result['loss']:.1f}%",
                      flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("offered_pps", "delivered_pps",
                                                                 "loss")}
           for m, rs in results.items()}
    summary = {"rounds": results, "median": med, "payload": PAYLOAD, "seconds": seconds,
               "rate": rate,
               "delivered_ratio_nft_over_userspace":
                   med["nft"]["delivered_pps"] / max(med["userspace"]["delivered_pps"], 1.0)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2], sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "bind":
        return bind(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", default="2000M", help="iperf2 -b: offer as much as the lab can")
    parser.add_argument("--out", type=Path, default=Path("bench/results/relay.json"))
    args = parser.parse_args()
    summary = run(args.rounds, args.seconds, args.rate, args.out)
    for mode in ("nft", "userspace"):
        m = summary["median"][mode]
        print(f"{mode:9} median offered {m['offered_pps']:>8.0f} pkt/s, delivered "
              f"{m['delivered_pps']:>8.0f} pkt/s, loss {100 * m['loss']:.1f}%")
    print(f"in-kernel / userspace delivered = {summary['delivered_ratio_nft_over_userspace']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
