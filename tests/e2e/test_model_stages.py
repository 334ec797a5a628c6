"""Your own pictures to a served model, and blue/green promotion, on the embedded stack.

One story through the real pieces: `itsacat dataset build` turns two folders of pictures
into a dataset; an upload trains it; the first model goes to production; a second, worse
run lands in staging and asks for approval; `itsacat serve` (production) and `itsacat serve
--stage staging` answer with their own models; `itsacat promote` refuses the worse model,
`--force` swaps it in, `itsacat rollback` puts production back. A promotion racing another
against the stack's S3 is refused, not lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from state.models import POINTER_KEYS, PRODUCTION, STAGING, ModelStore, PromotionConflict
from state.runs import SUCCEEDED
from tests.api.api_support import Api, PictureServer, free_port
from tests.e2e.conftest import Stack
from tests.support.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
ITSACAT = [sys.executable, "-m", "itsacat.cli"]
GOOD = {
    "epochs": 40,
    "layers": 2,
    "activations": {"layer1": "relu", "layer2": "sigmoid"},
    "neurons": {"layer1": 3, "layer2": 1},
    "learning_rate": 0.05,
    "seed": 3,
}
# One step at a tiny rate: the model barely moves from its random start.
WORSE = {**GOOD, "epochs": 1, "learning_rate": 1e-9, "seed": 5}


def itsacat(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [*ITSACAT, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def folders(root: Path) -> tuple[Path, Path]:
    """Reddish "cats" (JPEG, some rotated by EXIF) and bluish others (PNG, GIF, WebP)."""
    rng = np.random.RandomState(0)
    cats, others = root / "cats", root / "others"
    cats.mkdir()
    others.mkdir()
    for i in range(12):
        h, w = 30 + i, 40 - i
        red = rng.randint(0, 90, (h, w, 3)).astype(np.uint8)
        red[..., 0] += 160
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 3 == 0 else 1  # orientation: rotated 90 degrees
        Image.fromarray(red).save(cats / f"cat{i}.jpeg", exif=exif)
        blue = rng.randint(0, 90, (h, w, 3)).astype(np.uint8)
        blue[..., 2] += 160
        kind = ("png", "gif", "webp")[i % 3]
        Image.fromarray(blue).save(others / f"other{i}.{kind}")
    (others / "notes.txt").write_text("not a picture")
    return cats, others


@contextlib.contextmanager
def served(stage: str, log: Path) -> Iterator[Api]:
    """`itsacat serve --stage STAGE` on the stack, re-reading the model pointer each request."""
    port = free_port()
    env = {**os.environ, "ITSACAT_FETCH_PORTS": "any", "ITSACAT_MODEL_CHECK_SECONDS": "0"}
    argv = [*ITSACAT, "serve", "--stage", stage, "--port", str(port), "--allow-hosts", "127.0.0.2"]
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
    api = Api(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                if api.get("/", timeout=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield api
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def no_stages(stack: Stack) -> Iterator[None]:
    """The stack's bucket without stage pointers, as before any model (put back after)."""
    s3 = boto3.client("s3")
    saved = {}
    for key in POINTER_KEYS.values():
        with contextlib.suppress(ClientError):
            saved[key] = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
            s3.delete_object(Bucket=stack.bucket, Key=key)
    yield
    for key in POINTER_KEYS.values():
        s3.delete_object(Bucket=stack.bucket, Key=key)
        if key in saved:
            s3.put_object(Bucket=stack.bucket, Key=key, Body=saved[key])


def train(stack: Stack, dataset: Path, params: dict) -> dict[str, Any]:
    folder = stack.folder()
    boto3.client("s3").put_object(
        Bucket=stack.bucket, Key=f"{folder}/parameters.json", Body=json.dumps(params)
    )
    key = f"{folder}/datasets.h5"
    boto3.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=dataset.read_bytes())
    run = stack.wait(stack.run_for(key), timeout_s=180)
    assert run.status == SUCCEEDED, run.error
    return {"run_id": run.run_id, "test_accuracy": run.test_accuracy}


def announcement(notifications: Callable[[], list[dict]], run_id: str) -> dict:
    """The run's notification (SNS delivers it a moment after the run ends)."""
    seen: list[dict] = []

    def arrived() -> dict | None:
        seen.extend(notifications())
        return next((n for n in seen if n["run_id"] == run_id), None)

    return dict(wait_for(arrived, timeout_s=30, interval_s=0.2))


def verdict_model(api: Api, url: str) -> tuple[str, str]:
    status, answer = api.image(url)
    assert status == 200, answer
    return answer["model"]["run_id"], answer["model"]["stage"]


def test_built_dataset_trains_serves_and_is_promoted_only_on_approval(
    stack: Stack, no_stages: None, notifications: Callable[[], list[dict]], tmp_path: Path
) -> None:
    cats, others = folders(tmp_path)
    dataset = tmp_path / "mine.h5"
    built = itsacat(
        "dataset", "build", str(dataset), "--class", f"cat={cats}", "--class",
        f"non-cat={others}", "--size", "16", "--test-fraction", "0.25", "--seed", "0",
    )  # fmt: skip
    assert "notes.txt" in built.stdout + built.stderr  # listed as skipped

    first = train(stack, dataset, GOOD)
    assert first["test_accuracy"] == 1.0
    models = ModelStore(stack.bucket)
    assert models.pointer(PRODUCTION).run_id == first["run_id"]  # type: ignore[union-attr]
    assert announcement(notifications, first["run_id"])["stage"] == "production"

    second = train(stack, dataset, WORSE)
    assert second["test_accuracy"] < first["test_accuracy"], second
    assert models.pointer(PRODUCTION).run_id == first["run_id"]  # type: ignore[union-attr]
    assert models.pointer(STAGING).run_id == second["run_id"]  # type: ignore[union-attr]
    note = announcement(notifications, second["run_id"])
    assert note["stage"] == "staging" and note["production_run_id"] == first["run_id"]
    assert note["promote_command"] == f"itsacat promote {second['run_id']}"

    listing = json.loads(itsacat("models", "--json").stdout)
    stages = {m["run_id"]: m["stages"] for m in listing}
    assert stages[first["run_id"]] == ["production"]
    assert stages[second["run_id"]] == ["staging"]

    with contextlib.ExitStack() as running:
        pictures = PictureServer("127.0.0.2").start()
        running.callback(pictures.stop)
        blue = running.enter_context(served("production", tmp_path / "blue.log"))
        green = running.enter_context(served("staging", tmp_path / "green.log"))
        pictures.files["cat.jpeg"] = ("image/jpeg", (cats / "cat4.jpeg").read_bytes())
        url = pictures.url("/gen/cat.jpeg")
        status, answer = blue.image(url)
        assert status == 200 and answer["label"] == "cat", answer
        assert verdict_model(blue, url) == (first["run_id"], "production")
        assert verdict_model(green, url) == (second["run_id"], "staging")

        refused = itsacat("promote", second["run_id"], check=False)
        assert refused.returncode == 1
        assert "below production's 100.0%" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert verdict_model(blue, url) == (first["run_id"], "production")

        itsacat("promote", second["run_id"], "--force")
        assert verdict_model(blue, url) == (second["run_id"], "production")

        back = itsacat("rollback")
        assert f"{first['run_id']} is back in production" in back.stdout
        assert verdict_model(blue, url) == (first["run_id"], "production")
        assert verdict_model(green, url) == (second["run_id"], "staging")


class PausedBeforeWrite:
    """The stack's S3, with `act` run between a promotion's read and its conditional PUT."""

    def __init__(self, act: Callable[[], object]) -> None:
        self.s3 = boto3.client("s3")
        self.act: Callable[[], object] | None = act

    def put_object(self, **kwargs: Any) -> Any:
        if self.act is not None and kwargs["Key"] == POINTER_KEYS[PRODUCTION]:
            act, self.act = self.act, None
            act()
        return self.s3.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def test_a_promotion_racing_another_on_the_stack_is_refused_not_lost(
    stack: Stack, no_stages: None
) -> None:
    from tests.api.api_support import train_tiny_model

    store = ModelStore(stack.bucket)
    model = train_tiny_model(seed=1, epochs=5)
    for run_id in ("race-a", "race-b", "race-c"):
        store.store(run_id, model.weights, model.metadata)
    store.offer("race-a")
    racing = ModelStore(
        stack.bucket,
        s3_client=PausedBeforeWrite(lambda: ModelStore(stack.bucket).promote("race-b", True)),
    )
    with pytest.raises(PromotionConflict, match="it held race-a, now race-b"):
        racing.promote("race-c", force=True)
    pointer = store.pointer(PRODUCTION)
    assert pointer is not None
    assert (pointer.run_id, pointer.previous) == ("race-b", ("race-a",))
