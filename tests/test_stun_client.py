"""The STUN client transaction: RFC 8489 retransmit schedule, checks, loss, fake clock."""

from __future__ import annotations

import random

import pytest

from punchd.discovery.stun_client import StunTransaction
from punchd.wire import stun
from signal_server.stun_server import StunCore

SERVER, ALT = ("192.0.2.10", 3478), ("192.0.2.11", 3479)
MAPPED = ("198.51.100.7", 40001)


def run(tx: StunTransaction, answer, until: float = 60.0) -> list[float]:  # type: ignore[no-untyped-def]
    """Drive a transaction on a fake clock; ``answer(request, now)`` may return a reply."""
    now, sent_at = 0.0, []
    while tx.state == "waiting" and now <= until:
        while (data := tx.datagram_to_send(now)) is not None:
            sent_at.append(now)
            reply = answer(data, now)
            if reply is not None:
                tx.handle_datagram(reply[0], reply[1], now + 0.01)
        deadline = tx.next_deadline()
        if deadline is None:
            break
        now = deadline
        tx.handle_timer(now)
    return sent_at


def test_rfc8489_schedule_and_timeout() -> None:
    tx = StunTransaction(SERVER, 0.0)
    sent = run(tx, lambda data, now: None)
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert tx.state == "failed" and "7 requests" in (tx.error or "")


def test_success_against_the_real_responder_logic() -> None:
    core = StunCore(SERVER, ALT)
    tx = StunTransaction(SERVER, 0.0)

    def answer(data: bytes, now: float):  # type: ignore[no-untyped-def]
        res = core.handle(data, MAPPED, SERVER)
        return None if res is None else (res[0], res[1])

    assert run(tx, answer) == [0.0]
    assert tx.state == "succeeded" and tx.result is not None
    assert tx.result.mapped == MAPPED
    assert tx.result.other_address == ALT and tx.result.response_origin == SERVER
    assert tx.result.rtt == pytest.approx(0.01)


def test_change_request_answer_from_the_alternate_address_is_accepted() -> None:
    core = StunCore(SERVER, ALT)
    tx = StunTransaction(SERVER, 0.0, change=stun.CHANGE_IP | stun.CHANGE_PORT)
    run(tx, lambda data, now: core.handle(data, MAPPED, SERVER))
    assert tx.state == "succeeded" and tx.result and tx.result.source == ALT


def test_answers_that_are_not_ours_are_ignored() -> None:
    tx = StunTransaction(SERVER, 0.0)
    tx.datagram_to_send(0.0)
    other = stun.binding_success(b"x" * 12, MAPPED)
    assert not tx.handle_datagram(other, SERVER, 0.1)  # wrong transaction id
    ours = stun.binding_success(tx.transaction_id, MAPPED)
    assert not tx.handle_datagram(ours, ("203.0.113.99", 3478), 0.1)  # from elsewhere
    assert not tx.handle_datagram(b"\x00garbage", SERVER, 0.1)
    assert tx.state == "waiting" and tx.ignored == 3
    assert tx.handle_datagram(ours, SERVER, 0.2) and tx.state == "succeeded"


def test_error_response_fails_the_transaction() -> None:
    core = StunCore(SERVER)  # no alternate: CHANGE-REQUEST gets 420
    tx = StunTransaction(SERVER, 0.0, change=stun.CHANGE_PORT)
    run(tx, lambda data, now: core.handle(data, MAPPED, SERVER))
    assert tx.state == "failed" and "420" in (tx.error or "")


@pytest.mark.parametrize("seed", range(20))
def test_lossy_network_still_succeeds_within_the_schedule(seed: int) -> None:
    rng = random.Random(seed)
    core = StunCore(SERVER, ALT)
    tx = StunTransaction(SERVER, 0.0)

    def lossy(data: bytes, now: float):  # type: ignore[no-untyped-def]
        if rng.random() < 0.6:  # 60% of requests or answers lost
            return None
        return core.handle(data, MAPPED, SERVER)

    sent = run(tx, lossy)
    # With 60% loss, seven tries fail only with probability 0.6**7 ≈ 2.8%; these seeds succeed.
    assert tx.state == "succeeded", (seed, sent)
    assert len(sent) <= 7
