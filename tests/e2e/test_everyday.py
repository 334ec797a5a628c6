"""Issue 6 on the embedded stack: watch, logs (and --follow), and the demo end to end."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from state.runs import SUCCEEDED
from tests.e2e.conftest import DATA, SMALL, Stack
from trainer_lambdas import datasets

ROOT = Path(__file__).resolve().parents[2]


def itsacat(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "itsacat.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_watch_and_logs_show_the_lines_of_a_real_run(stack: Stack) -> None:
    run_id = stack.run_for(stack.upload(SMALL))  # started by an upload, not by itsacat train
    watched = itsacat("watch", run_id)
    assert watched.returncode == 0, watched.stderr
    assert f"run {run_id}: {SUCCEEDED}" in watched.stdout
    assert "epoch 4/4" in watched.stderr
    logs = itsacat("logs", "--run", run_id, "--since", "10m")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines and all(run_id in line for line in lines)
    # the trainer logs each commit's epochs (first-last); together they are epochs 0..3
    # (one commit or several: the trainer also commits every CommitSeconds)
    committed: set[int] = set()
    for match in re.finditer(r"epochs (\d+)-(\d+)  epochs done", logs.stdout):
        committed |= set(range(int(match[1]), int(match[2]) + 1))
    assert committed == {0, 1, 2, 3}, lines
    assert any(" launch " in line for line in lines) and any(" trainer " in line for line in lines)
    times = [line[:12] for line in lines]
    assert times == sorted(times)  # merged in time order


def test_logs_follow_prints_new_lines_and_stops_on_ctrl_c(stack: Stack) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "itsacat.cli", "logs", "trainer", "--follow", "--since", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        time.sleep(1.5)  # following, before the run exists
        run_id = stack.run_for(stack.upload(SMALL))
        stack.wait(run_id)
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            seen.append(line)
            if run_id in line and "run succeeded" in line:
                break
        assert any(run_id in line and "epochs done" in line for line in seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()


def processes_of(home: Path) -> list[int]:
    """Processes whose environment or command line names this ITSACAT_HOME."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if f"ITSACAT_HOME={home}".encode() in environ or str(home).encode() in cmdline:
            pids.append(int(entry))
    return pids


def test_demo_exit_runs_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = tmp_path / "datasets.h5"
    datasets.save(DATA, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    env["ITSACAT_HOME"] = str(home)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "itsacat.cli",
            "demo",
            "--dataset",
            str(data),
            "--epochs",
            "3",
            "--exit",
            "--port",
            "0",
            "--out",
            str(tmp_path / "reports"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "epochs 3, final cost" in text and "test accuracy" in text
    assert "report.md" in text
    assert text.count("p(cat) = ") >= 1
    assert "(not allowed): HTTP 400 address_refused" in text
    assert "Stopping the API, the picture server and the embedded stack" in text
    reports = list((tmp_path / "reports").glob("*/report.md"))
    assert len(reports) == 1
    time.sleep(0.5)
    assert processes_of(home) == []
    assert not (home / "stack.json").exists()


def test_demo_exit_stops_everything_also_when_it_fails(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    broken = tmp_path / "datasets.h5"
    broken.write_bytes(b"not hdf5")  # the run fails at launch
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    env["ITSACAT_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "demo", "--dataset", str(broken), "--exit"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 1
    assert "ended FAILED" in out.stderr and "not a readable HDF5 file" in out.stderr
    time.sleep(0.5)
    assert processes_of(home) == []
