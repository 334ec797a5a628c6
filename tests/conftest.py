"""Fixtures shared by every test directory. Each tier's conftest.py says what its tests may
use (tests/unit: nothing but the code; tests/functional: moto in process; the others: the
real local stack and servers) and holds them to it.

`embedded_stack` (session): one real embedded stack (emulator + local Lambda runtime) on free
ports in a temporary ITSACAT_HOME, with the project's template and the test-only functions of
tests/embedded/fixture_template.yaml (stack `itsacat-fixtures`); stopped, with all of its
processes, at the end of the session.
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


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; tests that need it are skipped with a reason when it is absent."""
    if not (SHARED_DATA / "datasets.h5").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
