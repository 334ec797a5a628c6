"""The API's configuration: one small object read from the environment, once.

    ITSACAT_BUCKET               the bucket holding `models/` (required to answer /image)
    ITSACAT_ALLOW_HOSTS          comma-separated addresses or networks that may be fetched
                                 even though they are private/loopback (default: none)
    ITSACAT_MAX_IMAGE_BYTES      largest picture read, in bytes (default 10 MB)
    ITSACAT_MAX_IMAGE_PIXELS     largest picture decoded, width x height (default 40 M)
    ITSACAT_MODEL_CHECK_SECONDS  how often the cached model's pointer is re-checked (5)

The S3 endpoint is not configured here: boto3 reads `AWS_ENDPOINT_URL` itself.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MB = 1024 * 1024


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


@dataclass(frozen=True)
class Settings:
    bucket: str | None = None
    allow: tuple[Network, ...] = ()
    max_bytes: int = 10 * MB
    max_pixels: int = 40_000_000
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    # The whole fetch (all hops, all reads) must finish within this.
    fetch_deadline: float = 15.0
    max_redirects: int = 3
    model_check_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bucket=env.get("ITSACAT_BUCKET", "").strip() or None,
            allow=parse_allow_hosts(env.get("ITSACAT_ALLOW_HOSTS", "")),
            max_bytes=int(_number(env, "ITSACAT_MAX_IMAGE_BYTES", 10 * MB, 1)),
            max_pixels=int(_number(env, "ITSACAT_MAX_IMAGE_PIXELS", 40_000_000, 1)),
            model_check_seconds=_number(env, "ITSACAT_MODEL_CHECK_SECONDS", 5.0, 0),
        )
