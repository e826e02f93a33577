"""The pure parts of the comparative benchmark: summaries, ratios, the Markdown tables,
Nebula's log reading and conntrack counting. No lab, no root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import report
from bench.contenders.nebula import path_from_log
from bench.labtools import Flow, packets_towards


def trial(contender: str, nat_a: str, nat_b: str, path: str, direct: float | None = None,
          first: float | None = 0.1, status: str = "ok") -> dict[str, Any]:
    return {"contender": contender, "nat_a": nat_a, "nat_b": nat_b, "path": path,
            "direct_s": direct, "first_ping_s": first, "status": status}


def sample(contender: str, scenario: str, mbps: float | None, rtt: float = 1.0,
           path: str = "direct", status: str = "ok") -> dict[str, Any]:
    return {"contender": contender, "scenario": scenario, "mbps": mbps, "rtt_avg_ms": rtt,
            "path": path, "status": status}


def test_summarize_skips_missing_values_and_takes_the_median() -> None:
    assert report.summarize([3.0, None, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    assert report.summarize([None, None]) == {"n": 0, "median": None, "min": None, "max": None}
    assert report.summarize([1.0, 4.0])["median"] == 2.5


def test_fmt_summary_shows_range_only_when_there_is_one() -> None:
    assert report.fmt_summary(report.summarize([0.25, 0.5, 1.0]), " s") == "0.50 s (0.25-1.00)"
    assert report.fmt_summary(report.summarize([0.5]), " s") == "0.50 s"
    assert report.fmt_summary(report.summarize([None])) == "-"


def test_ratio_needs_both_figures() -> None:
    assert report.ratio(150.0, 300.0) == 0.5
    assert report.ratio(None, 300.0) is None
    assert report.ratio(150.0, None) is None
    assert report.ratio(150.0, 0.0) is None


def test_final_path_is_the_agreed_one_or_lists_every_outcome() -> None:
    assert report.final_path([trial("p", "a", "b", "direct")] * 3) == "direct"
    mixed = [trial("p", "a", "b", "direct"), trial("p", "a", "b", "relay"),
             trial("p", "a", "b", "direct", status="failed")]
    assert report.final_path(mixed) == "direct/relay/failed"


def test_matrix_markdown_has_a_row_per_pair_and_a_column_per_contender() -> None:
    trials = [
        trial("punchd", "prc", "prc", "direct", direct=0.3),
        trial("punchd", "prc", "prc", "direct", direct=0.5),
        trial("punchd", "prc", "prc", "direct", direct=0.4),
        trial("nebula", "prc", "prc", "relay"),
        trial("nebula", "sym", "sym", "none", first=None, status="failed"),
        trial("punchd", "sym", "sym", "relay"),
    ]
    lines = report.matrix_markdown(trials).splitlines()
    assert lines[0] == "| NAT pair | punchd | nebula |"
    assert lines[2] == ("| prc/prc | **direct** direct 0.40 s (0.30-0.50); 1st ping 0.10 s | "
                        "**relay**; 1st ping 0.10 s |")
    assert lines[3] == ("| sym/sym | **relay**; 1st ping 0.10 s | "
                        "**failed**; 1st ping -; 1/1 failed |")
    assert len(lines) == 4


def test_matrix_markdown_shows_start_up_time_when_measured() -> None:
    timed = [{**trial("nebula", "prc", "prc", "relay"), "start_s": s} for s in (0.2, 0.4, 0.3)]
    assert "| prc/prc | **relay**; 1st ping 0.10 s; start-up 0.30 s (0.20-0.40) |" in \
        report.matrix_markdown(timed)


def test_matrix_markdown_shows_the_contenders_claim_when_the_wan_side_disagrees() -> None:
    claimed = {**trial("punchd", "cone", "sym", "relay", direct=0.3), "reported_path": "direct"}
    table = report.matrix_markdown([claimed])
    assert "| cone/sym | **relay** (says direct) direct 0.30 s; 1st ping 0.10 s |" in table


def test_matrix_rows_follow_the_nat_order_not_the_alphabet() -> None:
    trials = [trial("punchd", "sym", "sym", "relay"), trial("punchd", "none", "cone", "direct"),
              trial("punchd", "cone", "prc", "direct")]
    rows = [line.split("|")[1].strip() for line in report.matrix_markdown(trials).splitlines()[2:]]
    assert rows == ["none/cone", "cone/prc", "sym/sym"]


def test_matrix_markdown_says_n_a_where_a_contender_did_not_apply() -> None:
    trials = [trial("wg-static", "none", "none", "direct", direct=0.1),
              trial("punchd", "none", "none", "direct", direct=0.2),
              trial("punchd", "cone", "sym", "direct", direct=0.6)]
    table = report.matrix_markdown(trials)
    assert "| cone/sym | **direct** direct 0.60 s; 1st ping 0.10 s | n/a |" in table


def test_dataplane_ratios_against_the_ceiling_and_nebula_in_the_same_scenario() -> None:
    samples = [
        sample("wg-static", "ceiling", 300.0), sample("wg-static", "ceiling", 320.0),
        sample("punchd", "direct", 240.0), sample("punchd", "direct", 250.0),
        sample("punchd", "direct", 260.0),
        sample("nebula", "direct", 200.0),
        sample("punchd", "relay", 150.0, path="relay"),
        sample("nebula", "relay", None, path="none", status="failed"),
    ]
    rows = {(r["contender"], r["scenario"]): r for r in report.dataplane_rows(samples)}
    assert rows[("wg-static", "ceiling")]["mbps"]["median"] == 310.0
    assert rows[("punchd", "direct")]["vs_ceiling"] == 250.0 / 310.0
    assert rows[("punchd", "direct")]["vs_nebula"] == 250.0 / 200.0
    # Nebula's relayed sample failed: no ratio against it, and the table says so.
    assert rows[("punchd", "relay")]["vs_nebula"] is None
    table = report.dataplane_markdown(samples)
    assert "| direct | punchd | direct | 250 (240-260) | 1.00 | 0.81x | 1.25x |" in table
    assert "| relay | nebula (1/1 failed) | failed | - | 1.00 | - | - |" in table


def test_relay_over_direct_only_where_the_wan_side_saw_both_paths() -> None:
    samples = [sample("punchd", "direct", 200.0), sample("punchd", "relay", 160.0, path="relay"),
               # Nebula's "direct" run went through its relay: no ratio for it.
               sample("nebula", "direct", 150.0, path="relay"),
               sample("nebula", "relay", 150.0, path="relay")]
    assert report.relay_over_direct(samples) == {"punchd": 0.8}
    assert "Relayed ÷ direct throughput (WAN-confirmed paths only): punchd 0.80x" in \
        report.dataplane_markdown(samples)


NEBULA_LOG = """\
time="t" level=info msg="Handshake message sent" udpAddrs="[198.18.1.10:4242]" vpnIp=198.19.100.3
time="t" level=info msg="Send handshake via relay" relay=198.19.100.1 vpnIp=198.19.100.3
time="t" level=info msg="Handshake message received" certName=b durationNs=1 udpAddr="<nil>"
time="t" level=info msg="Host roamed to new udp ip/port." certName=b newAddr="198.51.100.10:4242" udpAddr="<nil>"
"""


def test_nebula_path_follows_its_log() -> None:
    lines = NEBULA_LOG.splitlines()
    assert path_from_log("\n".join(lines[:2])) == "none"
    assert path_from_log("\n".join(lines[:3])) == "relay"
    assert path_from_log(NEBULA_LOG) == "direct"
    # A handshake with the lighthouse is not a path to B.
    assert path_from_log('msg="Handshake message received" certName=lh udpAddr="203.0.113.10:4242"') == "none"


@dataclass
class FakeHost:
    ip: str


@dataclass
class FakeSite:
    nat: str
    hosts: list[FakeHost]
    wan_ip: str


def test_wan_packets_count_both_directions_towards_peer_or_server() -> None:
    site = FakeSite("prc", [FakeHost("198.18.0.10")], "198.51.100.2")
    peer = FakeSite("sym", [FakeHost("198.18.1.10")], "198.51.100.10")
    lan = "198.18.0.10"
    flows = [Flow(lan, "198.51.100.10", 4242, packets_out=30, packets_in=25),  # to the peer
             Flow("198.51.100.10", "198.51.100.2", 4242, packets_out=4, packets_in=5),  # from it
             Flow(lan, "203.0.113.10", 40001, packets_out=12, packets_in=0),  # unanswered
             Flow(lan, "203.0.113.11", 3479, packets_out=3, packets_in=3),  # STUN
             Flow(lan, "192.0.2.1", 53, packets_out=9, packets_in=9)]  # elsewhere
    assert packets_towards(flows, site, peer) == {"direct": 29, "relay": 3}  # type: ignore[arg-type]
    # A public (nat none) peer is reached at its host address, not a router's.
    public_peer = FakeSite("none", [FakeHost("198.18.2.10")], "198.51.100.18")
    flows = [Flow("198.18.0.10", "198.18.2.10", 51820, packets_out=7, packets_in=8)]
    assert packets_towards(flows, site, public_peer)["direct"] == 7  # type: ignore[arg-type]


def test_compare_matrix_agrees_on_the_set_of_paths_not_their_order() -> None:
    from bench.compare import compare_matrix

    run_a = [trial("punchd", "prc", "prc", "direct"), trial("punchd", "prc", "prc", "relay"),
             trial("nebula", "sym", "sym", "relay")]
    run_b = [trial("punchd", "prc", "prc", "relay"), trial("punchd", "prc", "prc", "direct"),
             trial("nebula", "sym", "sym", "relay")]
    assert all(row["agree"] for row in compare_matrix(run_a, run_b))


def test_compare_matrix_flags_a_cell_that_relayed_once_and_a_missing_cell() -> None:
    from bench.compare import compare_matrix

    run_a = [trial("punchd", "prc", "prc", "direct")] * 3 + [trial("nebula", "sym", "sym", "relay")]
    run_b = [trial("punchd", "prc", "prc", "direct")] * 2 + [trial("punchd", "prc", "prc", "relay")]
    rows = {(r["contender"], r["pair"]): r for r in compare_matrix(run_a, run_b)}
    assert not rows[("punchd", "prc/prc")]["agree"]
    assert rows[("punchd", "prc/prc")]["b"] == "direct/relay"
    assert rows[("nebula", "sym/sym")]["b"] == "missing" and not rows[("nebula", "sym/sym")]["agree"]


def test_compare_ratios_within_15_percent_either_way() -> None:
    from bench.compare import compare_ratios

    def run(direct: float, relay: float) -> list[dict[str, Any]]:
        return [sample("punchd", "direct", direct), sample("punchd", "relay", relay, path="relay")]

    ok = compare_ratios(run(200, 100), run(200, 114))  # 0.50 and 0.57: 14% apart
    assert ok[0]["agree"] and abs(ok[0]["spread"] - 0.14) < 1e-9
    off = compare_ratios(run(200, 100), run(200, 116))
    assert not off[0]["agree"]
    # A "direct" sample that really went through the relay leaves no ratio: no agreement.
    dirty = [sample("punchd", "direct", 200, path="relay"), sample("punchd", "relay", 100, path="relay")]
    assert compare_ratios(run(200, 100), dirty)[0] == {
        "contender": "punchd", "a": 0.5, "b": None, "spread": None, "agree": False}


def test_compare_runs_reads_two_folders_and_gives_a_verdict(tmp_path: Any) -> None:
    import json

    from bench.compare import compare_runs

    for name, relay in (("a", 100.0), ("b", 105.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "matrix.json").write_text(json.dumps(
            {"trials": [trial("punchd", "prc", "prc", "direct", direct=0.3)]}))
        (folder / "dataplane.json").write_text(json.dumps(
            {"samples": [sample("punchd", "direct", 200.0),
                         sample("punchd", "relay", relay, path="relay")]}))
    agree, text = compare_runs(tmp_path / "a", tmp_path / "b")
    assert agree and "1 of 1 cells agree" in text and "5.0%" in text
    (tmp_path / "b" / "matrix.json").write_text(json.dumps(
        {"trials": [trial("punchd", "prc", "prc", "relay")]}))
    agree, text = compare_runs(tmp_path / "a", tmp_path / "b")
    assert not agree and "| punchd | prc/prc | direct | relay |" in text
