"""punchd.wire.addr: the one endpoint parser and formatter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punchd.errors import AddrError, CodecError
from punchd.wire.addr import format_addr, normalise_addr, parse_addr, parse_host_port


@pytest.mark.parametrize(("text", "want"), [
    ("1.2.3.4:5", ("1.2.3.4", 5)),
    ("[::1]:51820", ("::1", 51820)),
    ("[2001:DB8::01]:65535", ("2001:db8::1", 65535)),
])
def test_parse_addr_accepts_ip_port(text: str, want: tuple[str, int]) -> None:
    assert parse_addr(text) == want


@pytest.mark.parametrize("text", [
    "", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:-1", "1.2.3.4:+5",
    "1.2.3.4: 5", "1.2.3.4:\u0665", "::1:5", "[1.2.3.4]:5", "[::1]", "example.com:5",
    "1.2.3:5", "[::1]:5:6", "[]:5",
])
def test_parse_addr_refuses_with_one_codec_error(text: str) -> None:
    with pytest.raises(AddrError) as info:
        parse_addr(text)
    assert isinstance(info.value, CodecError)
    assert repr(text) in str(info.value)


def test_parse_host_port_takes_names_and_ips() -> None:
    assert parse_host_port("Signal.Example.:443") == ("signal.example", 443)
    assert parse_host_port("[::1]:53") == ("::1", 53)
    assert parse_host_port("10.0.0.1:53") == ("10.0.0.1", 53)
    assert parse_host_port("0.0.0.0:0", port_zero=True) == ("0.0.0.0", 0)
    with pytest.raises(AddrError):
        parse_host_port("0.0.0.0:0")
    for bad in ("-bad.example:1", "a..b:1", "[name]:1", "under_score:1", "x" * 64 + ":1", "::1:53"):
        with pytest.raises(AddrError):
            parse_host_port(bad)


def test_format_addr_brackets_v6_only() -> None:
    assert format_addr(("1.2.3.4", 5)) == "1.2.3.4:5"
    assert format_addr(("2001:db8::1", 5)) == "[2001:db8::1]:5"
    assert format_addr(("signal.example", 443)) == "signal.example:443"
    assert normalise_addr("[2001:DB8:0::1]:7") == "[2001:db8::1]:7"


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_round_trip(ip: object, port: int) -> None:
    addr = (str(ip), port)
    assert parse_addr(format_addr(addr)) == addr


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_addr_error(text: str) -> None:
    try:
        host, port = parse_addr(text)
    except AddrError:
        return
    assert 1 <= port <= 65535 and format_addr((host, port)) == normalise_addr(text)
