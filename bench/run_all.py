"""``python -m bench all [--quick]``: the NAT matrix, the data plane, the control-plane
fan-out and the DNS benchmark, one after another, results in ``bench/results/``.

The full set (matrix 5 repetitions of 21 pairs, 5 data-plane rounds) keeps within
~30 minutes on this 2-core machine because the matrix runs several labs side by side
(``bench.matrix.LANES``; most of a trial is waiting, e.g. Nebula's 25 s for a direct
path it rarely reaches); ``--reps`` overrides. ``--quick`` (~5 minutes): 4 NAT pairs
once, one data-plane round, and the fan-out and DNS benchmarks at reduced size. Each
part that fails is reported and the others still run; the exit code says whether any
failed. ``python -m bench compare RUN_A RUN_B`` says whether two runs agree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from . import dataplane, matrix, report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None, help="matrix repetitions")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    console = Console()
    failed: list[str] = []
    started = time.monotonic()

    matrix_args = argparse.Namespace(quick=args.quick, pairs=None, contenders=None,
                                     direct_wait=None, out=args.out, lanes=matrix.LANES,
                                     reps=args.reps)
    dataplane_args = argparse.Namespace(quick=args.quick, rounds=None, seconds=None,
                                        contenders=None, out=args.out)
    def run_matrix() -> None:
        report.write_matrix(matrix.main_with(matrix_args, console), args.out, console)

    def run_dataplane() -> None:
        report.write_dataplane(dataplane.main_with(dataplane_args, console), args.out, console)

    for name, run in (("matrix", run_matrix), ("dataplane", run_dataplane)):
        console.rule(name)
        try:
            run()
        except Exception as exc:
            console.print(f"[red]{name} failed[/]: {type(exc).__name__}: {exc}")
            failed.append(name)

    # The fan-out and DNS benchmarks are others' modules: run them as they are run alone.
    # A quick run writes *-quick.json so it never replaces the full-size figures.
    suffix = "-quick" if args.quick else ""
    others = {
        "control": ["bench.control_fanout", "--out", str(args.out / f"fanout{suffix}.json")]
        + (["--nodes", "200", "--arrivals", "3"] if args.quick else []),
        "dns": ["bench.dns_qps", "--out", str(args.out / f"dns{suffix}.json")]
        + (["--rounds", "1", "--seconds", "2"] if args.quick else []),
    }
    for name, argv in others.items():
        console.rule(name)
        res = subprocess.run([sys.executable, "-m", *argv], timeout=600, check=False)
        if res.returncode != 0:
            console.print(f"[red]{name} failed[/] (exit {res.returncode})")
            failed.append(name)
    console.rule(f"all: {time.monotonic() - started:.0f} s"
                 + (f", failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
