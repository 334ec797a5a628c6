"""The SSRF guard's table of addresses, verdict by verdict (no address here is connected to).

Public unicast only: IPv4 outside the IANA special-purpose registry, IPv6 inside 2000::/3
outside its special-purpose blocks. The verdicts come from the guard's own table, never
from `ipaddress`'s is_private/is_global (which differ between Python 3.11, 3.12 and 3.13).
"""

from __future__ import annotations

import ipaddress

import pytest
from chalicelib.addresses import IPV4_REFUSED, IPV6_OUTSIDE, IPV6_REFUSED, kind, refusal

REFUSED = [
    # IPv6 outside 2000::/3, or inside it but special-purpose
    ("fec0::1", "site-local"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("2001:2::1", "IETF protocol assignment"),  # benchmarking
    ("2001:20::1", "IETF protocol assignment"),  # ORCHIDv2
    ("2001:1ff:ffff::1", "IETF protocol assignment"),
    ("2002:808:808::1", "6to4"),  # even with a public IPv4 inside
    ("64:ff9b::808:808", "NAT64"),  # likewise
    ("64:ff9b::7f00:1", "loopback (embedded"),
    ("64:ff9b:1::a9fe:a9fe", "link-local (embedded"),
    ("::ffff:127.0.0.1", "loopback (embedded"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("2002:7f00:1::", "loopback (embedded"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),  # public inside
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::7f00:1", "loopback (embedded"),
    ("100::1", "discard-only"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("5f00::1", "segment routing"),
    ("4000::1", "reserved"),
    ("e000::1", "reserved"),
    # IPv4: the IANA special-purpose registry, multicast, class E
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.0.9", "IETF protocol assignment"),
    ("192.0.0.170", "IETF protocol assignment"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below 100.64/10
    "100.128.0.0",  # just above it
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.254",
    "2606:4700::1111",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "2001:200::1",  # just above 2001::/23
    "2003::1",  # just above 2002::/16
    "2620:4f:8000::1",
    "3ffe:ffff::1",  # just below 3fff::/20
]


@pytest.mark.parametrize("address, why", REFUSED)
def test_refused(address: str, why: str) -> None:
    verdict = refusal(ipaddress.ip_address(address), ())
    assert verdict is not None and verdict.startswith(why), verdict


@pytest.mark.parametrize("address", PUBLIC)
def test_public(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is None


def test_every_row_of_the_table_is_refused_at_both_ends() -> None:
    for table in (IPV4_REFUSED, IPV6_REFUSED, IPV6_OUTSIDE):
        for network, why in table:
            for addr in (network.network_address, network.broadcast_address):
                assert kind(addr) is not None, (network, why)


def test_the_iana_ipv4_registry_is_all_there() -> None:
    registry = {
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32",
    }  # fmt: skip
    assert {str(net) for net, _ in IPV4_REFUSED} == registry


def test_the_allow_list_still_opens_a_refused_address() -> None:
    allow = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("fd00::/8"))
    assert refusal(ipaddress.ip_address("127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("fd00::5"), allow) is None
    assert refusal(ipaddress.ip_address("127.0.0.3"), allow) == "loopback"
