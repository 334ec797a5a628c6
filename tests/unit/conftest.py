"""Unit tier: the project's code in this process, and nothing else (`make test-unit`).

What these tests may use: the project's modules, numpy, h5py, Pillow, botocore's pure parts
(credentials, request signing) and files in a temporary folder. Nothing else: no network
(not even loopback), no moto, no embedded stack, no AWS clients, no subprocesses, and no test
of more than about a second; the whole tier runs in well under 30 s. A test that needs
any of these belongs in tests/functional (moto in-process, servers on loopback, the `itsacat`
command as a subprocess) or in a tier that runs the real local stack.

Held to here, so a test that reaches for one of them fails at once:
- its module may not import moto, embedded, boto3, subprocess, socket, socketserver,
  http.server, urllib.request or multiprocessing (read from the module's source);
- during the test, a socket connect or bind, a name lookup, starting a process
  (subprocess, os.system, os.fork, os.posix_spawn) or creating a boto3/botocore client
  raises, and fails the test even if the code under test catches it;
- a test (with its function-scoped fixtures) that takes more than LIMIT_SECONDS of wall-clock
  time fails: a bound well above "about a second", so that a loaded machine does not trip it.
"""

from __future__ import annotations

from collections.abc import Iterator

# Some libraries probe the machine when first imported: h5py runs `uname -p` (through
# platform.processor), urllib3 binds to ::1 to learn about IPv6. Imported here, before the
# guard, as the code under test may import them lazily, so a probe is not taken for a test's.
import h5py  # noqa: F401
import pytest
import urllib3  # noqa: F401

from tests.support.tiers import OFFLINE_FORBIDDEN_IMPORTS, Guard, refuse_imports

TIER = "unit"
RULE = "see tests/unit/conftest.py; such tests go in tests/functional"
LIMIT_SECONDS = 5.0
FORBIDDEN_IMPORTS = (*OFFLINE_FORBIDDEN_IMPORTS, "embedded")


@pytest.fixture(scope="module", autouse=True)
def _unit_imports(request: pytest.FixtureRequest) -> None:
    refuse_imports(request.path, FORBIDDEN_IMPORTS, TIER, RULE)


@pytest.fixture(autouse=True)
def _unit_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard(TIER, RULE, monkeypatch)
    guard.forbid_sockets()
    guard.forbid_processes()
    guard.forbid_aws_clients()
    guard.limit_seconds(LIMIT_SECONDS)
    yield guard
    guard.check()
