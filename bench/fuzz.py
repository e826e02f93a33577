"""Fuzz campaign (issue #14): every parser fed from outside, 1e5 inputs each.

The targets, their inputs and their allowed errors are ``tests/fuzz_targets.py``, the
same ones ``tests/test_fuzz.py`` runs a few hundred of in CI. Here nothing is
tolerated: any exception other than the target's own error is a failure, counted,
and its smallest input kept as the reproducer (the run goes on rather than stopping
at the first, so one run shows every kind of crash).

    python -m bench fuzz [--inputs N] [--target NAME ...] [--quick] [--out DIR]

Writes ``fuzz.json`` and ``fuzz.md`` to ``bench/results/`` (``--quick``: 2000 inputs).
Exit status 1 when any target failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from tests.fuzz_targets import TARGETS, Target

DEFAULT_INPUTS = 100_000
QUICK_INPUTS = 2_000
KEEP_PER_KIND = 1  # the smallest reproducer per distinct failure


def run_target(target: Target, inputs: int, seed: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    failures: dict[str, dict[str, Any]] = {}

    # generate only: no shrinking (we keep the smallest input seen instead) and no
    # example database, so a run is a pure function of the seed.
    @settings(max_examples=inputs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def one(value: object) -> None:
        try:
            outcomes[target.check(value)] += 1
        except Exception as exc:  # the finding: record it, keep going
            kind = f"{type(exc).__name__}: {str(exc)[:80]}"
            kind_key = type(exc).__name__
            outcomes[f"FAIL {kind_key}"] += 1
            reproducer = repr(value)
            old = failures.get(kind_key)
            if old is None or len(reproducer) < len(old["reproducer"]):
                failures[kind_key] = {"exception": kind, "reproducer": reproducer}

    started = time.perf_counter()
    hypothesis_seed(seed)(one)()
    seconds = time.perf_counter() - started
    return {
        "target": target.name, "what": target.what, "inputs": sum(outcomes.values()),
        "outcomes": dict(sorted(outcomes.items())),
        "distinct_exceptions": sorted(k for k in outcomes if k not in ("ok",)),
        "seconds": round(seconds, 2), "failures": list(failures.values()),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Fuzz campaign", "",
             f"`python -m bench fuzz --inputs {results['inputs_per_target']}` "
             f"(seed {results['seed']}, {results['machine']['python']}, "
             f"{results['started']}). Targets: `tests/fuzz_targets.py`.", "",
             "| target | inputs | outcomes | time (s) | failures |", "|---|---|---|---|---|"]
    for r in results["targets"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
        lines.append(f"| {r['target']} | {r['inputs']} | {outcomes} | {r['seconds']} | "
                     f"{len(r['failures'])} |")
    failed = [r for r in results["targets"] if r["failures"]]
    if failed:
        lines += ["", "## Failures (smallest input seen per exception type)", ""]
        for r in failed:
            for f in r["failures"]:
                lines += [f"- **{r['target']}**: `{f['exception']}`", "",
                          f"      {f['reproducer'][:400]}", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--inputs", type=int, default=None,
                        help=f"inputs per target (default {DEFAULT_INPUTS})")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="only this target (repeatable)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_INPUTS} inputs per target")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    inputs = args.inputs or (QUICK_INPUTS if args.quick else DEFAULT_INPUTS)
    if inputs < 1:
        parser.error("--inputs must be at least 1")
    names = args.target or sorted(TARGETS)
    results: dict[str, Any] = {
        "inputs_per_target": inputs, "seed": args.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "targets": [],
    }
    for name in names:
        result = run_target(TARGETS[name], inputs, args.seed)
        results["targets"].append(result)
        print(f"{name:15} {result['inputs']:7} inputs {result['seconds']:7.1f} s  "
              f"{len(result['failures'])} failure kinds", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "fuzz.md").write_text(markdown(results))
    print(f"wrote {args.out / 'fuzz.json'} and fuzz.md")
    return 1 if any(r["failures"] for r in results["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
