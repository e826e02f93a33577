"""meshdns against NSD: queries per second with dnsperf, side by side, alternating rounds.

Both serve the same zones on loopback. Each server is pinned to CPU 0 and dnsperf to
CPU 1 (taskset), 50 queries in flight; rounds alternate meshdns, NSD, meshdns, NSD …
so drift on this shared machine hits both alike. Reports qps, mean latency and lost
queries per round, the medians, and the ratio meshdns ÷ NSD. RRL is off in both for
the run (one source sending 100k qps is exactly what it exists to stop; left on, it
drops queries, dnsperf's 50 slots wait out its 5 s timeout and the run measures RRL).

    python -m bench.dns_qps [--rounds 3] [--seconds 5] [--out bench/results/dns.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import reap
from tests.test_meshdns_vs_nsd import start_meshdns, start_nsd

QUERIES = [
    "alpha.office.mesh A", "beta.office.mesh A", "alpha.office.mesh AAAA", "www.office.mesh A",
    "docs.office.mesh A", "nobody.office.mesh A", "office.mesh TXT", "beta.office.mesh AAAA",
]


def dnsperf(port: int, datafile: Path, seconds: float) -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                          "-d", str(datafile), "-l", str(seconds), "-q", "50", "-c", "1"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    return {"qps": number(r"Queries per second:\s+([\d.]+)"),
            "sent": number(r"Queries sent:\s+(\d+)"),
            "lost": number(r"Queries lost:\s+(\d+)"),
            "latency_ms": 1000 * number(r"Average Latency \(s\):\s+([\d.]+)")}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dns.json"))
    args = parser.parse_args()
    for tool in ("dnsperf", "nsd", "taskset"):
        if shutil.which(tool) is None:
            print(f"dns_qps: {tool} is not installed (scripts/setup installs it)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="dnsqps-"))
    datafile = work / "queries.txt"
    datafile.write_text("\n".join(QUERIES * 1000) + "\n")
    nsd, nsd_port = start_nsd(work, rrl=False, pin="0")  # returns once NSD answers
    procs = [nsd]
    try:
        meshdns, mesh_port = start_meshdns("--no-rrl", pin="0")
        procs.append(meshdns)
        rounds: dict[str, list[dict[str, float]]] = {"meshdns": [], "nsd": []}
        for _ in range(args.rounds):
            for name, port in (("meshdns", mesh_port), ("nsd", nsd_port)):
                rounds[name].append(dnsperf(port, datafile, args.seconds))
        med = {name: statistics.median(r["qps"] for r in rs) for name, rs in rounds.items()}
        result = {"rounds": rounds, "median_qps": med, "ratio": med["meshdns"] / med["nsd"],
                  "lost": {n: sum(r["lost"] for r in rs) for n, rs in rounds.items()},
                  "seconds_per_round": args.seconds, "in_flight": 50}
    finally:
        for p in procs:
            reap(p)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("meshdns", "nsd"):
        lat = statistics.median(r["latency_ms"] for r in rounds[name])
        print(f"{name:8} median {med[name]:>9.0f} qps, latency {lat:.2f} ms, "
              f"lost {result['lost'][name]:.0f}")
    print(f"meshdns / NSD = {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
