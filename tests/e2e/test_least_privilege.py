"""A permission missing from the template fails a local run the way it fails on AWS.

Every other test already runs each function under its own execution role, with every AWS
request authorised on action and resource against the template's policies; so the whole
suite passes only if the roles allow what the handlers call. Here the converse: a copy of
the template with one needed permission removed, started with `itsacat up --template`,
makes a run end FAILED, and its record names the action and resource that were denied.
"""

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.stack import info as recorded
from embedded.stack import stop
from state import clients
from state.runs import FAILED
from tests.e2e.conftest import SMALL, Stack, use_stack

ROOT = Path(__file__).resolve().parents[2]
ITSACAT = [sys.executable, "-m", "itsacat.cli"]
TEMPLATE = (ROOT / "templates" / "template.yaml").read_text()
# A minute lasts a second: the watchdog re-drives a failing trainer every second (its lease
# is a second too); ten re-drives without progress and the run is FAILED.
FAST = ["--time-scale", "1/60"]
FAST_PARAMETERS = ["TrainerTimeout=20"]


def without(statement_sid: str, role: str, action: str) -> str:
    """The template's text with `action` removed from one statement of one role's policy."""
    role_at = TEMPLATE.index(f"\n  {role}:\n")
    sid_at = TEMPLATE.index(f"- Sid: {statement_sid}\n", role_at)
    action_at = TEMPLATE.index("Action:", sid_at)
    line_end = TEMPLATE.index("\n", action_at)
    line = TEMPLATE[action_at:line_end]
    assert action in line, f"{role}/{statement_sid} does not grant {action}: {line}"
    actions = [a.strip() for a in re.split(r"[\[\],]", line.split(":", 1)[1]) if a.strip()]
    kept = [a for a in actions if a != action]
    assert kept, "a statement needs an action: remove the statement instead"
    return TEMPLATE[:action_at] + f"Action: [{', '.join(kept)}]" + TEMPLATE[line_end:]


@pytest.fixture
def stack_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Start `itsacat up --template` on a modified template; yields a starter function."""
    homes: list[Path] = []

    def start(template_text: str) -> Stack:
        template = tmp_path / f"template-{len(homes)}.yaml"
        template.write_text(template_text)
        home = tmp_path / f"home-{len(homes)}"
        homes.append(home)
        argv = [*ITSACAT, "up", "--home", str(home), "--template", str(template), *FAST]
        for parameter in FAST_PARAMETERS:
            argv += ["--parameter", parameter]
        up = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
        assert up.returncode == 0, up.stderr + up.stdout
        info = recorded(home)
        assert info is not None
        return use_stack(info, monkeypatch)

    yield start
    for home in homes:
        stop(home)
    clients.client.cache_clear()


@pytest.mark.parametrize(
    ("sid", "role", "action", "resource"),
    [
        # The review's finding: cost rows are written with BatchWriteItem. (Other
        # permissions can be tried the same way; each case costs half a minute here.)
        ("Costs", "TrainerRole", "dynamodb:BatchWriteItem", ":table/itsacat-costs"),
    ],
)
def test_a_missing_permission_fails_the_run_with_the_denied_action(
    stack_from: object, sid: str, role: str, action: str, resource: str
) -> None:
    stack = stack_from(without(sid, role, action))  # type: ignore[operator]
    run_id = stack.run_for(stack.upload({**SMALL, "epochs": 2}))
    run = stack.wait(run_id, timeout_s=180)
    assert run.status == FAILED
    error = str(run.error)
    assert "AccessDenied" in error, error
    assert action in error and resource in error, error
    assert "assumed-role/" in error, error
