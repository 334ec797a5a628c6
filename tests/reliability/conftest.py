"""Reliability tier: runs under faults, kills and restarts, against the real embedded stack.

What these tests may use: stacks of their own (`steady_stack` below, or one per module with
injected faults), the `itsacat` command as a subprocess, SIGKILL of the stack's processes
(`itsacat.bench.processes`); and, for the protocol's model-based tests (Hypothesis), the
state adapters against moto in process, where thousands of interleavings must run fast.
Not the internet nor AWS.

Fixtures: a stack of their own; the `itsacat` command is `tests.support.stack.itsacat`.

`steady_stack` (package scope) has no injected faults but a short lease (a trainer that dies
loses its run after 4 s) and a watchdog sweep every 2 s, so that recovery is quick to watch.
The fault-injection module starts its own stack (`itsacat up --faults ...`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo
from tests.reliability.support import Client, stack

# Commits at least every second, so that a kill finds committed steps to resume from.
STEADY_PARAMETERS = {"CommitSeconds": "1"}
# AWS's clocks, a minute lasting 4 s: lease 4 s, a watchdog sweep every 4 s, asynchronous
# retries after 4 and 8 s.
STEADY_CONFIG = RuntimeConfig(workers=4, time_scale=1 / 15)


@pytest.fixture(scope="package")
def steady_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home = tmp_path_factory.mktemp("steady-home")
    with stack(home, STEADY_PARAMETERS, STEADY_CONFIG) as info:
        yield info


@pytest.fixture(scope="package")
def steady(steady_stack: StackInfo) -> Client:
    return Client(steady_stack)
