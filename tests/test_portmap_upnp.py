"""UPnP IGD pieces: SSDP, the description, SOAP bodies and answers, hostile XML, fuzz.

The files in ``tests/data/miniupnpd/`` are what Debian's miniupnpd 2.3.1 sent in the
lab (``netns_tests/test_portmap.py``'s gateway): its SSDP answer, its root description
and its answers to GetExternalIPAddress, AddPortMapping (success, and a fault for a port
its ``deny`` rule refuses) and DeletePortMapping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchd.errors import PortmapParseError
from punchd.portmap import upnp

DATA = Path(__file__).parent / "data" / "miniupnpd"
GATEWAY = "198.18.0.1"
SSDP = (DATA / "ssdp-answer.txt").read_bytes()
DESCRIPTION = (DATA / "rootDesc.xml").read_bytes()
LOCATION = upnp.parse_ssdp_response(SSDP, source_ip=GATEWAY).location
WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"


def test_msearch_datagram() -> None:
    data = upnp.msearch(GATEWAY)
    assert data.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 198.18.0.1:1900\r\n")
    assert b'MAN: "ssdp:discover"\r\n' in data and b"MX: 1\r\n" in data
    assert b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" in data
    assert data.endswith(b"\r\n\r\n")


def test_miniupnpd_ssdp_answer() -> None:
    answer = upnp.parse_ssdp_response(SSDP, source_ip=GATEWAY)
    assert answer.location.startswith("http://198.18.0.1:") and \
        answer.location.endswith("/rootDesc.xml")
    assert answer.st == upnp.SEARCH_TARGET and "MiniUPnPd/2.3.1" in answer.server


@pytest.mark.parametrize(("data", "message"), [
    (SSDP.replace(b"200 OK", b"404 Not Found"), "not HTTP/1.x 200"),
    (b"NOTIFY * HTTP/1.1\r\n\r\n", "not HTTP"),
    (SSDP.replace(b"LOCATION", b"X-WHERE"), "without LOCATION"),
    (SSDP.replace(b"http://198.18.0.1", b"http://203.0.113.66"), "away from the gateway"),
    (SSDP.replace(b"http://198.18.0.1", b"https://198.18.0.1"), "not an http"),
    (SSDP.replace(b"http://198.18.0.1", b"http://gateway.local"), "away from the gateway"),
    (SSDP.replace(b"rootDesc", b"\xffoot"), "not ASCII"),
    (SSDP.replace(b"\r\nEXT:", b"\r\n: x"), "without a name"),
    (SSDP + b"x" * upnp.MAX_SSDP, "bytes"),
])
def test_ssdp_answers_refused(data: bytes, message: str) -> None:
    with pytest.raises(PortmapParseError, match=message):
        upnp.parse_ssdp_response(data, source_ip=GATEWAY)


def test_ssdp_location_with_a_bad_port_is_refused() -> None:
    bad = SSDP.replace(LOCATION.encode(), b"http://198.18.0.1:99999/rootDesc.xml")
    with pytest.raises(PortmapParseError, match="not a URL"):
        upnp.parse_ssdp_response(bad, source_ip=GATEWAY)


def test_miniupnpd_description_gives_the_wanipconnection2_control_url() -> None:
    service = upnp.parse_description(DESCRIPTION, LOCATION)
    assert service.service_type == WANIP2
    assert service.control_url == LOCATION.replace("/rootDesc.xml", "/ctl/IPConn")


def _description(services: str, url_base: str = "") -> bytes:
    return (f'<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0">{url_base}'
            f"<device><serviceList>{services}</serviceList></device></root>").encode()


def _service(kind: str, control: str) -> str:
    return f"<service><serviceType>{kind}</serviceType><controlURL>{control}</controlURL></service>"


def test_preference_order_and_url_base() -> None:
    both = _service("urn:schemas-upnp-org:service:WANPPPConnection:1", "/ppp") + \
        _service("urn:schemas-upnp-org:service:WANIPConnection:1", "ip1")
    service = upnp.parse_description(_description(both), "http://192.0.2.1:5000/d/r.xml")
    assert service == upnp.IgdService("urn:schemas-upnp-org:service:WANIPConnection:1",
                                      "http://192.0.2.1:5000/d/ip1")
    ppp = _description(_service("urn:schemas-upnp-org:service:WANPPPConnection:1", "/ppp"),
                       "<URLBase>http://192.0.2.1:80/</URLBase>")
    assert upnp.parse_description(ppp, "http://192.0.2.1:5000/r.xml").control_url == \
        "http://192.0.2.1:80/ppp"


@pytest.mark.parametrize(("body", "message"), [
    (_description(_service("urn:schemas-upnp-org:service:Layer3Forwarding:1", "/l3f")),
     "names no WANIPConnection"),
    (_description(_service(WANIP2, "http://203.0.113.66/ctl")), "away from the gateway"),
    (_description(_service(WANIP2, "/ctl"), "<URLBase>http://203.0.113.66/</URLBase>"),
     "away from the gateway"),
    (DESCRIPTION[:-40], "malformed XML"),
    (b"\x00" + DESCRIPTION, "malformed XML"),
])
def test_descriptions_refused(body: bytes, message: str) -> None:
    with pytest.raises(PortmapParseError, match=message):
        upnp.parse_description(body, "http://192.0.2.1:5000/rootDesc.xml")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><root>&lol3;</root>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE root [<!ENTITY x SYSTEM "file:///etc/passwd">]><root>&x;</root>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY,
                                  b'<?xml version="1.0"?><!DOCTYPE root><root/>'])
def test_dtds_and_entities_are_refused(body: bytes) -> None:
    with pytest.raises(PortmapParseError, match="DTD or entities"):
        upnp.parse_xml(body)


def test_bodies_over_the_cap_are_refused_before_parsing() -> None:
    with pytest.raises(PortmapParseError, match="at most"):
        upnp.parse_xml(b"<a>" + b" " * upnp.MAX_BODY + b"</a>")


def test_soap_request_bodies() -> None:
    headers, body = upnp.add_port_mapping(WANIP2, external_port=51820, internal_port=51820,
                                          internal_client="198.18.0.10", lease=7200,
                                          description="punchd <&>")
    assert headers["SOAPAction"] == f'"{WANIP2}#AddPortMapping"'
    assert headers["Content-Type"].startswith("text/xml")
    root = upnp.parse_xml(body)
    action = root[0][0]
    assert action.tag == f"{{{WANIP2}}}AddPortMapping"
    args = {child.tag: child.text or "" for child in action}
    assert args == {"NewRemoteHost": "", "NewExternalPort": "51820", "NewProtocol": "UDP",
                    "NewInternalPort": "51820", "NewInternalClient": "198.18.0.10",
                    "NewEnabled": "1", "NewPortMappingDescription": "punchd <&>",
                    "NewLeaseDuration": "7200"}
    _, delete = upnp.delete_port_mapping(WANIP2, external_port=51820)
    assert [c.tag for c in upnp.parse_xml(delete)[0][0]] == \
        ["NewRemoteHost", "NewExternalPort", "NewProtocol"]
    _, get = upnp.get_external_ip(WANIP2)
    assert upnp.parse_xml(get)[0][0].tag == f"{{{WANIP2}}}GetExternalIPAddress"


def test_miniupnpd_soap_answers() -> None:
    answer = upnp.parse_soap_response((DATA / "extip.xml").read_bytes(), "GetExternalIPAddress")
    assert isinstance(answer, dict) and upnp.external_ip_from(answer) == "198.51.100.2"
    assert upnp.parse_soap_response((DATA / "add.xml").read_bytes(), "AddPortMapping") == {}
    assert upnp.parse_soap_response((DATA / "del.xml").read_bytes(), "DeletePortMapping") == {}
    fault = upnp.parse_soap_response((DATA / "fault.xml").read_bytes(), "AddPortMapping")
    assert fault == upnp.SoapFault(code=606, description="Action not authorized")


def test_soap_answers_refused() -> None:
    add = (DATA / "add.xml").read_bytes()
    with pytest.raises(PortmapParseError, match="to DeletePortMapping"):
        upnp.parse_soap_response(add, "DeletePortMapping")
    with pytest.raises(PortmapParseError, match="not Envelope"):
        upnp.parse_soap_response(b"<html/>", "AddPortMapping")
    with pytest.raises(PortmapParseError, match="without a Body"):
        upnp.parse_soap_response(f'<s:Envelope xmlns:s="{upnp.SOAP_ENV}"/>'.encode(), "X")
    with pytest.raises(PortmapParseError, match="not IPv4"):
        upnp.external_ip_from({"NewExternalIPAddress": "<script>"})


def test_fault_without_upnp_error_uses_faultstring() -> None:
    body = (f'<s:Envelope xmlns:s="{upnp.SOAP_ENV}"><s:Body><s:Fault>'
            "<faultstring>Server busy</faultstring></s:Fault></s:Body></s:Envelope>").encode()
    assert upnp.parse_soap_response(body, "AddPortMapping") == upnp.SoapFault(0, "Server busy")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.sampled_from([SSDP, DESCRIPTION, (DATA / "fault.xml").read_bytes()]).flatmap(
        lambda v: st.tuples(st.integers(0, len(v)), st.binary(max_size=8)).map(
            lambda cut: v[:cut[0]] + cut[1] + v[cut[0] + len(cut[1]):])),
))
def test_fuzz_only_the_codec_error_comes_out(data: bytes) -> None:
    for parse in (lambda d: upnp.parse_ssdp_response(d, source_ip=GATEWAY),
                  lambda d: upnp.parse_description(d, LOCATION),
                  lambda d: upnp.parse_soap_response(d, "AddPortMapping")):
        try:
            parse(data)
        except PortmapParseError:
            pass
