"""How a tier's conftest.py holds its tests to what the tier may use.

Two checks: `forbidden_imports` reads a test module's own imports (the module was imported
at collection, so a check at run time could not stop it), and `Guard` replaces the entry
points of the network, of processes and of AWS clients for the length of one test with
functions that record the attempt and raise. A violation fails the test even when the code
under test catches the exception: the guard's teardown reports what was attempted. A guard
may also bound a test's wall-clock time (`limit_seconds`), checked in the same teardown.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


def forbidden_imports(module_file: str | Path, forbidden: Iterable[str]) -> list[str]:
    """The modules `module_file` imports that are, or are inside, one of `forbidden`."""
    banned = tuple(forbidden)
    found = []
    for node in ast.walk(ast.parse(Path(module_file).read_text(), str(module_file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if any(name == b or name.startswith(b + ".") for b in banned) and name not in found:
                found.append(name)
    return found


# What a tier without servers may not import: a network, a process or an AWS client.
OFFLINE_FORBIDDEN_IMPORTS = (
    "moto",
    "boto3",
    "subprocess",
    "socket",
    "socketserver",
    "http.server",
    "urllib.request",
    "multiprocessing",
)


def refuse_imports(module_file: str | Path, forbidden: Iterable[str], tier: str, rule: str) -> None:
    """Fail the module's tests (not as an error of the code under test) if it imports any
    of `forbidden`."""
    found = forbidden_imports(module_file, forbidden)
    if found:
        pytest.fail(f"the {tier} tier may not import {', '.join(found)} ({rule})", pytrace=False)


class TierViolation(AssertionError):
    """A test used what its tier may not use."""


def is_loopback(address: Any) -> bool:
    """A socket address on this machine: an AF_UNIX path, 127.0.0.0/8, ::1 or `localhost`."""
    if isinstance(address, str | bytes):
        return True  # AF_UNIX
    host = address[0] if isinstance(address, tuple) and address else None
    if host == "localhost":
        return True
    if not host:  # "" and None: every interface
        return False
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Guard:
    """What one test attempted that its tier forbids; `install` patches the entry points."""

    def __init__(self, tier: str, rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tier, self.rule = tier, rule
        self.monkeypatch = monkeypatch
        self.attempts: list[str] = []
        self.limit: tuple[float, float] | None = None  # (seconds, time.monotonic() at start)

    def refuse(self, what: str) -> TierViolation:
        self.attempts.append(what)
        return TierViolation(f"the {self.tier} tier may not use {what} ({self.rule})")

    def forbid(self, owner: Any, name: str, what: str) -> None:
        """Replace `owner.name` with a function that refuses."""

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise self.refuse(what)

        self.monkeypatch.setattr(owner, name, refused)

    def forbid_sockets(self, allow: Callable[[Any], bool] = lambda address: False) -> None:
        """Refuse connecting, listening and name lookups, except to addresses `allow` takes."""
        original = {n: getattr(socket.socket, n) for n in ("connect", "connect_ex", "bind")}
        lookup = socket.getaddrinfo

        def guarded(name: str) -> Callable[..., Any]:
            def method(sock: socket.socket, address: Any, *args: Any) -> Any:
                if not allow(address):
                    raise self.refuse(f"the network (socket.{name} to {address!r})")
                return original[name](sock, address, *args)

            return method

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if not allow((host, port)):
                raise self.refuse(f"the network (a name lookup of {host!r})")
            return lookup(host, port, *args, **kwargs)

        for name in original:
            self.monkeypatch.setattr(socket.socket, name, guarded(name))
        self.monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def forbid_processes(self) -> None:
        for owner, name in (
            (subprocess, "Popen"),
            (os, "system"),
            (os, "fork"),
            (os, "posix_spawn"),
            (os, "posix_spawnp"),
        ):
            self.forbid(owner, name, f"a subprocess ({owner.__name__}.{name})")

    def forbid_aws_clients(self) -> None:
        import botocore.session

        self.forbid(botocore.session.Session, "create_client", "an AWS client (boto3/botocore)")

    def limit_seconds(self, seconds: float) -> None:
        """Fail the test, at `check`, if more than `seconds` of wall-clock time pass from now."""
        self.limit = (seconds, time.monotonic())

    def check(self) -> None:
        """Fail the test if it attempted anything forbidden (even if the code caught it) or
        took longer than its limit."""
        found = list(self.attempts)
        if self.limit is not None:
            seconds, start = self.limit
            took = time.monotonic() - start
            if took > seconds:
                found.append(f"{took:.1f} s of wall-clock time (at most {seconds:g} s)")
        if found:
            pytest.fail(
                f"the {self.tier} tier may not use: {'; '.join(found)} ({self.rule})",
                pytrace=False,
            )
