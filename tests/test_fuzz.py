"""Issue #14: every parser that takes bytes or text from outside, fuzzed (a few hundred
inputs each here; ``python -m bench fuzz`` runs 1e5). Only the codec's own error may
come out. The targets live in :mod:`tests.fuzz_targets`, shared with the bench.

Crashes found in code this file does not own are pinned as the smallest reproducer,
``xfail(strict=True)``, below; while one is open its exception is tolerated by the
fuzz run of that target (``KNOWN``) so the run still catches every other crash. When
the owner fixes it the reproducer XPASSes, strict xfail fails the suite, and the
lead removes the xfail and the ``KNOWN`` entry together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from meshdns.server import Resolver
from punchd.daemon.state import StateDir
from punchd.errors import ConfigError, Invalid

from .fuzz_targets import _ZONES, TARGETS, Target, _dns_query, check_api_body

EXAMPLES = {"dns-tcp": 200, "control-serve": 200, "config": 200, "relay": 300}
DEFAULT_EXAMPLES = 400

# Open findings (see the reproducers below): target -> exceptions tolerated meanwhile.
KNOWN: dict[str, tuple[type[BaseException], ...]] = {}


def _fuzz_test(target: Target) -> Callable[[], None]:
    known = KNOWN.get(target.name, ())

    @settings(max_examples=EXAMPLES.get(target.name, DEFAULT_EXAMPLES), deadline=None,
              derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(target.strategy)
    def run(value: object) -> None:
        try:
            target.check(value)
        except known:
            pass

    return run


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_the_codec_error_comes_out(name: str) -> None:
    _fuzz_test(TARGETS[name])()


def test_every_target_of_the_issue_is_covered() -> None:
    assert set(TARGETS) == {"stun", "probe", "relay", "token", "signed", "dns", "dns-tcp",
                            "control-decode", "control-serve", "api-body", "config",
                            "natpmp", "pcp", "upnp"}


# -- reproducers of the crashes the campaign found (fixed) -------------------------------------

BAD_UTF8_REQUEST = b'{"cmd": "\xff"}\n'


def test_control_serve_answers_invalid_utf8_with_ok_false() -> None:
    from .fuzz_targets import check_control_serve
    assert check_control_serve([BAD_UTF8_REQUEST]) == "refused"


def test_api_body_with_invalid_utf8_is_invalid() -> None:
    assert check_api_body(("PunchCreate", b'{"peer": "\xff"}')) == Invalid.__name__


def test_config_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (state.network_dir("office")).mkdir(parents=True)
    (state.network_dir("office") / "config.toml").write_bytes(b"\xff")
    with pytest.raises(ConfigError):
        state.load_config("office")


def test_dns_answer_is_bytes() -> None:
    reply = Resolver(_ZONES).answer(_dns_query("alpha.office.mesh", "A"), None)
    assert type(reply) is bytes


def test_dns_label_with_a_dot_gets_an_answer() -> None:
    query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # header, one question
             b"\x01.\x06office\x04mesh\x00\x00\x01\x00\x01")  # label "." . office.mesh A IN
    assert Resolver(_ZONES).answer(query, None) is not None
