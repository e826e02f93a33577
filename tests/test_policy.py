"""The path policy, rule by rule (see the theory of operation in punchd/daemon/policy.py).

Every test feeds facts and float times and checks one rule's decision; no trio, no
clock, no backend. Removing a rule from the policy makes its test fail.
"""

from __future__ import annotations

import base64
import math

import pytest

from punchd.daemon.paths import PathDecision
from punchd.daemon.policy import (
    CONFIRM_S,
    DISTRUST_S,
    HANDSHAKE_WAIT_S,
    PathPolicy,
    PeerFacts,
    SessionFacts,
)
from punchd.wg.base import WgDeviceState, WgPeerState
from punchd.wire import api

PEER_KEY = base64.b64encode(bytes(range(32))).decode()
SMALL_PROBE = bytes(32)  # every probe key compares larger than this one ...
LARGE_PROBE = b"\xff" * 32  # ... and smaller than this one
DIRECT = "192.0.2.7:51820"
OTHER = "192.0.2.8:51820"
RELAY = "203.0.113.5:40001"
T0 = 1_700_000_000.0


def peer(probe: bytes = SMALL_PROBE, **fields: object) -> api.Node:
    base: dict[str, object] = dict(
        id="n2", network="net", name="beta", signing_key="s", wg_public_key=PEER_KEY,
        probe_public_key=base64.b64encode(probe).decode(), listen_port=51820,
        ipv4="198.19.0.2/24")
    return api.Node(**(base | fields))  # type: ignore[arg-type]


def peers(node: api.Node | None = None) -> dict[str, api.Node]:
    node = node or peer()
    return {node.id: node}


def wg(endpoint: str | None = DIRECT, *, handshake: float | None = None, rx: int = 0,
       tx: int = 0) -> WgDeviceState:
    return WgDeviceState(name="pdt", public_key=None, listen_port=51820, fwmark=0, peers=(
        WgPeerState(public_key=PEER_KEY, endpoint=endpoint, allowed_ips=(),
                    persistent_keepalive=0, last_handshake=handshake, rx_bytes=rx,
                    tx_bytes=tx),))


def selected(endpoint: str = DIRECT, kind: str = "srflx", rtt: float = 0.012,
             relay: str | None = None) -> dict[str, PeerFacts]:
    return {"n2": PeerFacts(session=SessionFacts(state="connected", selected=endpoint,
                                                 selected_kind=kind, selected_rtt=rtt,
                                                 relay=relay), relay=relay)}


PUNCHING = {"n2": PeerFacts(session=SessionFacts(state="punching"))}


def policy(own_probe: bytes = LARGE_PROBE) -> PathPolicy:
    return PathPolicy(own_probe)


def desired_peer(p: PathPolicy, actual: WgDeviceState | None = None, now: float = T0,
                 node: api.Node | None = None):  # type: ignore[no-untyped-def]
    (wanted,) = p.desired(peers(node), actual, now, private_key_public="k",
                          listen_port=51820, keepalive=25).peers
    return wanted


# -- rule 1: punched path ------------------------------------------------------------------


def test_a_selected_pair_is_the_direct_endpoint_with_its_rtt() -> None:
    p = policy()
    p.update(peers(), selected(), None, T0, punching=True)
    assert p.paths["n2"] == PathDecision(endpoint=DIRECT, kind="direct", source="punch",
                                         rtt_ms=12.0)


def test_a_selected_relay_pair_is_a_relay_decision() -> None:
    p = policy()
    p.update(peers(), selected(RELAY, kind="relay", relay=RELAY), None, T0, punching=True)
    assert p.paths["n2"].kind == "relay" and p.paths["n2"].source == "relay"
    assert p.paths["n2"].endpoint == RELAY


# -- rule 2: pending -------------------------------------------------------------------------


@pytest.mark.parametrize("facts", [{}, PUNCHING], ids=["no session yet", "punching"])
def test_while_punching_a_peer_never_given_an_endpoint_has_none(
        facts: dict[str, PeerFacts]) -> None:
    p = policy()
    p.update(peers(peer(candidates=(api.Candidate(kind="host", address=OTHER),))), facts,
             None, T0, punching=True)
    assert p.paths["n2"] == PathDecision(endpoint=None, kind="direct", source="pending")


def test_a_peer_with_an_endpoint_in_wireguard_is_not_pending() -> None:
    p = policy()
    p.endpoint_set(PEER_KEY, OTHER)
    node = peer(candidates=(api.Candidate(kind="host", address=OTHER),))
    p.update(peers(node), PUNCHING, None, T0, punching=True)
    assert p.paths["n2"].source == "candidate"


# -- rule 3: candidate guess -----------------------------------------------------------------


def test_without_punching_the_best_candidate_is_guessed_and_kept_while_offered() -> None:
    p = policy()
    host = api.Candidate(kind="host", address=OTHER, priority=10)
    srflx = api.Candidate(kind="srflx", address=DIRECT, priority=5)
    p.update(peers(peer(candidates=(host, srflx))), {}, None, T0, punching=False)
    assert p.paths["n2"] == PathDecision(endpoint=DIRECT, kind="direct")  # reflexive first
    p.paths["n2"] = PathDecision(endpoint=OTHER, kind="direct")
    p.update(peers(peer(candidates=(host, srflx))), {}, None, T0, punching=False)
    assert p.paths["n2"].endpoint == OTHER  # still offered: kept
    p.update(peers(peer(candidates=(srflx,))), {}, None, T0, punching=False)
    assert p.paths["n2"].endpoint == DIRECT


def test_a_removed_peer_loses_its_decision() -> None:
    p = policy()
    p.update(peers(), selected(), None, T0, punching=True)
    p.update({}, {}, None, T0, punching=True)
    assert p.paths == {}


# -- rule 4: no allowed IPs while pending ------------------------------------------------------


def test_a_peer_waiting_for_its_path_has_no_endpoint_keepalive_or_allowed_ips() -> None:
    p = policy()
    p.update(peers(), PUNCHING, None, T0, punching=True)
    wanted = desired_peer(p)
    assert (wanted.endpoint, wanted.allowed_ips, wanted.persistent_keepalive) == (None, (), 0)


def test_a_waiting_peer_that_already_shook_hands_gets_its_allowed_ips() -> None:
    # It reached us first (WireGuard answers a handshake from any known peer): its
    # traffic must not be dropped while our own punch session is still deciding.
    p = policy()
    actual = wg(handshake=T0, rx=92, tx=92)
    p.update(peers(), PUNCHING, actual, T0, punching=True)
    assert desired_peer(p, actual).allowed_ips == ("198.19.0.2/32",)


def test_a_decided_path_brings_allowed_ips_and_keepalive() -> None:
    p = policy()
    p.update(peers(peer(ipv6="fd00::2/64")), {}, None, T0, punching=False)
    p.paths["n2"] = PathDecision(endpoint=DIRECT, kind="direct")
    wanted = desired_peer(p, node=peer(ipv6="fd00::2/64"))
    assert wanted.allowed_ips == ("198.19.0.2/32", "fd00::2/128")
    assert (wanted.endpoint, wanted.persistent_keepalive) == (DIRECT, 25)


def test_an_unapproved_peer_is_not_in_wireguard() -> None:
    p = policy()
    node = peer(approved=False)
    p.update(peers(node), selected(), None, T0, punching=True)
    assert p.desired(peers(node), None, T0, private_key_public="k", listen_port=51820,
                     keepalive=25).peers == ()


# -- rule 5: one initiator -------------------------------------------------------------------


def test_the_initiator_starts_the_handshake_at_once() -> None:
    p = policy(LARGE_PROBE)
    p.update(peers(), selected(), None, T0, punching=True)
    p.path_found("n2", T0)
    assert p.initiator(peer())
    assert desired_peer(p, now=T0).persistent_keepalive == 25


def test_the_responder_waits_for_the_handshake_then_starts_its_own() -> None:
    p = policy(SMALL_PROBE)
    node = peer(probe=LARGE_PROBE)
    assert not p.initiator(node)
    p.update(peers(node), selected(), None, T0, punching=True)
    p.path_found("n2", T0)
    assert desired_peer(p, now=T0 + 0.5, node=node).persistent_keepalive == 0
    assert p.next_deadline(T0 + 0.5) == T0 + HANDSHAKE_WAIT_S
    assert desired_peer(p, now=T0 + HANDSHAKE_WAIT_S, node=node).persistent_keepalive == 25


def test_the_responder_turns_keepalive_on_once_the_handshake_happened() -> None:
    p = policy(SMALL_PROBE)
    node = peer(probe=LARGE_PROBE)
    p.update(peers(node), selected(), None, T0, punching=True)
    p.path_found("n2", T0)
    actual = wg(handshake=T0 + 0.1)
    assert desired_peer(p, actual, now=T0 + 0.2, node=node).persistent_keepalive == 25


def test_no_keepalive_before_the_first_endpoint() -> None:
    p = policy()
    p.update(peers(), {}, None, T0, punching=False)  # no candidates: no guess
    assert p.paths["n2"].endpoint is None
    assert desired_peer(p).persistent_keepalive == 0


# -- rules 6 and 7: insisting on an endpoint ---------------------------------------------------


def test_a_changed_decision_forces_the_endpoint() -> None:
    p = policy()
    p.endpoint_set(PEER_KEY, OTHER)
    p.update(peers(), selected(DIRECT), None, T0, punching=True)
    device = p.desired(peers(), None, T0, private_key_public="k", listen_port=51820,
                       keepalive=25)
    assert device.force_endpoint == {PEER_KEY}
    p.endpoint_set(PEER_KEY, DIRECT)
    device = p.desired(peers(), None, T0, private_key_public="k", listen_port=51820,
                       keepalive=25)
    assert device.force_endpoint == frozenset()


def test_a_direct_path_wins_over_wireguard_roaming_onto_the_relay() -> None:
    p = policy()
    p.endpoint_set(PEER_KEY, DIRECT)
    actual = wg(RELAY, handshake=T0)
    p.update(peers(), selected(DIRECT, relay=RELAY), actual, T0, punching=True)
    device = p.desired(peers(), actual, T0, private_key_public="k", listen_port=51820,
                       keepalive=25)
    assert device.force_endpoint == {PEER_KEY}
    # Roamed to some other direct address: WireGuard's choice stands.
    actual = wg(OTHER, handshake=T0)
    p.update(peers(), selected(DIRECT, relay=RELAY), actual, T0, punching=True)
    device = p.desired(peers(), actual, T0, private_key_public="k", listen_port=51820,
                       keepalive=25)
    assert device.force_endpoint == frozenset()


# -- rules 8 and 9: probation and distrust -----------------------------------------------------


def on_probation(p: PathPolicy, **counters: int) -> None:
    p.update(peers(), selected(relay=RELAY), wg(**counters), T0, punching=True)


def test_a_handshake_after_the_switch_confirms_the_path() -> None:
    p = policy()
    on_probation(p, tx=100)
    p.update(peers(), selected(relay=RELAY), wg(handshake=T0 + 1, tx=200), T0 + 1,
             punching=True)
    assert p.confirmed("n2")


def test_bytes_received_on_the_path_confirm_it() -> None:
    p = policy()
    on_probation(p, rx=10, tx=100)
    p.update(peers(), selected(relay=RELAY), wg(rx=50, tx=200), T0 + 1, punching=True)
    assert p.confirmed("n2")


def test_bytes_received_while_wireguard_is_elsewhere_prove_nothing() -> None:
    p = policy()
    on_probation(p, rx=10, tx=100)
    p.update(peers(), selected(relay=RELAY), wg(RELAY, rx=50, tx=200), T0 + 1, punching=True)
    p.update(peers(), selected(relay=RELAY), wg(rx=50, tx=300), T0 + 2, punching=True)
    assert not p.confirmed("n2")


def test_sending_without_proof_for_confirm_s_distrusts_the_path_and_uses_the_relay() -> None:
    p = policy()
    on_probation(p, tx=100)
    assert p.next_deadline(T0) == T0 + CONFIRM_S
    early = p.update(peers(), selected(relay=RELAY), wg(tx=500), T0 + CONFIRM_S - 1,
                     punching=True)
    assert early == [] and p.paths["n2"].source == "punch"
    late = p.update(peers(), selected(relay=RELAY), wg(tx=900), T0 + CONFIRM_S + 0.1,
                    punching=True)
    assert [(d.node_id, d.endpoint, d.seconds) for d in late] == [("n2", DIRECT, DISTRUST_S)]
    assert p.paths["n2"] == PathDecision(endpoint=RELAY, kind="relay", source="relay")
    assert not p.confirmed("n2")


def test_a_distrusted_path_is_trusted_again_after_distrust_s() -> None:
    p = policy()
    on_probation(p, tx=100)
    p.update(peers(), selected(relay=RELAY), wg(tx=900), T0 + CONFIRM_S + 1, punching=True)
    until = T0 + CONFIRM_S + 1 + DISTRUST_S
    assert p.next_deadline(T0 + CONFIRM_S + 2) == until
    p.update(peers(), selected(relay=RELAY), wg(tx=900), until + 0.1, punching=True)
    assert p.paths["n2"].source == "punch"


def test_without_a_relay_a_distrusted_path_stays_and_is_reported_once() -> None:
    p = policy()
    p.update(peers(), selected(), wg(tx=100), T0, punching=True)
    first = p.update(peers(), selected(), wg(tx=900), T0 + CONFIRM_S + 1, punching=True)
    assert len(first) == 1 and p.paths["n2"].source == "punch"
    p.update(peers(), selected(), wg(tx=900), T0 + CONFIRM_S + 2, punching=True)
    again = p.update(peers(), selected(), wg(tx=1900), T0 + 2 * CONFIRM_S + 3, punching=True)
    assert again == []


def test_nothing_is_due_without_waits() -> None:
    assert policy().next_deadline(T0) == math.inf


# -- rule 10: status follows WireGuard ---------------------------------------------------------


def test_status_shows_none_without_a_live_handshake() -> None:
    p = policy()
    p.update(peers(), selected(), None, T0, punching=True)
    assert p.shown_path("n2", wg().peers[0], T0) == "none"
    assert p.shown_path("n2", wg(handshake=T0 - 200).peers[0], T0) == "none"
    assert p.shown_path("n2", None, T0) == "none"


def test_status_shows_relay_when_wireguard_uses_the_relay() -> None:
    p = policy()
    p.update(peers(), selected(relay=RELAY), None, T0, punching=True)
    shown = wg(RELAY, handshake=T0).peers[0]
    assert p.shown_path("n2", shown, T0) == "relay"
    assert p.shown_rtt_ms("n2", shown) is None  # the RTT measured was the direct path's


def test_status_shows_direct_when_wireguard_uses_the_direct_path_whatever_was_decided() -> None:
    # The demo's prc2 showed cone1 as "relay" at cone1's own public endpoint: the decision
    # said relay (distrusted), WireGuard had roamed back onto the direct path.
    p = policy()
    on_probation(p, tx=100)
    p.update(peers(), selected(relay=RELAY), wg(tx=900), T0 + CONFIRM_S + 1, punching=True)
    assert p.paths["n2"].kind == "relay"
    shown = wg(DIRECT, handshake=T0 + CONFIRM_S + 2).peers[0]
    assert p.shown_path("n2", shown, T0 + CONFIRM_S + 2) == "direct"


def test_status_shows_the_rtt_of_the_path_wireguard_uses() -> None:
    p = policy()
    p.update(peers(), selected(), None, T0, punching=True)
    assert p.shown_rtt_ms("n2", wg(handshake=T0).peers[0]) == 12.0


def test_an_address_is_relay_only_when_it_is_the_peers_relay() -> None:
    p = policy()
    p.update(peers(), selected(relay=RELAY), None, T0, punching=True)
    assert p.kind_of("n2", RELAY) == "relay"
    assert p.kind_of("n2", DIRECT) == "direct"
    assert p.kind_of("n2", None) == "direct"


def test_host_candidates_stay_within_what_the_server_accepts() -> None:
    from punchd.daemon.paths import host_candidates

    many = host_candidates([f"10.0.{i}.1/24" for i in range(100)], 51820)
    assert len(many) == api.MAX_CANDIDATES - 2
    assert many[0].address == "10.0.0.1:51820"


def test_srflx_is_added_unless_it_is_a_host_candidate_or_unknown() -> None:
    from punchd.daemon.paths import host_candidates, with_srflx

    host = host_candidates(["192.0.2.7/24"], 51820)
    assert with_srflx(host, None) == host
    assert with_srflx(host, DIRECT) == host  # no NAT in between: the host candidate says it
    (*_, srflx) = with_srflx(host, "203.0.113.9:40000")
    assert (srflx.kind, srflx.address) == ("srflx", "203.0.113.9:40000")
    assert srflx.priority >> 24 == 100 and srflx.priority < host[0].priority  # RFC 8445 §5.1.2.1


# -- facts: what the adapters know, as the policy reads it -------------------------------------


class _Session:
    """The attributes of a PunchSession that the policy's facts read."""

    def __init__(self, selected: tuple[str, int] | None, kind: str | None,
                 relay: tuple[str, int] | None) -> None:
        self.state = "connected" if selected else "punching"
        self.selected, self.selected_kind, self.selected_rtt = selected, kind, 0.012
        self.relay = relay


def test_peer_facts_format_what_the_session_and_the_relay_say() -> None:
    from punchd.daemon.policy import peer_facts

    session = _Session(("192.0.2.7", 51820), "relay", ("203.0.113.5", 40001))
    facts = peer_facts(session, ("203.0.113.5", 40001))  # type: ignore[arg-type]
    assert facts == PeerFacts(session=SessionFacts(
        state="connected", selected=DIRECT, selected_kind="relay", selected_rtt=0.012,
        relay=RELAY), relay=RELAY)
    v6 = peer_facts(_Session(("2001:db8::7", 51820), "srflx", None), None)  # type: ignore[arg-type]
    assert v6.session is not None and v6.session.selected == "[2001:db8::7]:51820"
    assert v6.session.relay is None and v6.relay is None
    assert peer_facts(None, None) == PeerFacts()  # no session: one is about to start (rule 2)


def test_the_policy_reads_no_clock_and_does_no_io() -> None:
    import ast
    import inspect

    from punchd.daemon import policy as module

    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"trio", "socket", "time", "asyncio", "os"}
