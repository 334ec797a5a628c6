"""Bench tier: the benchmarks' machinery without a stack (counting, the per-epoch arithmetic,
the projection onto AWS read from the template, the JSON, tables and plot they write).

What these tests may use: the project's code in this process (including the emulator's
request counting, `embedded.emulator`, called directly: no emulator runs), matplotlib, and
files in a temporary folder; no stack, servers, network, subprocesses nor AWS clients. The
benchmarks themselves run on a fresh embedded stack with `make bench` and its siblings, not
here.

Held to here with the unit tier's checks (tests/support/tiers.py):
- a test module may not import moto, boto3, subprocess, socket, socketserver, http.server,
  urllib.request, multiprocessing, nor what starts a stack (embedded.stack,
  embedded.runtime, tests.support.stack, tests.support.stack_clients);
- during a test, a socket connect or bind, a name lookup, starting a process or creating a
  boto3/botocore client raises, and fails the test even if the code under test catches it.
"""

from __future__ import annotations

from collections.abc import Iterator

# matplotlib builds its font cache on first import (asking fontconfig, `fc-list`, in a
# subprocess when the cache is new): imported here, before the guard, so that is not taken
# for a test's subprocess.
import matplotlib.font_manager  # noqa: F401
import pytest

from tests.support.tiers import OFFLINE_FORBIDDEN_IMPORTS, Guard, refuse_imports

TIER = "bench"
RULE = "see tests/bench/conftest.py; the benchmarks run on a stack with `make bench`"
FORBIDDEN_IMPORTS = (
    *OFFLINE_FORBIDDEN_IMPORTS,
    "embedded.stack",
    "embedded.runtime",
    "tests.support.stack",
    "tests.support.stack_clients",
)


@pytest.fixture(scope="module", autouse=True)
def _bench_imports(request: pytest.FixtureRequest) -> None:
    refuse_imports(request.path, FORBIDDEN_IMPORTS, TIER, RULE)


@pytest.fixture(autouse=True)
def _bench_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard(TIER, RULE, monkeypatch)
    guard.forbid_sockets()
    guard.forbid_processes()
    guard.forbid_aws_clients()
    yield guard
    guard.check()
