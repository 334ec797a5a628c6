"""`itsacat up`, `up` again, `status`, `env`, `down`, `down` again, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from itsacat.bench.processes import alive, descendants
from tests.support.stack import itsacat

AWS_CLI = Path(sys.executable).parent / "aws"


def test_up_up_status_env_down_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    status = itsacat(home, "status")
    assert status.returncode == 1 and "not running" in status.stdout

    up = itsacat(home, "up", "--workers", "2", "--no-schedules")
    assert up.returncode == 0, up.stderr
    assert "is up" in up.stdout and "ITSACAT_BUCKET" in up.stdout
    state = json.loads((home / "stack.json").read_text())
    pids = [state["emulator_pid"], state["runtime_pid"]]
    assert all(alive(pid) for pid in pids)

    try:
        again = itsacat(home, "up")
        assert again.returncode == 0
        assert "already running" in again.stdout
        assert json.loads((home / "stack.json").read_text())["runtime_pid"] == state["runtime_pid"]

        status = itsacat(home, "status", "--json")
        assert status.returncode == 0
        assert json.loads(status.stdout)["running"] is True

        exports = itsacat(home, "env").stdout
        assert f"export AWS_ENDPOINT_URL={state['emulator_url']}" in exports
        # eval "$(itsacat env)" and the real AWS CLI sees the template's resources.
        script = f'eval "$({sys.executable} -m itsacat.cli env)" && {AWS_CLI} dynamodb list-tables'
        listed = subprocess.run(
            ["sh", "-c", script],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                "ITSACAT_HOME": str(home),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert "itsacat-runs" in json.loads(listed.stdout)["TableNames"]

        # A warm worker, so that `down` has one to stop too.
        invoke = subprocess.run(
            [
                "sh",
                "-c",
                f'eval "$({sys.executable} -m itsacat.cli env)" && '
                f"{AWS_CLI} lambda invoke --function-name itsacat-watchdog {tmp_path}/out.json",
            ],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                "ITSACAT_HOME": str(home),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert invoke.returncode == 0, invoke.stderr
        workers = descendants(state["runtime_pid"])
        assert workers, "the runtime should have a warm worker"
        pids += workers
    finally:
        down = itsacat(home, "down")
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert not any(alive(pid) for pid in pids)
    assert not (home / "stack.json").exists()

    again = itsacat(home, "down")
    assert again.returncode == 0 and "nothing is running" in again.stdout
    status = itsacat(home, "status")
    assert status.returncode == 1
    env = itsacat(home, "env")
    assert env.returncode != 0 and "not running" in env.stderr and "Traceback" not in env.stderr
