"""The data plane: iperf3 TCP throughput and ping RTT over each contender's tunnel,
direct and relayed, contenders interleaved A B A B so drift hits all alike.

Scenarios (one lab holds all their sites):
- ``direct``: prc/prc, where punchd and Nebula can punch;
- ``relay``: sym/sym, where neither can, so punchd and Nebula relay through the
  server host, and the relay mesh (which always relays) joins them;
- ``ceiling``: wireguard-go with static endpoints between two public hosts.

Per sample: start the contender, wait (bounded) until its path is the scenario's,
20 pings at 20/s, then iperf3 TCP A -> B for a few seconds; where the packets went
is confirmed on site A's WAN side during the pings. For punchd, its daemon's CPU time
and peak RSS on node A during the iperf3 run (and wireguard-go's CPU, apart).

    python -m bench.dataplane [--quick] [--rounds 5] [--seconds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from netns_tests.lab import Lab, Site

from . import report
from .common import add_site, lab_log_dir, machine_info
from .contenders import Contender, Handle, all_contenders
from .contenders.punchd import PunchdHandle
from .labtools import cpu_seconds, pids_named, ping_rtt, rss_mb, wan_path_during

SCENARIOS = [("direct", "prc", "prc"), ("relay", "sym", "sym"), ("ceiling", "none", "none")]
IPERF_PORT = 5201
IPERF_OMIT_S = 1
ROUNDS = 5  # medians of 5 keep two runs' relayed ÷ direct ratios within 15% here


def wait_for_path(handle: Handle, want: str, timeout: float) -> str:
    """Poll the contender's own path (with traffic flowing) until ``want`` or timeout."""
    steady = handle.host_a.spawn(["ping", "-n", "-q", "-i", "0.1", "-W", "1",
                                  "-w", str(int(timeout) + 2), handle.mesh_ip_b],
                                 name="dp-steadyping")
    try:
        deadline = time.monotonic() + timeout
        path = "none"
        while time.monotonic() < deadline:
            path = handle.reported_path()
            if path == want:
                break
            time.sleep(0.2)
        return path
    finally:
        steady.stop(timeout=1)


class CpuSampler:
    """CPU seconds and peak RSS of some processes while a block runs (sampled at 4 Hz)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.max_rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.max_rss = max(self.max_rss, sum(rss_mb(p) or 0 for p in self.pids))

    def __enter__(self) -> CpuSampler:
        self._cpu0 = sum(cpu_seconds(p) or 0 for p in self.pids)
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = sum(cpu_seconds(p) or 0 for p in self.pids) - self._cpu0
        self.seconds = time.monotonic() - self._t0

    def result(self) -> dict[str, float]:
        return {"cpu_seconds": round(self.cpu, 3), "wall_seconds": round(self.seconds, 3),
                "cpu_percent": round(100 * self.cpu / self.seconds, 1),
                "max_rss_mb": round(self.max_rss, 1)}


def iperf3(handle: Handle, seconds: float) -> dict[str, Any]:
    server = handle.host_b.spawn(["iperf3", "-s", "-1", "-B", handle.mesh_ip_b,
                                  "-p", str(IPERF_PORT)], name="iperf3-server")
    try:
        time.sleep(0.3)  # iperf3 binds
        # --omit: TCP's slow start is not the tunnel's throughput, and it varies.
        res = handle.host_a.run(["iperf3", "-c", handle.mesh_ip_b, "-p", str(IPERF_PORT),
                                 "-t", str(seconds), "-O", str(IPERF_OMIT_S), "-J",
                                 "--connect-timeout", "3000"],
                                check=False, timeout=seconds + IPERF_OMIT_S + 20)
    finally:
        server.stop(timeout=2)
    try:
        data = json.loads(res.stdout)
        return {"mbps": round(data["end"]["sum_received"]["bits_per_second"] / 1e6, 1),
                "retransmits": data["end"]["sum_sent"].get("retransmits")}
    except (ValueError, KeyError) as exc:
        return {"mbps": None, "iperf_error": (res.stdout + res.stderr)[-300:] or str(exc)}


def run_sample(lab: Lab, contender: Contender, scenario: str, site_a: Site, site_b: Site,
               run_id: int, seconds: float) -> dict[str, Any]:
    sample: dict[str, Any] = {"contender": contender.NAME, "scenario": scenario,
                              "nat_a": site_a.nat, "nat_b": site_b.nat, "status": "ok",
                              "path": "none"}
    for site in (site_a, site_b):
        site.flush_conntrack()
    try:
        handle = contender.start(lab, site_a, site_b, run_id)
    except Exception as exc:
        sample.update(status="failed", error=f"{type(exc).__name__}: {exc}"[-800:])
        return sample
    try:
        want = "relay" if scenario == "relay" else "direct"
        sample["reported_path"] = wait_for_path(handle, want, timeout=contender.DIRECT_WAIT_S + 5)
        rtt: dict[str, Any] = {}

        def pings() -> None:
            rtt.update(ping_rtt(handle.host_a, handle.mesh_ip_b) or {})

        sample["path"] = wan_path_during(site_a, site_b, pings)
        sample["rtt_avg_ms"] = rtt.get("avg_ms")
        sample["rtt"] = rtt
        pids = []
        if isinstance(handle, PunchdHandle):
            pids = [handle.node_a.proc.pid]
        wg_pids = pids_named(handle.host_a, "wireguard-go")
        with CpuSampler(pids) as punchd_cpu, CpuSampler(wg_pids) as wg_cpu:
            sample.update(iperf3(handle, seconds))
        if pids:
            sample["punchd_cpu"] = punchd_cpu.result()
        sample["wireguard_go_cpu_a"] = wg_cpu.result() if wg_pids else None
        if contender.NAME == "nebula":
            sample["nebula_cpu_note"] = "Nebula's data plane is its own process, not measured"
    except Exception as exc:
        sample.update(status="error", error=f"{type(exc).__name__}: {exc}"[-800:])
    finally:
        handle.stop()
    return sample


def sample_line(sample: dict[str, Any]) -> str:
    head = f"{sample['scenario']:7} {sample['contender']:10}"
    if sample["status"] != "ok":
        return f"{head} [red]{sample['status']}[/]: {sample.get('error', '')[:200]}"
    mbps = sample.get("mbps")
    rtt = sample.get("rtt_avg_ms")
    return (f"{head} {'-' if mbps is None else f'{mbps:.0f}'} Mbit/s, RTT "
            f"{'-' if rtt is None else f'{rtt:.2f}'} ms, path {sample['path']}")


def run_dataplane(rounds: int, seconds: float, contenders: list[Contender], console: Console
                  ) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    with Lab(log_dir=lab_log_dir("dataplane")) as lab:
        sites = {}
        for scenario, nat_a, nat_b in SCENARIOS:
            sites[scenario] = (add_site(lab, f"{scenario[:3]}a", nat_a),
                               add_site(lab, f"{scenario[:3]}b", nat_b))
        plan = [(scenario, contender) for scenario, _, _ in SCENARIOS for contender in contenders
                if contender.applies(*sites[scenario])
                and (scenario != "ceiling" or contender.NAME == report.CEILING)
                and (scenario != "direct" or getattr(contender, "CAN_GO_DIRECT", True))]
        run_id = 0
        with Progress(console=console) as progress:
            task = progress.add_task("data plane", total=rounds * len(plan))
            for _ in range(rounds):
                # A B A B: every round runs every (scenario, contender) once, in order.
                for scenario, contender in plan:
                    run_id += 1
                    progress.update(task, description=f"{scenario} {contender.NAME}")
                    sample = run_sample(lab, contender, scenario, *sites[scenario], run_id, seconds)
                    samples.append(sample)
                    progress.console.print(sample_line(sample))
                    progress.advance(task)
    return samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"default {ROUNDS} (quick 1)")
    parser.add_argument("--seconds", type=float, default=None, help="iperf3 time (default 5)")
    parser.add_argument("--contenders", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))


def main_with(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    contenders = all_contenders()
    if args.contenders:
        contenders = [c for c in contenders if c.NAME in args.contenders.split(",")]
    machine = machine_info()  # its load average is the one at the start
    started = time.monotonic()
    samples = run_dataplane(rounds, seconds, contenders, console)
    return {"kind": "dataplane", "machine": machine, "reps": rounds,
            "iperf_seconds": seconds, "iperf_omit_seconds": IPERF_OMIT_S, "seconds": round(time.monotonic() - started, 1),
            "logs": str(lab_log_dir("")),
            "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    console = Console()
    report.write_dataplane(main_with(args, console), args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
