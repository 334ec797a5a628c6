"""The API's configuration: one small object read from the environment, once.

    ITSACAT_BUCKET               the bucket holding `models/` (required to answer /image)
    ITSACAT_ALLOW_HOSTS          comma-separated addresses or networks that may be fetched
                                 even though they are private/loopback (default: none)
    ITSACAT_MAX_IMAGE_BYTES      largest picture read, in bytes (default 4 MB; an upload is
                                 also held to MAX_BODY_BYTES, what fits Lambda's payload)
    ITSACAT_MAX_IMAGE_PIXELS     largest picture decoded, width x height (default 24 M)
    ITSACAT_MODEL_CHECK_SECONDS  how often the cached model's pointer is re-checked (5)
    ITSACAT_FETCH_PORTS          ports a picture URL may name, comma-separated ports or
                                 ranges (`8080,8000-8100`) or `any` (default: 80,443)
    ITSACAT_FETCH_DEADLINE_SECONDS  the whole fetch of a picture URL, DNS to last byte (15)
    ITSACAT_STAGE                which model `/`, `/image` and `/model` serve: `production`
                                 (default) or `staging` (`/staging/...` always serve staging)

The S3 endpoint is not configured here: boto3 reads `AWS_ENDPOINT_URL` itself.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MB = 1024 * 1024

# What the deployed API must fit (tests/api/test_api_limits.py checks the sums).
# Lambda takes at most 6 MB of request event, and API Gateway base64-encodes a binary body
# (4 bytes for every 3) into it, beside the headers and request context (EVENT_OVERHEAD).
LAMBDA_PAYLOAD_BYTES = 6 * MB
EVENT_OVERHEAD_BYTES = 256 * 1024
# The largest body whose event fits: anything larger never reaches the function on AWS.
MAX_BODY_BYTES = (LAMBDA_PAYLOAD_BYTES - EVENT_OVERHEAD_BYTES) // 4 * 3
DEFAULT_MAX_IMAGE_BYTES = 4 * MB
# The function's timeout (.chalice/config.json "lambda_timeout") stays under API Gateway's
# 29 s integration timeout, and the fetch deadline plus decoding fit inside it.
GATEWAY_TIMEOUT_SECONDS = 29
LAMBDA_TIMEOUT_SECONDS = 25
DECODE_SECONDS = 5.0  # allowance for decoding, resizing and the forward pass


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def parse_allow_hosts(text: str) -> tuple[Network, ...]:
    """`"127.0.0.2, 10.0.0.0/8"` -> networks. Names are rejected: addresses are checked."""
    networks: list[Network] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError as e:
            raise ConfigError(
                f"allow-hosts: {item!r} is not an IP address or network "
                "(the allow-list is checked against resolved addresses, not names)"
            ) from e
    return tuple(networks)


PortRange = tuple[int, int]
DEFAULT_FETCH_PORTS: tuple[PortRange, ...] = ((80, 80), (443, 443))


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """`"80, 443, 8000-8100"` -> ((80, 80), (443, 443), (8000, 8100)); `"any"` -> 1-65535."""
    if text.strip().lower() in ("any", "*"):
        return ((1, 65535),)
    ranges: list[PortRange] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError as e:
            raise ConfigError(
                f"ITSACAT_FETCH_PORTS: {item!r} is not a port or a range like 8000-8100"
            ) from e
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"ITSACAT_FETCH_PORTS: {item!r} is not within 1-65535")
        ranges.append((first, last))
    if not ranges:
        raise ConfigError("ITSACAT_FETCH_PORTS names no port (use e.g. 80,443 or any)")
    return tuple(ranges)


def _number(env: Mapping[str, str], name: str, default: float, lo: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from e
    if not value >= lo:
        raise ConfigError(f"{name} must be at least {lo}, got {raw!r}")
    return value


def _fetch_deadline(env: Mapping[str, str]) -> float:
    seconds = _number(env, "ITSACAT_FETCH_DEADLINE_SECONDS", 15.0, 0.1)
    most = LAMBDA_TIMEOUT_SECONDS - DECODE_SECONDS
    if seconds > most:
        raise ConfigError(
            f"ITSACAT_FETCH_DEADLINE_SECONDS must be at most {most:g} (the function's "
            f"{LAMBDA_TIMEOUT_SECONDS} s less {DECODE_SECONDS:g} s to decode), got {seconds:g}"
        )
    return seconds


STAGES = ("production", "staging")


def _stage(env: Mapping[str, str]) -> str:
    stage = env.get("ITSACAT_STAGE", "").strip().lower() or "production"
    if stage not in STAGES:
        raise ConfigError(f"ITSACAT_STAGE must be production or staging, got {stage!r}")
    return stage


@dataclass(frozen=True)
class Settings:
    bucket: str | None = None
    allow: tuple[Network, ...] = ()
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = 24_000_000
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    # The whole fetch (DNS, connect, TLS, status, headers, body, every hop) ends by this.
    fetch_deadline: float = 15.0
    fetch_ports: tuple[PortRange, ...] = DEFAULT_FETCH_PORTS
    max_redirects: int = 3
    model_check_seconds: float = 5.0
    stage: str = "production"

    @property
    def max_body_bytes(self) -> int:
        """The largest POSTed picture: `max_bytes`, but never more than reaches Lambda."""
        return min(self.max_bytes, MAX_BODY_BYTES)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bucket=env.get("ITSACAT_BUCKET", "").strip() or None,
            allow=parse_allow_hosts(env.get("ITSACAT_ALLOW_HOSTS", "")),
            max_bytes=int(_number(env, "ITSACAT_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, 1)),
            max_pixels=int(_number(env, "ITSACAT_MAX_IMAGE_PIXELS", 24_000_000, 1)),
            model_check_seconds=_number(env, "ITSACAT_MODEL_CHECK_SECONDS", 5.0, 0),
            fetch_deadline=_fetch_deadline(env),
            stage=_stage(env),
            fetch_ports=(
                parse_ports(env["ITSACAT_FETCH_PORTS"])
                if env.get("ITSACAT_FETCH_PORTS", "").strip()
                else DEFAULT_FETCH_PORTS
            ),
        )

    def port_allowed(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.fetch_ports)
