"""The embedded stack's processes, as /proc shows them: what `chaos` kills (Linux only)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from embedded.stack import StackInfo


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
    """SIGKILL `pid`, if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
