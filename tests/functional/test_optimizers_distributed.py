"""L2, momentum and Adam through the distributed trainer, over moto: the reference's numbers.

The optimiser's state (momentum's v, Adam's v and s, and the dual form's scale under L2)
is committed with the weights, so a run that is handed over, crashed and re-driven, or
resumed from any commit ends with the numbers of an uninterrupted one.
"""

import pytest

from state.runs import SUCCEEDED
from tests.functional.conftest import World
from tests.functional.test_training_flow import (
    FOREVER,
    PARAMS,
    assert_equal_to_reference,
    drive,
    launch,
)
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.payloads import TrainerEvent

RULES = {
    "gd+l2": {"lambda": 0.7},
    "momentum": {"optimizer": "momentum", "beta1": 0.8},
    "adam+l2": {"optimizer": "adam", "learning_rate": 0.01, "lambda": 0.7, "epsilon": 1e-7},
}
BATCHES = {"full": {}, "minibatch": {"batch_size": 16, "commit_every": 2}}
PLANS = {"one-neuron": {}, "fanout3": {"fanout": 3}, "hybrid": {"plan": "hybrid", "fanout": 64}}
CASES = [
    (rule, batch, plan)
    for rule in RULES
    for batch in BATCHES
    for plan in ("one-neuron", "hybrid" if batch == "minibatch" else "fanout3")
]


@pytest.mark.parametrize(("rule", "batch", "plan"), CASES, ids=["-".join(c) for c in CASES])
def test_distributed_training_with_an_optimiser_equals_the_reference(
    world: World, rule: str, batch: str, plan: str
) -> None:
    params = {**PARAMS, **RULES[rule], **BATCHES[batch], **PLANS[plan]}
    run_id = launch(world, params)
    run = world.stores.runs.get(run_id)
    # Adam leaves the dual form's span: layer 1 trains in the primal form; the others keep
    # the dual form (with its scale under L2).
    assert run.first_layer == ("primal" if "adam" in rule else "dual")
    assert drive(world, run_id)["outcome"] == "succeeded"
    assert_equal_to_reference(world, run_id, params)
    model = world.stores.models.load(run_id)
    stored = model.metadata["parameters"]
    assert stored["optimizer"] == params.get("optimizer", "gd")
    assert stored["lambda"] == params.get("lambda", 0.0)


def test_an_adam_run_handed_over_and_crashed_ends_as_an_uninterrupted_one(world: World) -> None:
    """A hand-over after 3 steps, then a crash in the middle of step 7, then a re-drive:
    each start reads the weights and Adam's state of the last commit and goes on."""
    params = {**PARAMS, **RULES["adam+l2"], "epochs": 8, "batch_size": 16, "commit_every": 2}
    run_id = launch(world, params)
    calls = {"n": 0}

    def remaining() -> int:  # plenty of time for 3 steps, then almost none
        calls["n"] += 1
        return 10**9 if calls["n"] <= 3 else 100

    assert drive(world, run_id, owner="a", remaining=remaining)["outcome"] == "handover"
    assert world.stores.runs.get(run_id).cursor == 3

    from tests.functional.conftest import InProcessInvoker

    invoker = InProcessInvoker(world.stores.objects)
    seen = {"n": 0}

    def crashing(reqs):  # type: ignore[no-untyped-def]
        seen["n"] += 1
        if seen["n"] > 11:  # a few steps in, mid-step
            raise RuntimeError("worker killed")
        return invoker(reqs)

    c = Coordinator(world.cfg, world.stores, crashing)  # type: ignore[arg-type]
    c.invoker.counters = invoker.counters  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="worker killed"):
        c.drive(TrainerEvent(run_id), "b", FOREVER)
    run = world.stores.runs.get(run_id)
    assert 3 < run.cursor < 24 and run.lease_owner is None
    assert drive(world, run_id, owner="c")["outcome"] == "succeeded"
    assert world.stores.runs.get(run_id).status == SUCCEEDED
    assert_equal_to_reference(world, run_id, params)


def test_a_version_without_the_optimisers_state_is_refused(world: World) -> None:
    """A commit of a momentum run holds v beside every row; a version that lacks it (written
    by a trainer that did not know the rule) cannot be trained on from silently zeroed
    state."""
    params = {**PARAMS, **RULES["momentum"], "epochs": 3, "commit_every": 1}
    run_id = launch(world, params)
    calls = {"n": 0}

    def remaining() -> int:
        calls["n"] += 1
        return 10**9 if calls["n"] <= 1 else 100

    assert drive(world, run_id, owner="a", remaining=remaining)["outcome"] == "handover"
    run = world.stores.runs.get(run_id)
    weights = world.stores.weights.read(run_id, run.weights_version, 40, (4, 3, 1), "a")
    world.stores.weights.write(run_id, run.weights_version, weights, "a")  # no extras
    with pytest.raises(Exception, match="lack the optimiser's state"):
        drive(world, run_id, owner="b")
