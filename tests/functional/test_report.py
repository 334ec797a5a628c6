"""`itsacat report`: real PNGs and a report.md from a run trained to the end over moto.

The run is launched and driven in-process (as in test_training_flow); the report is made by
the same `make_report` the command calls, with the world's stores injected.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itsacat import cli, target
from itsacat.errors import UserError
from itsacat.report import Sources, gather, make_report, write_report
from state.clients import client as cached_client
from state.models import LoadedModel
from state.runs import SUCCEEDED
from tests.functional.conftest import BUCKET, InProcessInvoker, World
from trainer_lambdas import datasets
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.launcher import Launcher
from trainer_lambdas.payloads import TrainerEvent

PARAMS = {
    "epochs": 6,
    "layers": 2,
    "activations": {"layer1": "relu", "layer2": "sigmoid"},
    "neurons": {"layer1": 3, "layer2": 1},
    "learning_rate": 0.05,
}
# The pixel size of each plot (the figure sizes and DPI the report promises).
SIZES = {
    "cost.png": (800, 450),
    "accuracy.png": (600, 450),
    "confusion.png": (550, 450),
    "misclassified.png": (900, 600),
}


def launch(world: World, data: datasets.Dataset) -> str:
    world.s3.put_object(
        Bucket=BUCKET, Key="training_input/parameters.json", Body=json.dumps(PARAMS)
    )
    obj = world.upload(datasets.to_bytes(data))
    return str(Launcher(world.cfg, world.stores).launch(obj)["run_id"])


def finished(world: World, data: datasets.Dataset) -> str:
    run_id = launch(world, data)
    invoker = InProcessInvoker(world.stores.objects)
    out = Coordinator(world.cfg, world.stores, invoker).drive(  # type: ignore[arg-type]
        TrainerEvent(run_id), "req-1", lambda: 10**9
    )
    assert out["outcome"] == "succeeded"
    return run_id


def sources(world: World) -> Sources:
    s = world.stores
    return Sources(runs=s.runs, costs=s.costs, models=s.models, objects=s.objects)


def assert_real_image(path: Path, size: tuple[int, int], min_colours: int = 20) -> None:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size, f"{path.name}: {im.size} != {size}"
        pixels = np.asarray(im.convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > min_colours, f"{path.name}: only {colours} distinct colours"
    assert pixels.std() > 10, f"{path.name}: nearly uniform"


def test_report_of_a_finished_run(world: World, tmp_path: Path) -> None:
    run_id = finished(world, datasets.synthesize(m_train=40, m_test=12, side=8, seed=5))
    run = world.stores.runs.get(run_id)
    assert run.status == SUCCEEDED

    path = make_report(run_id, sources(world), tmp_path / "out")

    assert path == tmp_path / "out" / "report.md"
    for name, size in SIZES.items():
        assert_real_image(tmp_path / "out" / name, size)
    md = path.read_text()
    for name in SIZES:
        assert f"]({name})" in md
    assert run_id in md
    assert f"{run.test_accuracy:.4f}" in md
    right = round(run.test_accuracy * 12)
    assert f"({right} of 12 test pictures)" in md
    assert f"{run.train_accuracy:.4f}" in md
    assert f"| final cost | {world.stores.costs.list(run_id)[-1]:.6f} |" in md
    assert "| learning_rate | 0.05 |" in md
    assert "| activations | layer1: relu, layer2: sigmoid |" in md
    assert f"| epochs | {PARAMS['epochs']} |" in md
    assert f"s3://{BUCKET}/training_input/datasets.h5" in md
    assert f"s3://{BUCKET}/models/{run_id}/" in md
    assert "re-drives" in md and "handovers" in md
    assert run.invocations > 0
    assert "| " + " | ".join(str(v) for v in run.counters().values()) + " |" in md
    assert "per epoch" in md and "not recorded per epoch" in md


def test_report_without_a_test_set_leaves_out_the_test_plots(world: World, tmp_path: Path) -> None:
    run_id = finished(world, datasets.synthesize(m_train=30, m_test=0, side=8, seed=2))
    assert world.stores.runs.get(run_id).test_key is None
    out = tmp_path / "r"
    out.mkdir()
    (out / "confusion.png").write_bytes(b"stale from an earlier report")

    md = make_report(run_id, sources(world), out).read_text()

    assert_real_image(out / "cost.png", SIZES["cost.png"])
    assert_real_image(out / "accuracy.png", SIZES["accuracy.png"])
    assert not (out / "confusion.png").exists()
    assert not (out / "misclassified.png").exists()
    assert "confusion.png" not in md and "misclassified.png" not in md
    assert "no test set" in md and run_id in md


def test_unknown_run_is_one_clear_error(world: World) -> None:
    with pytest.raises(UserError, match=r"^no run 'nope' \(see `itsacat runs`\)$"):
        gather("nope", sources(world))


def test_unfinished_run_has_no_report(world: World, tmp_path: Path) -> None:
    run_id = launch(world, datasets.synthesize(m_train=20, m_test=4, side=8))
    with pytest.raises(UserError, match=rf"run {run_id} is still TRAINING \(epoch 0/6\)"):
        make_report(run_id, sources(world), tmp_path)
    assert not list(tmp_path.iterdir())


def test_no_misclassified_picture_says_so(tmp_path: Path) -> None:
    # One sigmoid neuron that says "cat" to everything, and a test set of cats only.
    model = LoadedModel(
        run_id="r1",
        metadata={},
        weights=[(np.zeros((1, 4 * 4 * 3)), np.full((1, 1), 5.0))],
        activations=("sigmoid",),
        input_shape=(4, 4, 3),
        classes=("non-cat", "cat"),
        etag="",
        uri="s3://b/models/r1/",
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    summary = {"run_id": "r1", "status": SUCCEEDED, "epochs": 3, "train_accuracy": 1.0}

    path = write_report(summary, [0.5, 0.2, 0.1], model, x, np.ones(5), ("no", "yes"), tmp_path)

    assert_real_image(tmp_path / "misclassified.png", SIZES["misclassified.png"], min_colours=2)
    assert_real_image(tmp_path / "confusion.png", SIZES["confusion.png"])
    md = path.read_text()
    assert "None of the test pictures is misclassified" in md
    assert "| test accuracy | 1.0000 (5 of 5 test pictures) |" in md


def test_the_command_prints_the_report_path(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run_id = finished(world, datasets.synthesize(m_train=40, m_test=12, side=8, seed=5))
    env = {
        "ITSACAT_BUCKET": BUCKET,
        "RUNS_TABLE": world.cfg.runs_table,
        "COSTS_TABLE": world.cfg.costs_table,
    }
    cached_client.cache_clear()  # clients built for another target would outlive it
    monkeypatch.setattr(target, "connect", lambda start=False: env)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # what training printed (its metric lines) is not the command's
    try:
        assert cli.main(["report", run_id]) == 0
        printed = capsys.readouterr().out.strip()
        assert Path(printed) == Path("reports") / run_id / "report.md"
        assert (tmp_path / printed).is_file()

        assert cli.main(["report", "nope", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err == "itsacat: error: no run 'nope' (see `itsacat runs`)\n"
    finally:
        cached_client.cache_clear()


def test_failed_run_has_no_report_and_says_why(world: World, tmp_path: Path) -> None:
    world.s3.put_object(
        Bucket=BUCKET,
        Key="training_input/parameters.json",
        Body=json.dumps({**PARAMS, "learning_rate": -1}),
    )
    obj = world.upload(datasets.to_bytes(datasets.synthesize(m_train=10, m_test=2, side=8)))
    run_id = Launcher(world.cfg, world.stores).launch(obj)["run_id"]
    with pytest.raises(UserError, match=rf"^run {run_id} is FAILED \(.*learning_rate.*\): it has"):
        make_report(run_id, sources(world), tmp_path)
