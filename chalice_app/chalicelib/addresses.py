"""Which addresses the API may fetch from: the guard against server-side request forgery.

A URL's host is turned into IP addresses (numeric hosts in any notation are parsed here,
names are resolved), and the fetch is refused when ANY of them is loopback, private,
link-local (169.254.169.254 included), multicast, reserved, unspecified or otherwise not
globally routable - looking inside IPv6 forms that embed an IPv4 address (IPv4-mapped,
NAT64, 6to4, Teredo). The allow-list (exact addresses or networks) is the only way past
it, and it is matched against the addresses, never the name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

from chalicelib.config import Network
from chalicelib.errors import BadRequest, Refused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_INET_ATON_PART = re.compile(r"^(?:0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def inet_aton_address(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address that C `inet_aton` (and so getaddrinfo) reads from `host`, if any.

    Accepts 1 to 4 parts, each decimal, 0x-hex or 0-octal, the last filling the remaining
    bytes: `2130706433`, `0x7f.1`, `0177.0.0.01` are all 127.0.0.1.
    """
    parts = host.lower().removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.match(p) for p in parts):
        return None
    values = [_inet_aton_part(p) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _inet_aton_part(part: str) -> int:
    if part.startswith("0x"):
        return int(part, 16)
    return int(part, 8) if part.startswith("0") else int(part)


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address when it is a numeric literal in any notation, else None."""
    try:
        return _unscoped(ipaddress.ip_address(host))
    except ValueError:
        return inet_aton_address(host)


def ascii_host(host: str) -> str:
    """A host name as the ASCII (IDNA) name to resolve; BadRequest when it is not a name."""
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise BadRequest(f"the URL's host {host!r} is not a valid name", "bad_url") from e
    if not _NAME.match(name):
        raise BadRequest(f"the URL's host {host!r} is not a valid name", "bad_url")
    return name


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for `host` (TCP)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        raise BadRequest(f"the URL's host {host!r} cannot be resolved", "unresolvable_host") from e
    seen: list[IPAddress] = []
    for info in infos:
        addr = _unscoped(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        if addr not in seen:
            seen.append(addr)
    if not seen:
        raise BadRequest(f"the URL's host {host!r} cannot be resolved", "unresolvable_host")
    return seen


def _unscoped(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        return ipaddress.IPv6Address(str(addr).split("%")[0])
    return addr


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo, compatible)."""
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if any(addr in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    if int(addr) >> 32 == 0 and int(addr) > 0xFFFF:  # deprecated IPv4-compatible ::a.b.c.d
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def _kind(addr: IPAddress) -> str | None:
    """Why `addr` is not a public address, or None when it is."""
    checks = (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved),
        ("private", addr.is_private),
    )
    for name, hit in checks:
        if hit:
            return name
    if not addr.is_global:
        return "non-public"
    return None


def is_allowed(addr: IPAddress, allow: Sequence[Network]) -> bool:
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(c.version == net.version and c in net for c in candidates for net in allow)


def refusal(addr: IPAddress, allow: Sequence[Network]) -> str | None:
    """Why the API must not connect to `addr` (a short phrase), or None when it may."""
    if is_allowed(addr, allow):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        for inner in embedded_ipv4(addr):
            inner_kind = _kind(inner)
            if inner_kind is not None:
                return f"{inner_kind} (embedded in an IPv6 address)"
    return _kind(addr)


def checked_addresses(
    host: str, port: int, allow: Sequence[Network], resolver: Resolver = resolve
) -> list[IPAddress]:
    """The addresses to connect to for `host`; Refused when any one of them is not allowed.

    `host` is the URL's host without brackets (as `urlsplit().hostname` gives it).
    """
    literal = literal_address(host)
    addresses = [literal] if literal is not None else list(resolver(ascii_host(host), port))
    if not addresses:
        raise BadRequest(f"the URL's host {host!r} cannot be resolved", "unresolvable_host")
    for addr in addresses:
        why = refusal(addr, allow)
        if why is not None:
            shown = f"{host} is" if literal is not None else f"{host} resolves to"
            raise Refused(
                f"refused: {shown} a {why} address; only public addresses are fetched "
                "(an operator can allow an address or network with --allow-hosts)",
                "address_refused",
            )
    return addresses
