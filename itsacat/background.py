"""Processes the demo leaves running (the API server, the picture server), by id.

Each is recorded in `$ITSACAT_HOME/background.json` with its command line, so that
`itsacat down` stops exactly these processes, and only while they are still the ones
started (a recycled process id is left alone).
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

from embedded.stack import default_home

_FILE = "background.json"


def _path(home: Path | None) -> Path:
    return (home or default_home()) / _FILE


def _load(home: Path | None) -> dict[str, dict]:
    try:
        data: dict[str, dict] = json.loads(_path(home).read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def alive(entry: dict) -> bool:
    """Whether the recorded process still runs its recorded command (a script's command line
    starts with its interpreter, so the arguments after the program are compared)."""
    args = entry["argv"][1:]
    cmdline = _cmdline(int(entry["pid"]))
    return len(cmdline) > len(args) and cmdline[len(cmdline) - len(args) :] == args


def start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    home: Path | None = None,
    **info: object,
) -> int:
    """Start `argv` in its own session, logging to `$ITSACAT_HOME/logs/<name>.log`."""
    home = home or default_home()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    entries = _load(home)
    entries[name] = {"pid": proc.pid, "argv": argv, **info}
    _path(home).write_text(json.dumps(entries, indent=2))
    return proc.pid


def running(home: Path | None = None) -> dict[str, dict]:
    return {k: v for k, v in _load(home).items() if alive(v)}


def stop_all(
    home: Path | None = None, timeout_s: float = 5.0, names: Collection[str] | None = None
) -> list[str]:
    """Stop every recorded process that is still ours (with `names`, only those: the others
    stay recorded); the names of those stopped."""
    entries = _load(home)
    stopped = []
    for name, entry in list(entries.items()):
        if names is not None and name not in names:
            continue
        del entries[name]
        if not alive(entry):
            continue
        pid = int(entry["pid"])
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(entry) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if alive(entry):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
        stopped.append(name)
    if entries:
        _path(home).write_text(json.dumps(entries, indent=2))
    else:
        _path(home).unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
