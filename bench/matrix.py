"""The NAT matrix: every pair of the lab's NAT types, every contender, N repetitions.

Per trial: t0 is the moment ``start()`` returns with both nodes up. Node A then pings
B's mesh address every 50 ms until the first reply (first-ping time); afterwards it
pings at 10/s while the contender's own status is polled every 0.2 s, until it says
"direct" (time-to-direct) or its wait runs out (each contender's ``DIRECT_WAIT_S``,
or ``--direct-wait``). Finally a 20-ping burst through the
tunnel is counted on site A's WAN side (conntrack counters) to confirm where the
traffic goes; ``path`` is that confirmed path, ``reported_path`` the contender's own.
Between trials both sites' conntrack tables are flushed, so no NAT state carries over.
Several labs (one NAT pair each) run side by side; their timed phases take turns.

    python -m bench.matrix [--quick] [--reps 5] [--lanes 5] [--pairs prc-prc,cone-sym] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from netns_tests.lab import NAT_TYPES, Lab, Site

from . import report
from .common import add_site, lab_log_dir, machine_info
from .contenders import Contender, all_contenders
from .labtools import first_reply_wall_time, spawn_first_ping, wan_path_during

ALL_PAIRS = list(itertools.combinations_with_replacement(NAT_TYPES, 2))
QUICK_PAIRS = [("none", "none"), ("prc", "prc"), ("cone", "sym"), ("sym", "sym")]
POLL_S = 0.2
# Labs run side by side: most of a trial is waiting (Nebula's 25 s for a direct path it
# rarely reaches), which overlaps well; the timed phases take turns (``Turn``).
LANES = 5
# A trial keeps the turn this long after its first ping while it waits for direct:
# punchd and Nebula go direct well within it when they go direct at all.
TURN_AFTER_FIRST_PING_S = 1.0


class Turn:
    """The lanes' turn at the timed phases: one trial at a time is starting, waiting for
    its first ping or (briefly) for direct, so one lane's start-up never slows another's
    clock. Building and tearing down a lab take the turn too; waits longer than that,
    the WAN check and stopping a contender run side by side."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._held = False

    def __enter__(self) -> Turn:
        self._lock.acquire()
        self._held = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_trial(lab: Lab, contender: Contender, site_a: Site, site_b: Site, run_id: int,
              first_ping_timeout: float, direct_timeout: float | None,
              turn_lock: threading.Lock) -> dict[str, Any]:
    """One start-to-path measurement; ``direct_timeout`` None = the contender's own wait."""
    if direct_timeout is None:
        direct_timeout = contender.DIRECT_WAIT_S
    trial: dict[str, Any] = {"contender": contender.NAME, "nat_a": site_a.nat,
                             "nat_b": site_b.nat, "status": "ok", "first_ping_s": None,
                             "direct_s": None, "reported_path": "none", "path": "none"}
    for site in (site_a, site_b):
        site.flush_conntrack()
    with Turn(turn_lock) as turn:
        launched = time.monotonic()
        try:
            handle = contender.start(lab, site_a, site_b, run_id)
        except Exception as exc:
            trial.update(status="failed", error=f"{type(exc).__name__}: {exc}"[-800:])
            return trial
        t0_wall, t0 = time.time(), time.monotonic()
        # How long the contender took to bring both nodes up (not part of the timings
        # below, which start when both are up, but kept so start-up costs are visible
        # too). A contender that also starts its servers says how long its nodes took.
        trial["start_s"] = round(getattr(handle, "start_s", 0.0) or (t0 - launched), 3)
        try:
            measure_paths(trial, handle, contender, t0, t0_wall, run_id, first_ping_timeout,
                          direct_timeout, turn)
            turn.release()
            trial["path"] = wan_path_during(
                site_a, site_b,
                lambda: handle.host_a.run(["ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W",
                                           "1", handle.mesh_ip_b], check=False, timeout=20))
            trial["agree"] = trial["path"] == trial["reported_path"]
            trial["info"] = handle.info()
        except Exception as exc:
            trial.update(status="error", error=f"{type(exc).__name__}: {exc}"[-800:])
        finally:
            turn.release()
            handle.stop()
    return trial


def measure_paths(trial: dict[str, Any], handle: Any, contender: Contender, t0: float,
                  t0_wall: float, run_id: int, first_ping_timeout: float,
                  direct_timeout: float, turn: Turn) -> None:
    """First ping, then the contender's own path until direct or its wait runs out."""
    can_go_direct = getattr(contender, "CAN_GO_DIRECT", True)
    ping = spawn_first_ping(handle.host_a, handle.mesh_ip_b, first_ping_timeout,
                            name=f"firstping-{run_id}")
    while ping.alive() and time.monotonic() - t0 < first_ping_timeout + 2:
        time.sleep(0.02)
    ping.stop(timeout=1)
    reply = first_reply_wall_time(ping)
    if reply is not None:
        trial["first_ping_s"] = round(reply - t0_wall, 3)
    # Steady traffic while waiting for direct: a real mesh carries traffic while it
    # upgrades, and some contenders only move a path that carries traffic.
    waited_from = t0 + (trial["first_ping_s"] or first_ping_timeout)
    deadline = waited_from + direct_timeout
    turn_ends = waited_from + TURN_AFTER_FIRST_PING_S
    steady = handle.host_a.spawn(["ping", "-n", "-q", "-i", "0.1", "-W", "1",
                                  "-w", str(int(first_ping_timeout + direct_timeout) + 2),
                                  handle.mesh_ip_b], name=f"steadyping-{run_id}")
    reported = "none"
    timeline: list[tuple[float, str]] = []
    try:
        while True:
            reported = handle.reported_path()
            now = time.monotonic()
            if not timeline or timeline[-1][1] != reported:
                timeline.append((round(now - t0, 2), reported))
            if reported == "direct" and trial["direct_s"] is None:
                trial["direct_s"] = round(now - t0, 3)
            if reported == "direct" or not can_go_direct or now > deadline:
                break
            if now > turn_ends:
                turn.release()
            time.sleep(POLL_S)
    finally:
        steady.stop(timeout=1)
    trial["reported_path"] = reported
    trial["path_timeline"] = timeline


def run_matrix(pairs: list[tuple[str, str]], reps: int, contenders: list[Contender],
               first_ping_timeout: float, direct_timeout: float | None, lanes: int,
               console: Console) -> list[dict[str, Any]]:
    """Each lane builds one pair's lab at a time and runs all its repetitions; the lanes
    take turns at the timed phases (``Turn``) and overlap only in waits and teardown."""
    trials: list[dict[str, Any]] = []
    todo: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    for pair in pairs:
        todo.put(pair)
    run_ids = itertools.count(1)
    turn_lock = threading.Lock()
    stop = threading.Event()
    jobs = len(pairs) * reps * len(contenders)
    with Progress(console=console, transient=False) as progress:
        total = progress.add_task("NAT matrix", total=jobs)

        def lane(number: int) -> None:
            task = progress.add_task(f"lane {number}", total=None)
            while not stop.is_set():
                try:
                    nat_a, nat_b = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    run_pair(nat_a, nat_b, reps, contenders, first_ping_timeout, direct_timeout,
                             run_ids, turn_lock, stop, trials, progress, task, total)
                except Exception as exc:
                    # The lab itself failed (not a contender): every contender of the
                    # pair is reported as failed rather than left out.
                    for contender in contenders:
                        trials.append({"contender": contender.NAME, "nat_a": nat_a,
                                       "nat_b": nat_b, "status": "failed", "first_ping_s": None,
                                       "direct_s": None, "path": "none",
                                       "reported_path": "none", "rep": 0,
                                       "error": f"lab: {type(exc).__name__}: {exc}"[-800:]})
                    progress.console.print(f"{nat_a}/{nat_b} [red]lab failed[/]: {exc}")
            progress.update(task, description=f"lane {number}: done", visible=False)

        threads = [threading.Thread(target=lane, args=(n + 1,), name=f"matrix-lane-{n + 1}")
                   for n in range(max(1, min(lanes, len(pairs))))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except KeyboardInterrupt:
            # Each lane ends its current trial and tears its lab down before we go.
            stop.set()
            for thread in threads:
                thread.join()
            raise
    order = {pair: i for i, pair in enumerate(pairs)}
    trials.sort(key=lambda t: (order[(t["nat_a"], t["nat_b"])], t["rep"]))
    return trials


def run_pair(nat_a: str, nat_b: str, reps: int, contenders: list[Contender],
             first_ping_timeout: float, direct_timeout: float | None,
             run_ids: Iterator[int], turn_lock: threading.Lock, stop: threading.Event,
             trials: list[dict[str, Any]], progress: Progress, task: Any, total: Any) -> None:
    """All repetitions of one NAT pair in one fresh lab (built and torn down in a turn:
    both are bursts of ip and nft commands that would slow another lane's clock)."""
    lab = Lab(log_dir=lab_log_dir(f"matrix-{nat_a}-{nat_b}"))
    try:
        with Turn(turn_lock):
            lab.__enter__()
            site_a = add_site(lab, "a", nat_a)
            site_b = add_site(lab, "b", nat_b)
        for rep in range(reps):
            # Contenders interleaved within a repetition: drift hits all alike.
            for contender in contenders:
                if stop.is_set():
                    return
                progress.update(task, description=f"{nat_a}/{nat_b} {contender.NAME} #{rep + 1}")
                if not contender.applies(site_a, site_b):
                    progress.advance(total)
                    continue
                trial = run_trial(lab, contender, site_a, site_b, next(run_ids),
                                  first_ping_timeout, direct_timeout, turn_lock)
                trial["rep"] = rep
                trials.append(trial)
                progress.console.print(report.trial_line(trial))
                progress.advance(total)
    finally:
        with Turn(turn_lock):
            lab.teardown()


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        a, _, b = item.strip().partition("-")
        if a not in NAT_TYPES or b not in NAT_TYPES:
            raise SystemExit(f"matrix: bad pair {item!r}; NAT types: {', '.join(NAT_TYPES)}")
        pairs.append((a, b))
    return pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="4 pairs, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 1)")
    parser.add_argument("--pairs", default=None, help="e.g. prc-prc,cone-sym (default: all)")
    parser.add_argument("--direct-wait", type=float, default=None,
                        help="seconds to wait for direct after the first ping "
                             "(default: each contender's DIRECT_WAIT_S)")
    parser.add_argument("--contenders", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--lanes", type=int, default=LANES,
                        help=f"labs side by side (default {LANES}; 1 = one pair after another)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))


def select_contenders(names: str | None) -> list[Contender]:
    contenders = all_contenders()
    if names:
        wanted = names.split(",")
        contenders = [c for c in contenders if c.NAME in wanted]
    return contenders


def main_with(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    pairs = parse_pairs(args.pairs) if args.pairs else (QUICK_PAIRS if args.quick else ALL_PAIRS)
    reps = args.reps or (1 if args.quick else 5)
    direct_timeout = args.direct_wait
    machine = machine_info()
    started = time.monotonic()
    trials = run_matrix(pairs, reps, select_contenders(args.contenders), first_ping_timeout=6.0,
                        direct_timeout=direct_timeout, lanes=args.lanes, console=console)
    waits = {c.NAME: direct_timeout or c.DIRECT_WAIT_S for c in select_contenders(args.contenders)}
    return {"kind": "matrix", "machine": machine, "reps": reps, "lanes": args.lanes,
            "turn_after_first_ping_s": TURN_AFTER_FIRST_PING_S,
            "first_ping_timeout_s": 6.0, "direct_wait_s": waits,
            "seconds": round(time.monotonic() - started, 1), "logs": str(lab_log_dir("")),
            "trials": trials}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    console = Console()
    result = main_with(args, console)
    report.write_matrix(result, args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
