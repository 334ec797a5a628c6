"""The embedded stack's data across `itsacat down`/`up`, a kill -9 of the emulator, and
`down --wipe`, as a user meets it: through the `itsacat` command (its `main`, in process).

One home for the module, its stack started and stopped by the tests as a user would (each
start takes about 10 s, so the second test goes on from the stack the first one left):
1. after `down --wipe`, `up` starts empty (the data wiped is seeded: a snapshot of an
   object in the stack's bucket, as an earlier stack would have left it);
2. a run whose emulator is killed (kill -9) in the middle of training is TRAINING again
   after `up` (from the last snapshot), and `itsacat resume` finishes it with the costs and
   weights of the reference trainer. The watchdog is off (`--no-schedules`), so the run
   can only have been taken up by `resume`: its `redrives` counter stays as it was. After
   a plain `down` and `up` the finished run is still listed with its costs, its report
   is written, its logs read, and the prediction API serves its model.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from embedded import persistence
from embedded import stack as embedded_stack
from embedded.deploy import ACCOUNT_ID, REGION
from embedded.stack import DATA_DIR
from itsacat.cli import main
from state import clients
from state.runs import PREPARING, SUCCEEDED, TRAINING
from tests.e2e.conftest import SMALL, Stack, assert_equals_reference, use_stack
from tests.support.stack import wait_for

# Watchdog off: only `itsacat resume` can take up a run whose trainer died.
UP_ARGS = ("--workers", "3", "--no-schedules")
Itsacat = Callable[..., tuple[int, str, str]]
BUCKET = f"itsacat-data-{ACCOUNT_ID}-{REGION}"  # the template's name for the data bucket


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("itsacat-persistent")
    yield path
    embedded_stack.stop(path)


@pytest.fixture
def itsacat(home: Path, capsys: pytest.CaptureFixture[str]) -> Itsacat:
    """`itsacat(*args)`: the command against the stack in `home`; (exit code, out, err)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--home", str(home)] if args[0] in ("up", "down") else list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def connect(
    home: Path, itsacat: Itsacat, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Stack]]:
    """`connect()`: this process (clients, `itsacat` commands) pointed at the stack running
    in `home`, started first if none is."""

    def connect() -> Stack:
        info = embedded_stack.info(home)
        if info is None or not info.running:
            code, _, err = itsacat("up", *UP_ARGS)
            assert code == 0, err
            info = embedded_stack.info(home)
        assert info is not None and info.running
        return use_stack(info, monkeypatch)

    yield connect
    clients.client.cache_clear()


def picture() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def seed_saved_data(home: Path) -> None:
    """Saved data as an earlier stack in `home` would have left it: an object in the
    stack's bucket, in a snapshot of moto's own making."""
    with pytest.MonkeyPatch.context() as env, mock_aws():
        for name in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.delenv(name, raising=False)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="training_input/old/datasets.h5", Body=b"old")
        header, payload = persistence.dump(persistence.capture(), time.time())
    persistence.write(home / DATA_DIR / persistence.SNAPSHOT_FILE, header, payload)


def test_down_wipe_deletes_the_saved_data_and_up_starts_empty(
    home: Path, itsacat: Itsacat, connect: Callable[[], Stack]
) -> None:
    if (info := embedded_stack.info(home)) is not None and info.running:
        code, _, err = itsacat("down")
        assert code == 0, err
    seed_saved_data(home)
    code, out, err = itsacat("down", "--wipe")
    assert code == 0, err
    assert f"deleted the saved data in {home / DATA_DIR}" in out
    assert not (home / DATA_DIR).exists()

    code, out, err = itsacat("up", *UP_ARGS)
    assert code == 0, err
    assert "restored" not in out
    stack = connect()
    assert stack.bucket == BUCKET
    listing = boto3.client("s3").list_object_versions(Bucket=stack.bucket)
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []
    assert stack.runs().all() == []


def test_a_run_killed_with_the_emulator_is_resumed_and_outlives_down_and_up(
    home: Path, itsacat: Itsacat, connect: Callable[[], Stack], tmp_path: Path
) -> None:
    stack = connect()
    params = {**SMALL, "epochs": 700}  # ~60 epochs/s here: long enough to be killed in
    run_id = stack.run_for(stack.upload(params))
    run = stack.runs().get(run_id)
    while not run.cursor:  # until the first commit
        assert run.status in (PREPARING, TRAINING), run.error
        time.sleep(0.05)
        run = stack.runs().get(run_id)
    # A snapshot taken after it, then the emulator dies in the middle of the run.
    seen_at = time.time()
    snapshot = home / DATA_DIR / persistence.SNAPSHOT_FILE
    wait_for(
        lambda: snapshot.exists() and persistence.read_header(snapshot)[0]["saved_at"] > seen_at,
        timeout_s=persistence.SNAPSHOT_PERIOD_S + 10,
    )
    assert stack.runs().get(run_id).status == TRAINING  # (else: more epochs, please)
    os.kill(stack.info.emulator_pid, signal.SIGKILL)

    code, out, err = itsacat("up", *UP_ARGS)  # clears the half-dead stack away first
    assert code == 0, err
    assert "restored " in out and f"from {home / DATA_DIR}" in out, out
    stack = connect()
    restored = stack.runs().get(run_id)
    assert restored.status == TRAINING, restored.error
    assert restored.cursor >= run.cursor  # at least what was committed before the snapshot
    redrives = restored.redrives

    # Its trainer died with the old stack; its lease runs out after 4 s (AWS's minute).
    wait_for(lambda: restored.lease_until < time.time(), timeout_s=10)
    code, out, err = itsacat("resume", run_id, "--wait", "--json")
    assert code == 0, err
    assert "has no live trainer; re-driving it" in err
    finished = stack.runs().get(run_id)
    assert finished.status == SUCCEEDED
    assert finished.redrives == redrives  # `resume` took it up, not the watchdog
    assert_equals_reference(stack, run_id, params)
    costs = stack.costs(run_id)

    # A plain `down` and `up`: the finished run is listed, reported, logged and served.
    code, out, err = itsacat("down")
    assert code == 0, err
    assert f"its data is kept in {home / DATA_DIR}" in out
    code, out, err = itsacat("up", *UP_ARGS)
    assert code == 0, err
    assert "restored " in out, out
    stack = connect()
    code, out, err = itsacat("runs", "--json")
    assert code == 0, err
    listed = {r["run_id"]: r for r in json.loads(out)}
    assert listed[run_id]["status"] == SUCCEEDED
    assert listed[run_id]["final_cost"] == costs[-1]
    assert stack.costs(run_id) == costs
    assert_equals_reference(stack, run_id, params)  # the model's weights too

    code, out, err = itsacat("report", run_id, "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert (tmp_path / "report" / "report.md").is_file()

    code, out, err = itsacat("logs", "--run", run_id, "--since", "1h")
    assert code == 0, err
    assert any("epochs done" in line for line in out.splitlines()), out

    # The prediction API (under its own role: in a process of its own) serves the model.
    (tmp_path / "red.png").write_bytes(picture())
    predicted = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "predict", str(tmp_path / "red.png"), "--json"],
        env={k: v for k, v in os.environ.items() if k != "AWS_SESSION_TOKEN"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["model"]["run_id"] == run_id
