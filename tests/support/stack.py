"""Helpers for the tiers that run a real embedded stack (and the fixtures in tests/conftest.py).

A stack takes a few seconds to start, so test sessions share one (`embedded_stack`) and
tests isolate themselves by run id or object key, as concurrent runs do, not by
restarting the stack. The runtime's counters are `StackInfo.stats()`; the stack's processes
as /proc shows them (`alive`, `descendants`, `workers_of`, `kill9`) are
`itsacat.bench.processes`, which the chaos benchmark uses too. `itsacat` runs the command
as a user would, against the stack recorded in a home.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo, start, stop

# AWS's clocks, a minute lasting 2 s (the trainer's lease, the watchdog's
# rate, the waits before retries).
TEST_CONFIG = RuntimeConfig(workers=4, time_scale=1 / 30)


@contextlib.contextmanager
def running_stack(
    home: Path,
    *,
    extra_templates: Sequence[tuple[str, Path]] = (),
    config: RuntimeConfig = TEST_CONFIG,
    parameters: dict[str, str] | None = None,
) -> Iterator[StackInfo]:
    """A stack on free ports in `home`, stopped (all of its processes) on exit."""
    info = start(home, extra_templates=extra_templates, config=config, parameters=parameters)
    try:
        yield info
    finally:
        stop(home)


def wait_for(
    condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy; raise AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


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
