"""Fixtures shared by every test directory. Each tier's conftest.py says what its tests may
use (tests/unit: nothing but the code; tests/functional: moto in process; the others: the
real local stack and servers). Four tiers hold their tests to it with a guard
(tests/support/tiers.py) that fails a test which reaches further, even if the code caught it:
- tests/unit and tests/bench: no sockets, name lookups, subprocesses nor AWS clients, and
  banned imports; tests/unit also fails a test over 5 s;
- tests/functional and tests/deploy: this process's sockets on loopback only, and no name
  looked up but `localhost` (subprocesses are not checked); functional bans `embedded` too.
The tiers on the real local stack (e2e, embedded, api, reliability, browser) are not guarded:
they stay on this machine because every endpoint they are given (the stack, moto servers,
picture servers) is on 127.0.0.x, and nothing fails a test of theirs that reaches further.

`embedded_stack` (session): one real embedded stack (emulator + local Lambda runtime) on free
ports in a temporary ITSACAT_HOME, with the project's template and the test-only functions of
tests/embedded/fixture_template.yaml (stack `itsacat-fixtures`); stopped, with all of its
processes, at the end of the session.
`shared_data` (function): the project's shared data folder (`tests.support.data`), checked.
`embedded_env` (function): the stack's environment (endpoints, region, dummy credentials,
ITSACAT_BUCKET, table names, ...) set in os.environ for one test, so that plain boto3
clients talk to the stack.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support` and the project's packages import from here
    sys.path.insert(0, str(ROOT))

from embedded.stack import StackInfo  # noqa: E402
from tests.support import data as test_data  # noqa: E402
from tests.support.stack import running_stack  # noqa: E402

FIXTURE_TEMPLATE = Path(__file__).parent / "embedded" / "fixture_template.yaml"
FIXTURE_STACK = "itsacat-fixtures"


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home = tmp_path_factory.mktemp("itsacat-home")
    with running_stack(home, extra_templates=[(FIXTURE_STACK, FIXTURE_TEMPLATE)]) as info:
        yield info


@pytest.fixture
def embedded_env(embedded_stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> StackInfo:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in embedded_stack.env().items():
        monkeypatch.setenv(name, value)
    return embedded_stack


@pytest.fixture
def shared_data() -> Path:
    """The project's shared data folder (tests/support/data.py); a test that asks for it fails,
    naming the folder and ITSACAT_TEST_DATA, when the data is missing."""
    return test_data.require()
