"""Inputs that cannot work are refused at launch, with the reason,
instead of failing later (a redelivered launch, a trainer or neuron out of memory)."""

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from itsacat.deploy import package
from state.runs import FAILED, TRAINING
from tests.functional.conftest import World
from trainer_lambdas import datasets
from trainer_lambdas.config import Config
from trainer_lambdas.launcher import MAX_ROW_VALUES, Launcher, first_layer_form

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "epochs": 2,
    "layers": 2,
    "activations": {"layer1": "relu", "layer2": "sigmoid"},
    "neurons": {"layer1": 3, "layer2": 1},
    "learning_rate": 0.05,
}


def launch(world: World, params: dict, body: bytes, cfg: Config | None = None) -> dict:
    world.s3.put_object(
        Bucket="itsacat-test", Key="training_input/parameters.json", Body=json.dumps(params)
    )
    obj = world.upload(body)
    return Launcher(cfg or world.cfg, world.stores).launch(obj)


def assert_refused(world: World, out: dict, *reasons: str) -> None:
    assert out["outcome"] == "failed", out
    run = world.stores.runs.get(out["run_id"])
    assert run.status == FAILED
    for reason in reasons:
        assert reason in run.error, run.error
    assert "\n" not in run.error
    assert world.functions.started == []
    listing = world.s3.list_objects_v2(Bucket="itsacat-test", Prefix=f"runs/{out['run_id']}/")
    assert listing.get("KeyCount", 0) == 0  # refused before anything was written


# ------------------------------------------------------------ (a) DynamoDB's item limit


def test_primal_rows_over_dynamodbs_item_limit_are_refused_with_what_to_do(world: World) -> None:
    """129x129x3 pictures: a primal first-layer row is 49,923 float64 (399,384 bytes),
    one DynamoDB item each with its key and bias: over 400,000 bytes, the limit read
    safely. Before the fix the launch accepted them; from 130x130x3 (moto: 405,000 bytes)
    or 131x131x3 (AWS: 409,600) writing the initial weights failed (ValidationException),
    and SQS redelivered the launch while the run stayed PREPARING."""
    body = datasets.to_bytes(datasets.synthesize(m_train=3, m_test=0, side=129, seed=2))
    out = launch(world, {**SMALL, "first_layer": "primal"}, body)
    assert_refused(
        world,
        out,
        "layer 1's weight rows would hold 49923 values in the primal form",
        "over DynamoDB's 400 KB item limit",
        "use first_layer 'dual' (rows of 3 values) or smaller pictures",
        "at most 49872 values, e.g. 128x128x3",
    )


def test_auto_takes_the_dual_form_and_128_pixels_fit_the_primal_one(world: World) -> None:
    body = datasets.to_bytes(datasets.synthesize(m_train=3, m_test=0, side=129, seed=2))
    run_id = launch(world, SMALL, body)["run_id"]
    run = world.stores.runs.get(run_id)
    assert run.status == TRAINING and run.first_layer == "dual"
    body = datasets.to_bytes(datasets.synthesize(m_train=3, m_test=0, side=128, seed=2))
    world.s3.put_object(
        Bucket="itsacat-test",
        Key="training_input/b/parameters.json",
        Body=json.dumps({**SMALL, "first_layer": "primal"}),
    )
    obj = world.upload(body, key="training_input/b/datasets.h5")
    run = world.stores.runs.get(Launcher(world.cfg, world.stores).launch(obj)["run_id"])
    assert run.status == TRAINING and run.first_layer == "primal"  # 49,152 values fit


def test_the_first_layer_form_that_fits_a_dynamodb_item() -> None:
    assert MAX_ROW_VALUES == 49_872  # (400,000 - 1 KB of key and other attributes) / 8
    assert first_layer_form("primal", 128 * 128 * 3, 5000) is False
    assert first_layer_form("auto", 12288, 209) is True
    # "auto" would choose primal (n_x m^2 over its cost rule), whose rows do not fit: dual
    assert first_layer_form("auto", 131 * 131 * 3, 1100) is True
    with pytest.raises(ValueError, match="use first_layer 'dual' \\(rows of 1100 values\\)"):
        first_layer_form("primal", 131 * 131 * 3, 1100)
    # the dual form's Gram matrix would be over 256 MB: no form fits
    with pytest.raises(ValueError, match=r"use smaller pictures \(at most 49872 values"):
        first_layer_form("auto", 200 * 200 * 3, 6000)


# ------------------------------------------------------------ (b) the functions' memory


def cfg_with(world: World, **env: str) -> Config:
    """The world's configuration, read from an environment as the handlers read it."""
    c = world.cfg
    base = {
        "ITSACAT_BUCKET": c.bucket,
        "RUNS_TABLE": c.runs_table,
        "WEIGHTS_TABLE": c.weights_table,
        "COSTS_TABLE": c.costs_table,
        "IDEMPOTENCY_TABLE": c.idempotency_table,
        "TOPIC_ARN": c.topic_arn,
        "TRAINER_FUNCTION": c.trainer_function,
        "NEURON_FUNCTION": c.neuron_function,
    }
    return Config.from_env({**base, **env})


def test_a_dataset_over_the_trainers_memory_is_refused(world: World) -> None:
    """Trainer and neuron at 257 MB: 1 MB above the headroom, 58,254 pixels at 18 bytes;
    20 pictures of 32x32x3 are 61,440. Before the fix the launch accepted it."""
    cfg = cfg_with(world, TRAINER_MEMORY_MB="4096", NEURON_MEMORY_MB="257")
    assert (cfg.memory_mb, cfg.trainer_memory_mb, cfg.neuron_memory_mb) == (1024, 4096, 257)
    body = datasets.to_bytes(datasets.synthesize(m_train=20, m_test=0, side=32, seed=2))
    out = launch(world, SMALL, body, cfg)
    assert_refused(
        world,
        out,
        "dataset: 20 images of 32x32x3 need about 1 MB in the trainer and neuron functions",
        "over the 257 MB they have less 256 MB headroom: use at most 18 images of 32x32x3",
    )


def test_a_compressed_dataset_is_measured_by_its_pixels_not_its_bytes(world: World) -> None:
    """A 2.4 MB picture array compressed into a few KB: the launch function (its memory
    from AWS_LAMBDA_FUNCTION_MEMORY_SIZE) would hold the pixels three times."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("train_set_x", data=np.zeros((200, 64, 64, 3), np.uint8), compression=9)
        f.create_dataset("train_set_y", data=np.arange(200) % 2)
    body = buf.getvalue()
    assert len(body) < 100_000
    cfg = cfg_with(world, AWS_LAMBDA_FUNCTION_MEMORY_SIZE="260")
    out = launch(world, SMALL, body, cfg)
    assert_refused(world, out, "200 images of 64x64x3", "in the launch function", "over its 260 MB")


def test_the_rule_on_the_templates_figures() -> None:
    mem = datasets.Memory(launch_mb=1024, workers_mb=2048)
    assert mem.problem(3_200_000, 259, (64, 64, 3)) is None  # the cat data
    assert mem.problem(95 * 2**20, 8000, (64, 64, 3)) is None  # 94 MB of pixels
    # the largest file the launch accepts (512 MB): 8 x its pixels as float64, twice
    big = mem.problem(512 * 2**20, 43690, (64, 64, 3))
    assert big is not None and "the launch function" in big
    # 150 MB of pixels: the launch holds 600 MB; the workers would need 2.7 GB
    mid = mem.problem(150 * 2**20, 12800, (64, 64, 3))
    assert mid is not None and "trainer and neuron functions" in mid
    assert "need about 2700 MB" in mid and "use at most 8495 images of 64x64x3" in mid
    gram = mem.problem(10**6, 5000, (2, 2, 3), gram_bytes=8 * 5000 * 5000)
    assert gram is None
    small = datasets.Memory(launch_mb=1024, workers_mb=400)
    gram = small.problem(10**6, 5000, (2, 2, 3), gram_bytes=8 * 5000 * 5000)
    assert gram is not None and "Gram matrix" in gram and "first_layer 'primal'" in gram


def test_the_template_tells_the_launch_function_the_other_functions_memory() -> None:
    resources = package.load_template(ROOT / "templates" / "template.yaml")["Resources"]
    launch_fn = resources["LaunchFunction"]["Properties"]
    env = launch_fn["Environment"]["Variables"]
    assert int(env["TRAINER_MEMORY_MB"]) == resources["TrainerFunction"]["Properties"]["MemorySize"]
    assert int(env["NEURON_MEMORY_MB"]) == resources["NeuronFunction"]["Properties"]["MemorySize"]
    # the defaults, when a variable is absent, are the template's figures
    assert Config.memory_mb == launch_fn["MemorySize"]
    assert Config.trainer_memory_mb == int(env["TRAINER_MEMORY_MB"])
    assert Config.neuron_memory_mb == int(env["NEURON_MEMORY_MB"])


def test_the_template_sets_the_neuron_invocations_a_trainer_keeps_in_flight() -> None:
    template = package.load_template(ROOT / "templates" / "template.yaml")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["NEURON_CONCURRENCY"] == {"Ref": "NeuronConcurrency"}
    default = template["Parameters"]["NeuronConcurrency"]["Default"]
    assert Config.neuron_concurrency == default  # the figure when the variable is absent
    required = {
        name: "x"
        for name in (
            "ITSACAT_BUCKET",
            "RUNS_TABLE",
            "WEIGHTS_TABLE",
            "COSTS_TABLE",
            "IDEMPOTENCY_TABLE",
            "TOPIC_ARN",
            "TRAINER_FUNCTION",
            "NEURON_FUNCTION",
        )
    }
    assert Config.from_env({**required, "NEURON_CONCURRENCY": "7"}).neuron_concurrency == 7


# ------------------------------------------------------------ the optimiser's state per row


def test_adams_state_beside_each_row_counts_against_the_item_limit(world: World) -> None:
    """Adam stores v and s beside each weight row: three rows' worth in one item. 100x100x3
    pictures (30,000 values a row) fit plain gd but not Adam in the primal form, which is
    Adam's only form."""
    body = datasets.to_bytes(datasets.synthesize(m_train=3, m_test=0, side=100, seed=2))
    out = launch(world, {**SMALL, "first_layer": "primal", "optimizer": "adam"}, body)
    assert_refused(
        world,
        out,
        "layer 1's weight rows would hold 30000 values in the primal form",
        "with the adam optimizer's state beside it (3 copies)",
        f"at most {MAX_ROW_VALUES // 3} values",
    )
    assert first_layer_form("primal", 30000, 3) is False  # gd: it fits


def test_the_dual_form_with_adam_is_refused_and_auto_picks_primal(world: World) -> None:
    body = datasets.to_bytes(datasets.synthesize(m_train=6, m_test=0, side=8, seed=2))
    out = launch(world, {**SMALL, "first_layer": "dual", "optimizer": "adam"}, body)
    assert_refused(world, out, "first_layer 'dual' cannot train with the adam optimizer")
    assert first_layer_form("auto", 192, 6, "adam") is False
    assert first_layer_form("auto", 192, 6, "momentum") is True
