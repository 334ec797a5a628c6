"""The SSRF guard's address rules, without network (the resolver is a table here)."""

from __future__ import annotations

import ipaddress

import pytest
from chalicelib.addresses import (
    checked_addresses,
    inet_aton_address,
    literal_address,
    refusal,
    resolve,
)
from chalicelib.config import ConfigError, Settings, parse_allow_hosts
from chalicelib.errors import BadRequest, Refused


@pytest.mark.parametrize(
    "host, expected",
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("8.8.8.8", "8.8.8.8"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_numeric_hosts_in_any_notation(host: str, expected: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.invalid", "0x7g.1", "1.2.3.4.5", "256.1.1.1", "08.1"])
def test_names_are_not_numbers(host: str) -> None:
    assert inet_aton_address(host) is None


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "shared"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (embedded"),
        ("::ffff:169.254.169.254", "link-local (embedded"),
        ("64:ff9b::7f00:1", "loopback (embedded"),
        ("64:ff9b::a9fe:a9fe", "link-local (embedded"),
        ("2002:7f00:1::", "loopback (embedded"),
        ("2002:a9fe:a9fe::", "link-local (embedded"),
        ("::7f00:1", "loopback (embedded"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    why = refusal(ipaddress.ip_address(address), ())
    assert why is not None and why.startswith(kind)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is None


def test_allow_list_is_exact_addresses_or_networks() -> None:
    allow = parse_allow_hosts("127.0.0.2, 10.0.0.0/8,[::1]")
    assert refusal(ipaddress.ip_address("127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) == "loopback"
    assert refusal(ipaddress.ip_address("10.9.8.7"), allow) is None
    assert refusal(ipaddress.ip_address("::1"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("169.254.169.254"), allow) == "link-local"


@pytest.mark.parametrize("bad", ["localhost", "pictures.example", "127.0.0.2:80", "10.0.0.0/33"])
def test_allow_list_takes_no_names(bad: str) -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        parse_allow_hosts(bad)
    with pytest.raises(ConfigError):
        Settings.from_env({"ITSACAT_ALLOW_HOSTS": bad})


def table(entries: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in entries[host]]

    resolver.calls = calls  # type: ignore[attr-defined]
    return resolver


def test_a_name_resolving_to_loopback_is_refused() -> None:
    resolver = table({"sneaky.invalid": ["127.0.0.1"]})
    with pytest.raises(Refused, match="resolves to a loopback") as e:
        checked_addresses("sneaky.invalid", 80, (), resolver)
    assert e.value.code == "address_refused"
    assert "127.0.0.1" not in e.value.message  # internal DNS answers are not echoed back


def test_any_private_address_among_several_refuses() -> None:
    resolver = table({"mixed.invalid": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(Refused):
        checked_addresses("mixed.invalid", 80, (), resolver)


def test_the_allow_list_applies_to_the_resolved_address_not_the_name() -> None:
    allow = parse_allow_hosts("127.0.0.2")
    resolver = table({"pictures.invalid": ["127.0.0.2"], "other.invalid": ["127.0.0.1"]})
    assert checked_addresses("pictures.invalid", 80, allow, resolver) == [
        ipaddress.ip_address("127.0.0.2")
    ]
    with pytest.raises(Refused):
        checked_addresses("other.invalid", 80, allow, resolver)


def test_numeric_hosts_are_not_sent_to_the_resolver() -> None:
    resolver = table({})
    with pytest.raises(Refused, match=r"0x7f\.1 is a loopback"):
        checked_addresses("0x7f.1", 80, (), resolver)
    assert resolver.calls == []  # type: ignore[attr-defined]


def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    # /etc/hosts, not DNS
    with pytest.raises(Refused, match="localhost resolves to a loopback"):
        checked_addresses("localhost", 80, parse_allow_hosts("127.0.0.2"), resolve)


@pytest.mark.parametrize("host", ["bad_host name", "exa mple.invalid", "%31%32%37.0.0.1", "-x-"])
def test_hosts_that_are_not_names(host: str) -> None:
    with pytest.raises(BadRequest) as e:
        checked_addresses(host, 80, (), table({}))
    assert e.value.code == "bad_url"
