"""Reliability tier: runs under faults, kills and restarts, against the real embedded stack.

What these tests may use: stacks of their own (`steady_stack` below, or one per module with
injected faults), the `itsacat` command as a subprocess, SIGKILL of the stack's processes
(`itsacat.bench.processes`); and, for the protocol's model-based tests (Hypothesis), the
state adapters against moto in process, where thousands of interleavings must run fast.
Not the internet nor AWS.

Fixtures: a stack of their own, and the `itsacat` command.

`steady_stack` (package scope) has no injected faults but a short lease (a trainer that dies
loses its run after 4 s) and a watchdog sweep every 2 s, so that recovery is quick to watch.
The fault-injection module starts its own stack (`itsacat up --faults ...`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo
from tests.reliability.support import Client, stack

# Commits at least every second, so that a kill finds committed steps to resume from.
STEADY_PARAMETERS = {"CommitSeconds": "1"}
# AWS's clocks, a minute lasting 4 s: lease 4 s, a watchdog sweep every 4 s, asynchronous
# retries after 4 and 8 s.
STEADY_CONFIG = RuntimeConfig(workers=4, time_scale=1 / 15)


def itsacat(home: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `itsacat` command as a user would, against the stack recorded in `home`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("ITSACAT_BUCKET", "RUNS_TABLE")
    }
    env["ITSACAT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "itsacat.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="package")
def steady_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home = tmp_path_factory.mktemp("steady-home")
    with stack(home, STEADY_PARAMETERS, STEADY_CONFIG) as info:
        yield info


@pytest.fixture(scope="package")
def steady(steady_stack: StackInfo) -> Client:
    return Client(steady_stack)
