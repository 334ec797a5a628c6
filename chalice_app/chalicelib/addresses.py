"""Which addresses the API may fetch from: the guard against server-side request forgery.

A URL's host is turned into IP addresses (numeric hosts in any notation are parsed here,
names are resolved), and the fetch is refused when ANY of them is not public unicast. What
"public" means is the explicit table below, not `ipaddress`'s is_private/is_global flags
(which differ between Python 3.11, 3.12 and 3.13):

- IPv4: everything except the IANA IPv4 Special-Purpose Address Registry (`IPV4_REFUSED`).
- IPv6: only global unicast 2000::/3, minus the IANA IPv6 Special-Purpose registry's
  blocks (`IPV6_REFUSED`: 2001::/23 whole, 2001:db8::/32, 2002::/16 6to4, 3fff::/20).
  Everything outside 2000::/3 (::1, ::, ::ffff:0:0/96, 64:ff9b::/96, fc00::/7, fe80::/10,
  fec0::/10, ff00::/8, 5f00::/16, ...) is refused.
- IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo, compatible) are
  refused anyway; the embedded address only makes the reason precise.

The allow-list (exact addresses or networks) is the only way past it, and it is matched
against the addresses, never the name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

from chalicelib.config import Network
from chalicelib.errors import BadRequest, Refused, UpstreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_INET_ATON_PART = re.compile(r"^(?:0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _table(*rows: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network, str], ...]:
    return tuple((ipaddress.IPv4Network(net), why) for net, why in rows)


def _table6(*rows: tuple[str, str]) -> tuple[tuple[ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.IPv6Network(net), why) for net, why in rows)


# The IANA IPv4 Special-Purpose Address Registry (RFC 6890 and updates), plus multicast
# and the old class E, each with the reason the refusal gives. All of each block is
# refused, also where the registry marks a few single addresses globally reachable
# (192.0.0.9, 192.0.0.10): no picture is served from an anycast protocol address.
IPV4_REFUSED = _table(
    ("0.0.0.0/8", "unspecified"),  # "this network"
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

# IPv6: only global unicast is fetched ...
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# ... minus the IANA IPv6 Special-Purpose Address Registry's blocks inside it (2001::/23
# whole, its few globally reachable exceptions included: TURN, AMT, AS112 are no picture
# servers) ...
IPV6_REFUSED = _table6(
    ("2001:db8::/32", "documentation"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignment"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
)
# ... and outside it everything is refused; these rows only name the reason.
IPV6_OUTSIDE = _table6(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("100::/64", "discard-only"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)


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
        raise UpstreamError(
            f"the URL's host {host!r} cannot be resolved", "unresolvable_host"
        ) from e
    seen: list[IPAddress] = []
    for info in infos:
        addr = _unscoped(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        if addr not in seen:
            seen.append(addr)
    if not seen:
        raise UpstreamError(f"the URL's host {host!r} cannot be resolved", "unresolvable_host")
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


def kind(addr: IPAddress) -> str | None:
    """Why `addr` is not a public unicast address (a table row's reason), or None."""
    if isinstance(addr, ipaddress.IPv4Address):
        for net4, why in IPV4_REFUSED:
            if addr in net4:
                return why
        return None
    if addr in IPV6_GLOBAL_UNICAST:
        for net6, why in IPV6_REFUSED:
            if addr in net6:
                return why
        return None
    for net6, why in IPV6_OUTSIDE:
        if addr in net6:
            return why
    return "reserved"  # not global unicast: unassigned or reserved by the IETF


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
            inner_kind = kind(inner)
            if inner_kind is not None:
                return f"{inner_kind} (embedded in an IPv6 address)"
    return kind(addr)


def checked_addresses(
    host: str, port: int, allow: Sequence[Network], resolver: Resolver = resolve
) -> list[IPAddress]:
    """The addresses to connect to for `host`; Refused when any one of them is not allowed.

    `host` is the URL's host without brackets (as `urlsplit().hostname` gives it).
    """
    literal = literal_address(host)
    addresses = [literal] if literal is not None else list(resolver(ascii_host(host), port))
    if not addresses:
        raise UpstreamError(f"the URL's host {host!r} cannot be resolved", "unresolvable_host")
    for addr in addresses:
        why = refusal(addr, allow)
        if why is not None:
            shown = f"{host} is" if literal is not None else f"{host} resolves to"
            article = "an" if why[0].lower() in "aeiou" else "a"
            raise Refused(
                f"refused: {shown} {article} {why} address; only public addresses are fetched "
                "(an operator can allow an address or network with --allow-hosts)",
                "address_refused",
            )
    return addresses
