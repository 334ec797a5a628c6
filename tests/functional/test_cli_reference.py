"""`itsacat reference` and `itsacat dataset` as a user runs them (real subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_lambdas import datasets
from trainer_lambdas.nn import params, reference

ITSACAT = [sys.executable, "-m", "itsacat.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ITSACAT, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ref")
    out = run("dataset", "synth", str(d / "s.h5"), "--train", "30", "--test", "10", "--side", "8")
    assert out.returncode == 0, out.stderr
    p = d / "p.json"
    p.write_text(
        json.dumps(
            {
                "epochs": 25,
                "layers": 2,
                "activations": {"layer1": "relu", "layer2": "sigmoid"},
                "neurons": {"layer1": 4, "layer2": 1},
                "learning_rate": 0.1,
            }
        )
    )
    return d / "s.h5", p


def test_reference_json_prints_one_object_equal_to_the_core(small: tuple[Path, Path]) -> None:
    data, p = small
    out = run("reference", str(data), "--params", str(p), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == {"epochs", "costs", "train_accuracy", "test_accuracy", "seconds"}
    assert result["epochs"] == 25 and len(result["costs"]) == 25
    x, y = datasets.load(data).require_train().columns()
    expected = reference.train(params.loads(p.read_text()), x, y)
    assert result["costs"] == expected.costs
    assert 0 <= result["test_accuracy"] <= 1
    assert "epoch 25/25" in out.stderr  # the progress bar went to stderr


def test_epochs_override(small: tuple[Path, Path]) -> None:
    data, p = small
    out = run("reference", str(data), "--params", str(p), "--epochs", "3", "--json")
    assert json.loads(out.stdout)["epochs"] == 3


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d.joinpath("bad.json").write_text("{oops"), "not valid JSON"),
        (lambda d: d.joinpath("bad.json").write_text('{"epochs": 1}'), "'layers' is required"),
    ],
)
def test_bad_params_are_one_clear_line(
    small: tuple[Path, Path], tmp_path: Path, setup: object, message: str
) -> None:
    setup(tmp_path)  # type: ignore[operator]
    out = run("reference", str(small[0]), "--params", str(tmp_path / "bad.json"))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_bad_dataset_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    out = run("reference", str(tmp_path / "x.h5"))
    assert out.returncode == 2
    assert "not a readable HDF5 file" in out.stderr and "Traceback" not in out.stderr


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from itsacat.cli import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
        assert "usage: itsacat" in capsys.readouterr().out, name
    out = run("models", "--help")  # and through the executable's entry point
    assert out.returncode == 0 and "usage: itsacat models" in out.stdout


@pytest.mark.slow
def test_default_parameters_reach_80_percent_on_the_cat_data(shared_data: Path) -> None:
    out = run("reference", str(shared_data / "datasets.h5"), "--json")
    result = json.loads(out.stdout)
    assert result["epochs"] == 2500
    assert result["test_accuracy"] >= 0.80


def test_itsacat_reference_accepts_the_new_keys(tmp_path: Path) -> None:
    ds = datasets.synthesize(m_train=40, m_test=12, side=8, seed=11)
    datasets.save(ds, tmp_path / "s.h5")
    p = params.parse(  # as test_reference_optimizers.make_params("adam", 0.8, 16)
        {
            "epochs": 20,
            "layers": 3,
            "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
            "neurons": {"layer1": 6, "layer2": 4, "layer3": 1},
            "learning_rate": 0.01,
            "batch_size": 16,
            "seed": 5,
            "optimizer": "adam",
            "lambda": 0.8,
        }
    )
    (tmp_path / "p.json").write_text(json.dumps({**p.to_json(), "epochs": 5}))
    data, good = str(tmp_path / "s.h5"), str(tmp_path / "p.json")
    out = subprocess.run(
        [*ITSACAT, "reference", data, "--params", good, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    x, y = datasets.load(tmp_path / "s.h5").require_train().columns()
    expected = reference.train(params.loads((tmp_path / "p.json").read_text()), x, y)
    assert result["epochs"] == 5 and result["costs"] == expected.costs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**p.to_json(), "optimizer": "momentum"}))  # beta2 with momentum
    out = subprocess.run(
        [*ITSACAT, "reference", data, "--params", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "'beta2' is used only by the adam optimizer" in out.stderr
    assert "Traceback" not in out.stderr
