"""``python -m bench compare RUN_A RUN_B``: do two full runs tell the same story?

Two result folders (each with ``matrix.json`` and ``dataplane.json``) agree when
- every (contender, NAT pair) cell of the matrix ended on the same final path: the set
  of WAN-confirmed paths over the cell's repetitions is the same in both runs (a cell
  that went direct in every repetition of one run and relayed once in the other does
  not agree), and
- every contender's relayed ÷ direct throughput ratio in the data plane (medians; only
  where the WAN side confirmed the scenario's path in every sample) is within
  ``RATIO_TOLERANCE`` of the other run's: the larger over the smaller is at most 1.15.
  A contender with the ratio in one run but not the other does not agree.

Prints a Markdown report (also written to ``--out`` if given); exit 0 = the runs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import report

RATIO_TOLERANCE = 0.15


def path_set(path: str) -> frozenset[str]:
    """``final_path``'s "direct/relay" as a set: the order of outcomes does not matter."""
    return frozenset(path.split("/"))


def compare_matrix(trials_a: list[dict[str, Any]], trials_b: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """One row per cell of either run: both final paths and whether they agree."""
    cells_a, cells_b = report.matrix_cells(trials_a), report.matrix_cells(trials_b)
    rows = []
    for key in sorted(set(cells_a) | set(cells_b),
                      key=lambda k: (k[0], report.pair_order((k[1], k[2])))):
        path_a = cells_a[key]["path"] if key in cells_a else "missing"
        path_b = cells_b[key]["path"] if key in cells_b else "missing"
        rows.append({"contender": key[0], "pair": f"{key[1]}/{key[2]}", "a": path_a,
                     "b": path_b, "agree": path_set(path_a) == path_set(path_b)})
    return rows


def compare_ratios(samples_a: list[dict[str, Any]], samples_b: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Per contender with a relayed ÷ direct ratio in either run: both, and the spread."""
    ratios_a = report.relay_over_direct(samples_a)
    ratios_b = report.relay_over_direct(samples_b)
    rows = []
    for contender in sorted(set(ratios_a) | set(ratios_b)):
        a, b = ratios_a.get(contender), ratios_b.get(contender)
        spread = None if a is None or b is None else max(a, b) / min(a, b) - 1
        rows.append({"contender": contender, "a": a, "b": b, "spread": spread,
                     "agree": spread is not None and spread <= RATIO_TOLERANCE + 1e-9})
    return rows


def compare_runs(run_a: Path, run_b: Path) -> tuple[bool, str]:
    """(agree, Markdown report) for two result folders."""
    def load(run: Path, name: str) -> dict[str, Any]:
        return dict(json.loads((run / name).read_text()))

    matrix_rows = compare_matrix(load(run_a, "matrix.json")["trials"],
                                 load(run_b, "matrix.json")["trials"])
    ratio_rows = compare_ratios(load(run_a, "dataplane.json")["samples"],
                                load(run_b, "dataplane.json")["samples"])
    paths_agree = all(r["agree"] for r in matrix_rows)
    ratios_agree = bool(ratio_rows) and all(r["agree"] for r in ratio_rows)

    def fmt(value: float | None, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"# Two runs compared: {run_a} (A) and {run_b} (B)", "",
             f"Final paths: {sum(r['agree'] for r in matrix_rows)} of {len(matrix_rows)} "
             f"cells agree.", ""]
    disagreeing = [r for r in matrix_rows if not r["agree"]]
    if disagreeing:
        lines += ["| contender | NAT pair | A | B |", "|---|---|---|---|"]
        lines += [f"| {r['contender']} | {r['pair']} | {r['a']} | {r['b']} |" for r in disagreeing]
        lines.append("")
    lines += [f"Relayed ÷ direct throughput (median), agreement within "
              f"{RATIO_TOLERANCE:.0%}:", "", "| contender | A | B | spread | agree |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['contender']} | {fmt(r['a'])} | {fmt(r['b'])} | "
              f"{fmt(r['spread'], '.1%')} | "
              f"{'yes' if r['agree'] else 'no'} |" for r in ratio_rows]
    if not ratio_rows:
        lines.append("| (no contender has both a clean direct and a clean relayed run) | | | | no |")
    agree = paths_agree and ratios_agree
    lines += ["", f"Verdict: the runs {'agree' if agree else 'do not agree'}."]
    return agree, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    agree, text = compare_runs(args.run_a, args.run_b)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
