"""Launch -> trainer -> neurons -> model, over moto: equal to the reference, exactly once."""

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from state.runs import FAILED, SUCCEEDED
from tests.functional.conftest import InProcessInvoker, World
from trainer_lambdas import datasets, distributed_step
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.launcher import Launcher
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference
from trainer_lambdas.payloads import TrainerEvent

DATA = datasets.synthesize(m_train=40, m_test=12, side=8, seed=5)
PARAMS = {
    "epochs": 5,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
    "neurons": {"layer1": 4, "layer2": 3, "layer3": 1},
    "learning_rate": 0.05,
}
# logistic regression: the output layer is also the first (no fused output phase)
ONE_LAYER = {"layers": 1, "activations": {"layer1": "sigmoid"}, "neurons": {"layer1": 1}}
FOREVER = lambda: 10**9  # noqa: E731 - remaining time of an invocation that never runs out


def launch(world: World, params: dict | None, body: bytes | None = None, key: str = "") -> str:
    folder = "training_input" + (f"/{key}" if key else "")
    if params is not None:
        world.s3.put_object(
            Bucket="itsacat-test", Key=f"{folder}/parameters.json", Body=json.dumps(params)
        )
    obj = world.upload(
        datasets.to_bytes(DATA) if body is None else body, key=f"{folder}/datasets.h5"
    )
    out = Launcher(world.cfg, world.stores).launch(obj)
    return str(out["run_id"])


def drive(world: World, run_id: str, owner: str = "req-1", remaining=FOREVER) -> dict:
    invoker = InProcessInvoker(world.stores.objects)
    c = Coordinator(world.cfg, world.stores, invoker)  # type: ignore[arg-type]
    return c.drive(TrainerEvent(run_id), owner, remaining)


def expected(params: dict) -> reference.Result:
    x, y = DATA.require_train().columns()
    return reference.train(params_mod.parse(params), x, y)


def assert_equal_to_reference(world: World, run_id: str, params: dict) -> None:
    ref = expected(params)
    costs = world.stores.costs.list(run_id)
    assert len(costs) == len(ref.costs)
    np.testing.assert_allclose(costs, ref.costs, rtol=1e-9, atol=0)
    model = world.stores.models.load(run_id)
    for (w, b), (rw, rb) in zip(model.weights, ref.weights, strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"fanout": 2},
        {"batch_size": 16},
        {"batch_size": 16, "fanout": 3, "commit_every": 2},
        {"first_layer": "primal"},
        {"first_layer": "primal", "batch_size": 16, "fanout": 3},
        {"plan": "hybrid", "fanout": 64, "batch_size": 16},
        ONE_LAYER,
        {**ONE_LAYER, "first_layer": "primal", "batch_size": 16},
    ],
    ids=[
        "full-fanout1",
        "full-fanout2",
        "minibatch",
        "minibatch-fanout3-commit2",
        "primal",
        "primal-minibatch-fanout3",
        "hybrid-minibatch",
        "one-layer-dual",
        "one-layer-primal-minibatch",
    ],
)
def test_distributed_run_equals_reference(world: World, over: dict) -> None:
    params = {**PARAMS, **over}
    run_id = launch(world, params)
    assert world.functions.started == [
        ("trainer", {"kind": "trainer", "run_id": run_id, "reason": "launch"})
    ]
    out = drive(world, run_id)
    assert out["outcome"] == "succeeded"
    run = world.stores.runs.get(run_id)
    assert run.status == SUCCEEDED and run.epochs_done == 5
    assert_equal_to_reference(world, run_id, params)
    assert 0 <= run.test_accuracy <= 1 and run.model_uri.endswith(f"models/{run_id}/")
    note = world.notifications()[-1]
    assert note["status"] == SUCCEEDED and note["run_id"] == run_id


@pytest.mark.parametrize(
    ("form", "per_epoch"),
    [
        # (4 + 3 + 1) neurons forward, layer 1's 4 backward: the output neuron's backward
        # pass is in its forward invocation, layer 2's in its next forward invocation
        ("primal", 8 + 4),
        # the same, but layer 1's backward pass (dZ1 / m) is the trainer's own: 4 fewer
        ("dual", 8),
    ],
)
def test_one_invocation_per_neuron_per_phase(world: World, form: str, per_epoch: int) -> None:
    run_id = launch(world, {**PARAMS, "epochs": 2, "first_layer": form})
    invoker = InProcessInvoker(world.stores.objects)
    Coordinator(world.cfg, world.stores, invoker).drive(  # type: ignore[arg-type]
        TrainerEvent(run_id), "req", FOREVER
    )
    # one commit, at the end: before it, layer 2's 3 neurons apply their last update
    assert len(invoker.requests) == 2 * per_epoch + 3
    assert world.stores.runs.get(run_id).invocations == 2 * per_epoch + 3
    first = [r for r in invoker.requests if r.layer == 1]
    assert {r.phase for r in first} == ({"forward"} if form == "dual" else {"forward", "backward"})
    assert {r.phase for r in invoker.requests if r.layer == 3} == {"output"}
    second = [(r.phase, r.dz is not None) for r in invoker.requests if r.layer == 2]
    # epoch 1 forward; epoch 2 forward, carrying epoch 1's update; the settling backward
    assert second == [("forward", False)] * 3 + [("forward", True)] * 3 + [("backward", True)] * 3
    # a dual-form request carries m = 40 coefficients per neuron, not n_x = 192 weights
    assert {r.w.shape[1] for r in first if r.phase == "forward"} == {40 if form == "dual" else 192}


def test_threshold_stops_early(world: World) -> None:
    ref = expected({**PARAMS, "epochs": 30})
    threshold = ref.costs[9]
    params = {**PARAMS, "epochs": 30, "threshold": threshold}
    run_id = launch(world, params)
    drive(world, run_id)
    first = next(i for i, c in enumerate(ref.costs) if c <= threshold)
    assert len(world.stores.costs.list(run_id)) == first + 1
    assert world.stores.runs.get(run_id).status == SUCCEEDED


def test_duplicate_upload_event_makes_one_run(world: World) -> None:
    params = {**PARAMS}
    world.s3.put_object(
        Bucket="itsacat-test", Key="training_input/parameters.json", Body=json.dumps(params)
    )
    obj = world.upload(datasets.to_bytes(DATA))
    first = Launcher(world.cfg, world.stores).launch(obj)
    second = Launcher(world.cfg, world.stores).launch(obj)
    assert first["outcome"] == "started" and second["outcome"] == "duplicate"
    assert first["run_id"] == second["run_id"]
    assert len(world.functions.started) == 1
    assert world.stores.runs.get(first["run_id"]).duplicates == 1
    # a new upload of the same key is a new run
    third = Launcher(world.cfg, world.stores).launch(world.upload(datasets.to_bytes(DATA)))
    assert third["outcome"] == "started" and third["run_id"] != first["run_id"]


def test_duplicate_trainer_does_not_repeat_a_step(world: World) -> None:
    run_id = launch(world, PARAMS)
    world.stores.runs.acquire(run_id, "first", 30)
    out = drive(world, run_id, owner="second")
    assert out["outcome"] == "not-ours"
    run = world.stores.runs.get(run_id)
    assert run.cursor == 0 and run.duplicates == 1
    assert world.stores.costs.list(run_id) == []


def test_late_trainer_cannot_commit_over_a_newer_cursor(world: World) -> None:
    run_id = launch(world, PARAMS)
    drive(world, run_id, owner="a")  # finished
    again = drive(world, run_id, owner="late")
    assert again["outcome"] == "not-ours"
    assert len(world.stores.costs.list(run_id)) == 5


def test_handover_before_the_time_limit_gives_the_same_numbers(world: World) -> None:
    params = {**PARAMS, "epochs": 8}
    run_id = launch(world, params)
    calls = {"n": 0}

    def remaining() -> int:  # plenty of time for 3 steps, then almost none
        calls["n"] += 1
        return 10**9 if calls["n"] <= 3 else 100

    out = drive(world, run_id, owner="a", remaining=remaining)
    assert out == {"run_id": run_id, "outcome": "handover", "cursor": 3}
    assert world.functions.started[-1] == (
        "trainer",
        {"kind": "trainer", "run_id": run_id, "reason": "handover"},
    )
    run = world.stores.runs.get(run_id)
    assert run.cursor == 3 and run.handovers == 1 and run.lease_owner is None
    assert drive(world, run_id, owner="b")["outcome"] == "succeeded"
    assert_equal_to_reference(world, run_id, params)


def test_crash_mid_run_then_redrive_gives_the_same_numbers(world: World) -> None:
    params = {**PARAMS, "epochs": 6, "batch_size": 16, "commit_every": 4}
    run_id = launch(world, params)
    invoker = InProcessInvoker(world.stores.objects)
    real = invoker.__call__
    seen = {"n": 0}

    # 3 rounds of invocations per step: forward layers 1, 2 (with the previous step's
    # update of layer 2) and 3 (the output layer, with its backward pass); layer 1's
    # backward pass is the trainer's, in the dual form. A commit (every 4 steps) adds one
    # round: layer 2's pending update.
    def crashing(reqs):  # dies in the middle of the 7th step
        seen["n"] += 1
        if seen["n"] > 4 * 3 + 1 + 2 * 3 + 1:
            raise RuntimeError("worker killed")
        return real(reqs)

    invoker.__call__ = crashing  # type: ignore[method-assign]
    c = Coordinator(world.cfg, world.stores, lambda r: crashing(r))  # type: ignore[arg-type]
    c.invoker.counters = invoker.counters  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="worker killed"):
        c.drive(TrainerEvent(run_id), "a", FOREVER)
    run = world.stores.runs.get(run_id)
    assert run.cursor == 4 and "worker killed" in run.last_error
    assert run.lease_owner is None  # released for the retry
    assert drive(world, run_id, owner="b")["outcome"] == "succeeded"
    assert_equal_to_reference(world, run_id, params)


@pytest.mark.parametrize(
    "params, body, reason",
    [
        ({**PARAMS, "learning_rate": -1}, None, "'learning_rate' must be a positive number"),
        ("not json", None, "not valid JSON"),
        (PARAMS, b"this is not hdf5", "not a readable HDF5 file"),
        (
            {**PARAMS, "first_layer": "dual"},
            datasets.to_bytes(datasets.synthesize(m_train=5800, m_test=0, side=2, seed=1)),
            "first_layer 'dual' needs a 5800 x 5800 Gram matrix",
        ),
        ({**PARAMS, "first_layer": "kernel"}, None, "'first_layer' must be one of auto"),
        (
            {**PARAMS, "neurons": {"layer1": 3500, "layer2": 3, "layer3": 1}},
            None,
            "layer 2's requests would carry 4.3 MB of inputs (2 x 3500 x 40 values)",
        ),
    ],
    ids=[
        "negative-learning-rate",
        "bad-json",
        "broken-dataset",
        "gram-too-big",
        "bad-form",
        "inputs-over-payload-limit",
    ],
)
def test_bad_input_fails_the_run_with_the_reason(
    world: World, params: object, body: bytes | None, reason: str
) -> None:
    text = params if isinstance(params, str) else json.dumps(params)
    world.s3.put_object(Bucket="itsacat-test", Key="training_input/parameters.json", Body=text)
    obj = world.upload(datasets.to_bytes(DATA) if body is None else body)
    out = Launcher(world.cfg, world.stores).launch(obj)
    assert out["outcome"] == "failed" and reason in out["error"]
    run = world.stores.runs.get(out["run_id"])
    assert run.status == FAILED and reason in run.error
    assert world.functions.started == []  # no trainer, nothing to retry
    note = world.notifications()[-1]
    assert note["status"] == FAILED and reason in note["error"]
    assert world.stores.models.production() is None  # no model written
    listing = world.s3.list_objects_v2(Bucket="itsacat-test", Prefix=f"runs/{out['run_id']}/")
    assert listing.get("KeyCount", 0) == 0


def test_non_dataset_keys_are_ignored(world: World) -> None:
    obj = world.upload(b"x", key="elsewhere/datasets.h5")
    assert Launcher(world.cfg, world.stores).launch(obj)["outcome"] == "ignored"
    obj = world.upload(b"x", key="training_input/notes.txt")
    assert Launcher(world.cfg, world.stores).launch(obj)["outcome"] == "ignored"


def test_each_epoch_emits_embedded_metric_format(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # 7 epochs, commits every 3: EMF lines for epochs [0, 1, 2], [3, 4, 5] and [6]
    run_id = launch(world, {**PARAMS, "epochs": 7, "commit_every": 3})
    capsys.readouterr()
    drive(world, run_id)
    records = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    for r in records:
        assert r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "itsacat"
        names = {m["Name"] for m in r["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        assert names == {"EpochSeconds", "Cost"}
        assert r["run_id"] == run_id
    assert [r["epochs"] for r in records] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [c for r in records for c in r["Cost"]] == world.stores.costs.list(run_id)
    assert all(s > 0 for r in records for s in r["EpochSeconds"])


def test_a_long_commit_splits_into_emf_documents_of_50_epochs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainer_lambdas import metrics

    metrics.record_epochs("r", [(e, 1.0 / (e + 1), 0.5) for e in range(250)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(r["Cost"]) for r in records] == [50] * 5
    assert [r["epochs"][0] for r in records] == [0, 50, 100, 150, 200]


def test_the_launcher_decides_the_first_layer_form_once_for_the_run(world: World) -> None:
    """The trainer follows the run record, not the parameters' "auto": a run launched
    before the dual form existed (no `first_layer` in its record) goes on training W1."""
    run_id = launch(world, {**PARAMS, "epochs": 2})
    assert world.stores.runs.get(run_id).first_layer == "dual"  # 40 examples < 192 inputs
    old = launch(world, {**PARAMS, "epochs": 2, "first_layer": "primal"}, key="old")
    assert world.stores.runs.get(old).first_layer == "primal"
    world.stores.runs.client.update_item(
        TableName=world.stores.runs.table,
        Key={"run_id": {"S": old}},
        UpdateExpression="REMOVE first_layer",
    )
    invoker = InProcessInvoker(world.stores.objects)
    out = Coordinator(world.cfg, world.stores, invoker).drive(  # type: ignore[arg-type]
        TrainerEvent(old), "req", FOREVER
    )
    assert out["outcome"] == "succeeded"
    forward = [r for r in invoker.requests if r.layer == 1 and r.phase == "forward"]
    assert {r.w.shape[1] for r in forward} == {192}  # primal rows, not 40 coefficients
    assert_equal_to_reference(world, old, {**PARAMS, "epochs": 2, "first_layer": "primal"})


def test_cost_rows_beyond_the_committed_epochs_are_not_read(world: World) -> None:
    """A trainer writes an epoch's cost row just before its conditional commit; if the
    commit is refused the row stays, past the run's `epochs_done`, and readers skip it."""
    costs = world.stores.costs
    assert costs.put_many("r", [(e, 1.0 / (e + 1), 0.01) for e in range(5)]) == 1
    assert costs.list("r") == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert costs.list("r", upto=3) == [1.0, 0.5, 1 / 3]
    rows = [(e, 0.5, 0.01) for e in range(60)]  # 25 rows per BatchWriteItem
    assert costs.put_many("s", rows) == 3 and len(costs.list("s")) == 60


def test_cost_rows_say_when_each_commit_wrote_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`written_times` (what `itsacat bench` times commits by): one per row, in epoch order
    (not in the order they were written)."""
    clock = iter([200.0, 100.0])
    monkeypatch.setattr("state.costs.time.time", lambda: next(clock))
    costs = world.stores.costs
    costs.put_many("w", [(e, 0.5, 0.01) for e in range(3, 6)])
    costs.put_many("w", [(e, 0.5, 0.01) for e in range(3)])
    assert costs.written_times("w") == [100.0] * 3 + [200.0] * 3


def test_a_diverging_run_fails_at_once_saying_where(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN or infinite cost ends the run FAILED at that epoch, with
    no retries (the cost row could not be stored, and the step would be recomputed).
    The outputs are clipped, so the network itself rarely gets there: the step's cost is
    made NaN from the third step on."""
    real_step = distributed_step.step
    steps = []

    def diverging(*args: Any, **kwargs: Any) -> Any:
        result = real_step(*args, **kwargs)
        steps.append(1)
        return replace(result, cost=float("nan")) if len(steps) >= 3 else result

    monkeypatch.setattr(distributed_step, "step", diverging)
    run_id = launch(world, {**PARAMS, "epochs": 10})
    out = drive(world, run_id)  # returns: nothing for Lambda to retry
    assert out["outcome"] == "diverged"
    run = world.stores.runs.get(run_id)
    assert run.status == FAILED
    assert run.error.startswith("diverged at epoch 2 (cost is nan)")
    assert "learning_rate" in run.error
    assert [n["status"] for n in world.notifications()][-1:] == ["FAILED"]
    assert len(world.stores.costs.list(run_id)) <= 2  # the finite epochs only
