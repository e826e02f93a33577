"""UPnP IGD, sans-IO: the SSDP search, the device description, the SOAP actions.

Three steps, each a pure function here; the HTTP requests themselves are the client's
(``punchd/portmap/client.py``, httpx on trio):

1. *Discovery* (UPnP Device Architecture 1.1 §1.3): an SSDP ``M-SEARCH`` datagram to the
   gateway's UDP port 1900 (unicast to the gateway, as Tailscale's portmapper does: the
   default gateway is the only device whose mappings matter, and a unicast search cannot
   be answered by some other box on the LAN). The answer is HTTP over UDP with a
   ``LOCATION`` header: the URL of the device description.
2. *Description* (UDA §2): XML listing the devices and services; we want the control URL
   of a ``WANIPConnection:2``, ``WANIPConnection:1`` or ``WANPPPConnection:1`` service
   (IGD 1.0/2.0), in that order of preference.
3. *Control* (UDA §3, SOAP 1.1): ``GetExternalIPAddress``, ``AddPortMapping`` and
   ``DeletePortMapping`` (WANIPConnection:1 §2.4.16, §2.4.18), answered by an
   ``<actionResponse>`` or a SOAP fault carrying a ``UPnPError`` code (718
   ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported, ...).

The gateway's XML is untrusted. Bodies are capped at :data:`MAX_BODY` bytes before any
parsing, and a document with a DTD (``<!DOCTYPE``, hence any entity declaration) is
refused outright: neither a description nor a SOAP answer needs one, and entity
expansion is how XML blows up memory ("billion laughs"). ``defusedxml`` is not installed
here; expat's own handlers do the refusing. Every defect raises
:class:`~punchd.errors.PortmapParseError`; a well-formed SOAP fault is not a defect and
comes back as :class:`SoapFault`.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from urllib.parse import urljoin, urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape

import msgspec

from punchd.errors import PortmapParseError

SSDP_PORT = 1900
SSDP_MULTICAST = "239.255.255.250"
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
MAX_SSDP = 4096  # an SSDP answer is a few header lines; anything bigger is not one
MAX_BODY = 64 * 1024  # descriptions of real IGDs are 2-10 KiB
MX_S = 1  # UDA §1.3.2: the device waits up to MX seconds; 1 is the smallest allowed

# Preferred first: IGD 2.0's WANIPConnection:2 also has AddAnyPortMapping, but the three
# actions used here exist in all three with the same arguments.
SERVICE_TYPES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"

# UPnPError codes from WANIPConnection:1 §2.4.16 and IGD 2.0 the client acts on.
CONFLICT_IN_MAPPING = 718  # another client holds that external port: try another
ONLY_PERMANENT_LEASES = 725  # lease must be 0: map without a lease, delete on close


class SsdpResponse(msgspec.Struct, frozen=True):
    location: str
    st: str
    server: str


class IgdService(msgspec.Struct, frozen=True):
    service_type: str
    control_url: str


class SoapFault(msgspec.Struct, frozen=True):
    code: int  # UPnPError errorCode; 0 when the fault did not carry one
    description: str


# -- SSDP -------------------------------------------------------------------------


def msearch(host: str, *, st: str = SEARCH_TARGET, mx: int = MX_S) -> bytes:
    """An M-SEARCH request (UDA §1.3.2); ``host`` is what the HOST header names."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {host}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {st}\r\n"
        "\r\n"
    ).encode("ascii")


def _headers(text: str) -> tuple[str, dict[str, str]]:
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise PortmapParseError(f"SSDP header line without a name: {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def parse_ssdp_response(datagram: bytes, *, source_ip: str) -> SsdpResponse:
    """An M-SEARCH answer; its LOCATION must be an http URL on ``source_ip`` itself.

    Pinning the description to the address that answered keeps a LAN device that
    answers SSDP from sending the client anywhere else.
    """
    if len(datagram) > MAX_SSDP:
        raise PortmapParseError(f"an SSDP answer of {len(datagram)} bytes")
    try:
        text = datagram.decode("ascii")
    except UnicodeDecodeError as exc:
        raise PortmapParseError("SSDP answer is not ASCII") from exc
    status, headers = _headers(text)
    parts = status.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
        raise PortmapParseError(f"SSDP status line {status[:40]!r} is not HTTP/1.x 200")
    location = headers.get("location")
    if not location:
        raise PortmapParseError("SSDP answer without LOCATION")
    _check_url(location, host=source_ip, what="LOCATION")
    return SsdpResponse(location=location, st=headers.get("st", ""),
                        server=headers.get("server", ""))


def _check_url(url: str, *, host: str, what: str) -> None:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise PortmapParseError(f"{what} {url[:80]!r} is not a URL") from exc
    if parts.scheme != "http" or hostname is None:
        raise PortmapParseError(f"{what} {url[:80]!r} is not an http:// URL")
    try:
        same = ipaddress.ip_address(hostname) == ipaddress.ip_address(host)
    except ValueError:
        same = False
    if not same:
        raise PortmapParseError(f"{what} {url[:80]!r} points away from the gateway {host}")


# -- XML, defused -----------------------------------------------------------------


def _refuse(*_: object) -> int:
    raise PortmapParseError("the document declares a DTD or entities; refused")


def parse_xml(body: bytes) -> ET.Element:
    """Parse untrusted XML: size-capped, no DTD, no entities, one error type."""
    if len(body) > MAX_BODY:
        raise PortmapParseError(f"an XML body of {len(body)} bytes (at most {MAX_BODY})")
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = _refuse
    guard.EntityDeclHandler = _refuse
    guard.ExternalEntityRefHandler = _refuse
    try:
        guard.Parse(body, True)
        return ET.fromstring(body)
    except PortmapParseError:
        raise
    except (expat.ExpatError, ET.ParseError) as exc:
        raise PortmapParseError(f"malformed XML: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. NUL bytes, absurd nesting
        raise PortmapParseError(f"malformed XML: {exc}") from exc


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child_text(element: ET.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


# -- the device description -------------------------------------------------------


def parse_description(body: bytes, location: str) -> IgdService:
    """The preferred WAN connection service and its absolute control URL.

    Relative control URLs resolve against ``URLBase`` (UDA 1.0) or the description's
    own URL; the result must stay on the description's host.
    """
    root = parse_xml(body)
    host = urlsplit(location).hostname or ""
    base = location
    for element in root:
        if _local(element.tag) == "URLBase" and (element.text or "").strip():
            base = (element.text or "").strip()
    found: dict[str, str] = {}
    for element in root.iter():
        if _local(element.tag) != "service":
            continue
        service_type = _child_text(element, "serviceType")
        control = _child_text(element, "controlURL")
        if service_type in SERVICE_TYPES and control and service_type not in found:
            found[service_type] = control
    for service_type in SERVICE_TYPES:
        if service_type in found:
            url = urljoin(base, found[service_type])
            _check_url(url, host=host, what="controlURL")
            return IgdService(service_type=service_type, control_url=url)
    raise PortmapParseError("the description names no WANIPConnection or WANPPPConnection")


# -- SOAP -------------------------------------------------------------------------


def soap_request(service_type: str, action: str,
                 arguments: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, str], bytes]:
    """Headers and body of one SOAP action (UDA §3.2.1)."""
    args = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in arguments)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{SOAP_ENV}" s:encodingStyle="{SOAP_ENCODING}">'
        f'<s:Body><u:{action} xmlns:u="{service_type}">{args}</u:{action}></s:Body>'
        "</s:Envelope>\r\n"
    ).encode()
    headers = {
        "Content-Type": 'text/xml; charset="utf-8"',
        "SOAPAction": f'"{service_type}#{action}"',
    }
    return headers, body


def get_external_ip(service_type: str) -> tuple[dict[str, str], bytes]:
    return soap_request(service_type, "GetExternalIPAddress")


def add_port_mapping(service_type: str, *, external_port: int, internal_port: int,
                     internal_client: str, lease: int, protocol: str = "UDP",
                     description: str = "punchd") -> tuple[dict[str, str], bytes]:
    """WANIPConnection:1 §2.4.16; an empty NewRemoteHost is "any remote host"."""
    return soap_request(service_type, "AddPortMapping", (
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", protocol),
        ("NewInternalPort", str(internal_port)),
        ("NewInternalClient", internal_client),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", str(lease)),
    ))


def delete_port_mapping(service_type: str, *, external_port: int,
                        protocol: str = "UDP") -> tuple[dict[str, str], bytes]:
    """WANIPConnection:1 §2.4.18."""
    return soap_request(service_type, "DeletePortMapping", (
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", protocol),
    ))


def parse_soap_response(body: bytes, action: str) -> dict[str, str] | SoapFault:
    """``<actionResponse>``'s arguments by name, or the fault the gateway sent."""
    root = parse_xml(body)
    if _local(root.tag) != "Envelope":
        raise PortmapParseError(f"SOAP answer's root is {_local(root.tag)!r}, not Envelope")
    soap_body = next((e for e in root if _local(e.tag) == "Body"), None)
    if soap_body is None or len(soap_body) == 0:
        raise PortmapParseError("SOAP answer without a Body element")
    answer = soap_body[0]
    if _local(answer.tag) == "Fault":
        code_text = description = ""
        for element in answer.iter():
            if _local(element.tag) == "errorCode":
                code_text = (element.text or "").strip()
            elif _local(element.tag) == "errorDescription":
                description = (element.text or "").strip()
        code = int(code_text) if code_text.isdigit() and len(code_text) < 6 else 0
        return SoapFault(code=code, description=description or _child_text(answer, "faultstring"))
    if _local(answer.tag) != f"{action}Response":
        raise PortmapParseError(f"SOAP answer {_local(answer.tag)!r} to {action}")
    return {_local(child.tag): (child.text or "").strip() for child in answer}


def external_ip_from(arguments: dict[str, str]) -> str:
    """GetExternalIPAddress's NewExternalIPAddress, checked to be an IPv4 address."""
    text = arguments.get("NewExternalIPAddress", "")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError as exc:
        raise PortmapParseError(f"NewExternalIPAddress {text[:40]!r} is not IPv4") from exc
