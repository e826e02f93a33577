"""Results: JSON with every raw sample, a Markdown table, PNG charts.

The table-building functions are pure (data in, text out) so ``tests/`` can check
them without a lab.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

CEILING = "wg-static"
REFERENCE = "nebula"
PATH_COLOURS = {"direct": "#3a9e4f", "relay": "#e8a33d", "none": "#c8453b",
                "failed": "#555555", "n/a": "#ffffff"}


# -- pure summaries -----------------------------------------------------------------

def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the values that exist (None = not measured)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(present), "median": statistics.median(present), "min": min(present),
            "max": max(present)}


def fmt_summary(summary: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    """``1.23 (1.10-1.40)`` or ``-`` when nothing was measured."""
    if not summary["n"]:
        return "-"
    med = f"{summary['median']:.{digits}f}{unit}"
    if summary["n"] == 1 or summary["min"] == summary["max"]:
        return med
    return f"{med} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def final_path(trials: list[dict[str, Any]]) -> str:
    """The pair's final path over its repetitions: the one they agree on, else "a/b"."""
    paths = ["failed" if t["status"] == "failed" else t["path"] for t in trials]
    distinct = sorted(set(paths), key=paths.index)
    return "/".join(distinct) if distinct else "n/a"


def matrix_cells(trials: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(contender, nat_a, nat_b) -> final path, first-ping and time-to-direct summaries."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for trial in trials:
        groups.setdefault((trial["contender"], trial["nat_a"], trial["nat_b"]), []).append(trial)
    cells = {}
    for key, group in groups.items():
        cells[key] = {
            "path": final_path(group),
            "first_ping": summarize(t["first_ping_s"] for t in group),
            "direct": summarize(t["direct_s"] for t in group),
            "start": summarize(t.get("start_s") for t in group),
            "reported": final_path([{**t, "path": t.get("reported_path", t["path"])}
                                    for t in group]),
            "runs": len(group),
            "failed": sum(t["status"] != "ok" for t in group),
        }
    return cells


NAT_ORDER = ("none", "cone", "prc", "sym", "block", "cgnat")


def pair_order(pair: tuple[str, str]) -> tuple[int, int]:
    return tuple(NAT_ORDER.index(n) if n in NAT_ORDER else len(NAT_ORDER) for n in pair)  # type: ignore[return-value]


def matrix_markdown(trials: list[dict[str, Any]]) -> str:
    """One row per NAT pair, per contender: final path, time-to-direct, first ping."""
    cells = matrix_cells(trials)
    contenders = sorted({k[0] for k in cells}, key=lambda c: (c != "punchd", c))
    pairs = sorted({(k[1], k[2]) for k in cells}, key=pair_order)
    lines = ["| NAT pair | " + " | ".join(contenders) + " |",
             "|---|" + "---|" * len(contenders)]
    for nat_a, nat_b in pairs:
        row = [f"{nat_a}/{nat_b}"]
        for contender in contenders:
            cell = cells.get((contender, nat_a, nat_b))
            if cell is None:
                row.append("n/a")
                continue
            text = f"**{cell['path']}**"
            if cell["reported"] != cell["path"]:
                # The contender said something else than the WAN side showed: say both.
                text += f" (says {cell['reported']})"
            if cell["direct"]["n"]:
                text += f" direct {fmt_summary(cell['direct'], ' s')}"
            text += f"; 1st ping {fmt_summary(cell['first_ping'], ' s')}"
            if cell["start"]["n"]:
                text += f"; start-up {fmt_summary(cell['start'], ' s')}"
            if cell["failed"]:
                text += f"; {cell['failed']}/{cell['runs']} failed"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def dataplane_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (contender, path): throughput/RTT summaries and ratios vs ceiling and Nebula."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for sample in samples:
        groups.setdefault((sample["contender"], sample["scenario"]), []).append(sample)
    rows = []
    for (contender, scenario), group in groups.items():
        rows.append({"contender": contender, "scenario": scenario,
                     "mbps": summarize(s.get("mbps") for s in group),
                     "rtt_ms": summarize(s.get("rtt_avg_ms") for s in group),
                     "paths": final_path(group), "runs": len(group),
                     "failed": sum(s["status"] != "ok" for s in group)})
    ceiling = next((r["mbps"]["median"] for r in rows if r["contender"] == CEILING), None)
    for row in rows:
        row["vs_ceiling"] = ratio(row["mbps"]["median"], ceiling)
        nebula = next((r["mbps"]["median"] for r in rows
                       if r["contender"] == REFERENCE and r["scenario"] == row["scenario"]), None)
        row["vs_nebula"] = ratio(row["mbps"]["median"], nebula)
    rows.sort(key=lambda r: (r["scenario"], r["contender"] != "punchd", r["contender"]))
    return rows


def relay_over_direct(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Per contender with both scenarios measured: relayed ÷ direct median throughput.

    Only where the WAN side saw the scenario's path in every sample: a "direct" run
    that really went through the relay would make the ratio meaningless.
    """
    rows = {(r["contender"], r["scenario"]): r for r in dataplane_rows(samples)}
    ratios = {}
    for (contender, scenario), row in rows.items():
        direct = rows.get((contender, "direct"))
        if scenario != "relay" or direct is None:
            continue
        if row["paths"] != "relay" or direct["paths"] != "direct":
            continue
        value = ratio(row["mbps"]["median"], direct["mbps"]["median"])
        if value is not None:
            ratios[contender] = value
    return ratios


def dataplane_markdown(samples: list[dict[str, Any]]) -> str:
    def fmt_ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = ["| scenario | contender | path (WAN) | iperf3 TCP Mbit/s | ping RTT ms | "
             "÷ wg-static | ÷ Nebula (same scenario) |",
             "|---|---|---|---|---|---|---|"]
    for row in dataplane_rows(samples):
        failed = f" ({row['failed']}/{row['runs']} failed)" if row["failed"] else ""
        lines.append(f"| {row['scenario']} | {row['contender']}{failed} | {row['paths']} | "
                     f"{fmt_summary(row['mbps'], '', 0)} | {fmt_summary(row['rtt_ms'], '', 2)} | "
                     f"{fmt_ratio(row['vs_ceiling'])} | {fmt_ratio(row['vs_nebula'])} |")
    relayed = relay_over_direct(samples)
    if relayed:
        lines.append("")
        lines.append("Relayed ÷ direct throughput (WAN-confirmed paths only): " + ", ".join(
            f"{contender} {value:.2f}x" for contender, value in sorted(relayed.items())))
    return "\n".join(lines) + "\n"


def trial_line(trial: dict[str, Any]) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}s"

    head = f"{trial['nat_a']}/{trial['nat_b']} {trial['contender']:10}"
    if trial["status"] != "ok":
        return f"{head} [red]{trial['status']}[/]: {trial.get('error', '')[:200]}"
    return (f"{head} 1st ping {sec(trial['first_ping_s'])} direct {sec(trial['direct_s'])} "
            f"path {trial['path']} (reported {trial['reported_path']})")


# -- files ----------------------------------------------------------------------------

def _write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def matrix_chart(trials: list[dict[str, Any]], path: Path) -> None:
    """One panel per contender: NAT pair grid coloured by final path, time-to-direct inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    cells = matrix_cells(trials)
    contenders = sorted({k[0] for k in cells}, key=lambda c: (c != "punchd", c))
    nats = [n for n in NAT_ORDER
            if any(n in (k[1], k[2]) for k in cells)]
    fig, axes = plt.subplots(1, len(contenders), figsize=(3.4 * len(contenders), 3.6),
                             squeeze=False)
    for ax, contender in zip(axes[0], contenders, strict=True):
        for i, nat_a in enumerate(nats):
            for j, nat_b in enumerate(nats):
                cell = cells.get((contender, nat_a, nat_b)) or cells.get((contender, nat_b, nat_a))
                path_name = cell["path"].split("/")[0] if cell else "n/a"
                colour = PATH_COLOURS.get(path_name, "#999999")
                ax.add_patch(Rectangle((j, i), 1, 1, color=colour, ec="white"))
                if cell and cell["direct"]["n"]:
                    ax.text(j + 0.5, i + 0.5, f"{cell['direct']['median']:.2f}s", ha="center",
                            va="center", fontsize=7)
                elif cell and "/" in cell["path"]:
                    ax.text(j + 0.5, i + 0.5, "mixed", ha="center", va="center", fontsize=6)
        ax.set_xlim(0, len(nats))
        ax.set_ylim(len(nats), 0)
        ax.set_xticks([k + 0.5 for k in range(len(nats))], nats, fontsize=7)
        ax.set_yticks([k + 0.5 for k in range(len(nats))], nats, fontsize=7)
        ax.set_title(contender, fontsize=9)
    fig.legend(handles=[Patch(color=c, label=p) for p, c in PATH_COLOURS.items() if p != "n/a"],
               loc="lower center", ncol=4, fontsize=7)
    fig.suptitle("final path (WAN-confirmed) and median time to direct", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def throughput_chart(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dataplane_rows(samples)
    # The label names the path the WAN side saw when it is not the scenario's own.
    labels = [f"{r['contender']}\n{r['scenario']}"
              + ("" if r["paths"] == {"ceiling": "direct"}.get(r["scenario"], r["scenario"])
                 else f"\n(via {r['paths']})") for r in rows]
    medians = [r["mbps"]["median"] or 0 for r in rows]
    lows = [m - (r["mbps"]["min"] or 0) for m, r in zip(medians, rows, strict=True)]
    highs = [(r["mbps"]["max"] or 0) - m for m, r in zip(medians, rows, strict=True)]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 3.6))
    ax.bar(range(len(rows)), medians, yerr=[lows, highs], capsize=3,
           color=["#3a6ea5" if r["contender"] == "punchd" else "#9aa7b4" for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("iperf3 TCP Mbit/s (median, min-max)")
    ax.set_title("throughput over the mesh", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_matrix(result: dict[str, Any], out: Path, console: Console) -> None:
    _write_json(result, out / "matrix.json")
    table = matrix_markdown(result["trials"])
    (out / "matrix.md").write_text(
        "# NAT matrix\n\n"
        f"{result['machine']['time_utc']}, {result['reps']} repetition(s), "
        f"{result['seconds']} s. Cells: final path confirmed on the NAT's WAN side; "
        "median time to direct (min-max); median time to first ping; t0 = both nodes up "
        "(start-up: how long the contender took to get both nodes up, before t0).\n\n"
        + table)
    matrix_chart(result["trials"], out / "matrix.png")
    console.print(table)
    console.print(f"matrix: wrote {out}/matrix.json, matrix.md, matrix.png")


def write_dataplane(result: dict[str, Any], out: Path, console: Console) -> None:
    _write_json(result, out / "dataplane.json")
    table = dataplane_markdown(result["samples"])
    extra = ""
    cpu = [s for s in result["samples"] if s.get("punchd_cpu")]
    if cpu:
        extra = "\npunchd during iperf3 (node A; punchd is not in the data path, "
        extra += "wireguard-go is): " + "; ".join(
            f"{s['scenario']}: punchd CPU {s['punchd_cpu']['cpu_percent']:.1f}%, "
            f"max RSS {s['punchd_cpu']['max_rss_mb']:.1f} MB"
            + (f", wireguard-go CPU {s['wireguard_go_cpu_a']['cpu_percent']:.0f}%"
               if s.get("wireguard_go_cpu_a") else "")
            for s in cpu) + "\n"
    (out / "dataplane.md").write_text(
        "# Data plane\n\n"
        f"{result['machine']['time_utc']}, {result['reps']} round(s), iperf3 TCP "
        f"{result['iperf_seconds']} s, 20 pings at 20/s. Contenders interleaved.\n\n"
        + table + extra)
    throughput_chart(result["samples"], out / "throughput.png")
    console.print(table + extra)
    console.print(f"dataplane: wrote {out}/dataplane.json, dataplane.md, throughput.png")


def main() -> int:
    """``python -m bench.report [DIR]``: redraw the tables and charts from the JSON there."""
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results")
    console = Console()
    if (out / "matrix.json").exists():
        write_matrix(json.loads((out / "matrix.json").read_text()), out, console)
    if (out / "dataplane.json").exists():
        write_dataplane(json.loads((out / "dataplane.json").read_text()), out, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
