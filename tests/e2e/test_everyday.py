"""On the embedded stack: watch, logs (and --follow), and the demo end to end."""

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from state.runs import SUCCEEDED
from tests.e2e.conftest import SMALL, Stack
from tests.support import data as test_data

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


@pytest.fixture
def mirror() -> Iterator[tuple[str, list[str]]]:
    """The shared cat data served from 127.0.0.1, as a mirror of the published file; its
    URL, and the paths asked for."""
    test_data.require()
    body = test_data.DATASET.read_bytes()
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/datasets.h5", asked
    server.shutdown()
    server.server_close()


def test_demo_on_a_fresh_clone_fetches_the_cat_data_and_promotes_only_on_merit(
    tmp_path: Path, mirror: tuple[str, list[str]]
) -> None:
    """`make demo` as on a fresh clone (an empty $ITSACAT_HOME), with a loopback mirror of the cat
    data: it downloads and checks the data, trains, serves production and staging, and
    promotes the shorter run only if it is at least as good; --exit leaves nothing."""
    url, asked = mirror
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    env["ITSACAT_HOME"] = str(home)
    args = ["--dataset-url", url, "--epochs", "3", "--exit"]
    ports = ["--port", "0", "--staging-port", "0", "--out", str(tmp_path / "reports")]
    out = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "demo", *args, *ports],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert f"downloading {url}" in text and "(downloaded, sha256 checked)" in text
    assert asked == ["/datasets.h5"]
    assert (home / "datasets" / "datasets.h5").read_bytes() == test_data.DATASET.read_bytes()
    assert "GENERATED" not in text
    first, second = re.findall(r"run (datasets-\S+): (\d+) epochs", text)
    assert (first[1], second[1]) == ("3", "1")
    assert "the first model, so it went to production at once" in text
    assert f"its model is in staging ({second[0]}); production is still {first[0]}" in text
    assert "report.md" in text
    rows = [line for line in text.splitlines() if line.count("p(cat) = ") == 2]
    assert len(rows) >= 1  # production and staging both answered each picture
    assert "(not allowed): HTTP 400 address_refused" in text
    accuracies = re.findall(
        r"epochs \d+, final cost \S+, train accuracy \S+, test accuracy (\S+)%", text
    )
    better = float(accuracies[1]) >= float(accuracies[0])
    assert ("promoted: " + second[0] in text) == better, text
    assert f"production now answers with {second[0] if better else first[0]}" in text
    assert "Stopping the APIs, the picture server and the embedded stack" in text
    assert len(list((tmp_path / "reports").glob("*/report.md"))) == 1
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
