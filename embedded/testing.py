"""Helpers for tests that need a real embedded stack (and the fixtures in tests/conftest.py).

A stack takes a few seconds to start, so test sessions share one (`embedded_stack`) and
tests isolate themselves by run id or object key, as concurrent runs do, not by
restarting the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
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


def stats(info: StackInfo) -> dict[str, Any]:
    """The runtime's counters."""
    with urllib.request.urlopen(f"{info.lambda_url}/itsacat/stats", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


# -- the stack's processes, as /proc shows them (for kills in tests and bench/chaos.py) ----


def alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Processes whose parent chain leads to `pid` (e.g. the runtime's warm workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def workers_of(info: StackInfo, function: str) -> list[int]:
    """The runtime's worker processes of `function` (from their Lambda environment)."""
    found = []
    for pid in descendants(info.runtime_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in environ:
            found.append(pid)
    return found


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
