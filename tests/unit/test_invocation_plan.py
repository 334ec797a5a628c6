"""The invocation plan (pure) and the distributed step against the vectorised network."""

import dataclasses

import numpy as np
import pytest

from trainer_lambdas import distributed_step
from trainer_lambdas.invocation_plan import (
    Block,
    blocks,
    deferred_blocks,
    invocations_per_commit,
    invocations_per_step,
    max_rows,
)
from trainer_lambdas.nn import network, optimizers
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse


def test_default_plan_is_one_neuron_per_invocation() -> None:
    p = blocks(12288, (20, 7, 5, 1), 1, 209)
    assert [len(layer) for layer in p] == [20, 7, 5, 1]
    assert p[0][3] == Block(1, 3, 4) and p[3] == [Block(4, 0, 1)]
    # 33 forward (the output neuron's with its backward pass), 20 backward (layer 1's);
    # layers 2 and 3 apply their updates in their next forward invocations
    assert invocations_per_step(p) == 53
    # layer 1 in the dual form: no backward invocations for its 20 neurons
    assert invocations_per_step(p, dual=True) == 33
    # before each commit, one invocation per block of layers 2 and 3 settles their updates
    assert [len(x) for x in deferred_blocks(p)] == [0, 7, 5, 0]
    assert invocations_per_commit(p) == 12
    # the hybrid distribution's local layers defer nothing
    assert invocations_per_commit(blocks(12288, (20, 7, 5, 1), 1, 209, remote_layers=1)) == 0


@pytest.mark.parametrize("per_invocation", [1, 2, 3, 7, 100])
def test_blocks_cover_every_neuron_once_in_order(per_invocation: int) -> None:
    for layer in blocks(50, (20, 7, 5, 1), per_invocation, 30):
        rows = [r for blk in layer for r in range(blk.lo, blk.hi)]
        assert rows == list(range(layer[-1].hi))
        assert all(0 < blk.size <= per_invocation for blk in layer)


def test_one_invocation_per_layer_when_k_is_large() -> None:
    assert [len(x) for x in blocks(12288, (20, 7, 5, 1), 4096, 209)] == [1, 1, 1, 1]


def test_blocks_are_capped_to_stay_under_the_payload_limit() -> None:
    cap = max_rows(12288, 209)
    assert 10 < cap < 320  # a 320-wide first layer cannot go in one invocation
    p = blocks(12288, (320, 1), 4096, 209)
    assert max(b.size for b in p[0]) == cap and sum(b.size for b in p[0]) == 320
    with pytest.raises(ValueError):
        blocks(10, (2, 1), 0, 5)


def direct(reqs):  # the neuron function, in-process, without the data cache
    return [_direct(r) for r in reqs]


def _direct(r: NeuronRequest) -> NeuronResponse:
    x, y = (X, Y) if r.indices is None else (X[:, r.indices], Y[:, r.indices])
    return distributed_step.compute(r, r.a_prev if r.a_prev is not None else x, y)


def assert_same_step(got, want) -> None:  # type: ignore[no-untyped-def]
    """The distributed step's cost and new weights are the vectorised step's."""
    assert got.cost == pytest.approx(want.cost, rel=1e-12)
    for (w, b), (ww, wb) in zip(got.weights, want.weights, strict=True):
        np.testing.assert_allclose(w, ww, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b, wb, rtol=1e-12, atol=1e-15)


rng = np.random.default_rng(0)
X = rng.normal(size=(6, 9))
Y = rng.integers(0, 2, (1, 9)).astype(float)


def three_layers() -> list:
    return [
        (rng.normal(size=(5, 6)), rng.normal(size=(5, 1))),
        (rng.normal(size=(3, 5)), rng.normal(size=(3, 1))),
        (rng.normal(size=(1, 3)), rng.normal(size=(1, 1))),
    ]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_distributed_step_equals_the_network_step(k: int) -> None:
    acts = ("relu", "tanh", "sigmoid")
    weights = three_layers()
    inputs = distributed_step.StepInputs("r", "k", acts, 0.1, Y, None)
    p = blocks(6, (5, 3, 1), k, 9)
    got = distributed_step.step(weights, p, inputs, direct)
    # layer 2's update is pending: its rows are still the old ones until it is settled
    assert list(got.deferred) == [1]
    assert np.array_equal(got.weights[1][0], weights[1][0])
    settled, _ = distributed_step.settle(got.weights, got.deferred, p, inputs, direct)
    assert_same_step(
        distributed_step.Step(got.cost, settled, {}, got.state),
        network.step(weights, acts, X, Y, 0.1),
    )


RULES = {
    "gd": {},
    "momentum+l2": {"optimizer": "momentum", "lambda": 0.3},
    "adam+l2": {"optimizer": "adam", "lambda": 0.3, "beta1": 0.8},
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("k", [1, 2])
def test_deferred_updates_over_several_steps_equal_the_network_steps(k: int, rule: str) -> None:
    """Steps that carry each hidden layer's update into its next forward invocation train
    the same weights as updating at once, step after step, on changing batches; with L2
    and an optimiser, the carried update takes the block's rows of the optimiser's state."""
    acts = ("relu", "tanh", "relu", "sigmoid")
    weights = [*three_layers()[:2], (rng.normal(size=(2, 3)), rng.normal(size=(2, 1)))]
    weights.append((rng.normal(size=(1, 2)), rng.normal(size=(1, 1))))
    params = params_mod.parse(
        {
            "epochs": 1,
            "layers": 4,
            "activations": {f"layer{i + 1}": a for i, a in enumerate(acts)},
            "neurons": {"layer1": 5, "layer2": 3, "layer3": 2, "layer4": 1},
            "learning_rate": 0.1,
            **RULES[rule],
        }
    )
    p = blocks(6, (5, 3, 2, 1), k, 9)
    sent: list[NeuronRequest] = []

    def recording(reqs):
        sent.extend(reqs)
        return direct(reqs)

    want, got, deferred = weights, weights, None
    want_slots = optimizers.initial_state(params, weights)
    state = None
    batches = [None, [0, 2, 4, 6, 8], [1, 3, 5, 7], None]
    for t, idx in enumerate(batches, start=1):
        cols = slice(None) if idx is None else idx
        inputs = distributed_step.StepInputs(
            "r", "k", acts, 0.1, Y[:, cols], idx, rule=None if rule == "gd" else params, t=t
        )
        cost, want, want_slots = network.train_step(
            want, want_slots, params, X[:, cols], Y[:, cols], t
        )
        step = distributed_step.step(got, p, inputs, recording, deferred, state)
        assert step.cost == pytest.approx(cost, rel=1e-12)
        got, deferred, state = step.weights, step.deferred, step.state
    assert sorted(deferred or {}) == [1, 2]
    settled, state = distributed_step.settle(got, deferred or {}, p, inputs, recording, state)
    assert_same_step(distributed_step.Step(0.0, settled, {}, state), network.Step(0.0, want))
    for got_slots, want_layer in zip(state.slots, want_slots, strict=True):
        for name in want_layer.names():
            np.testing.assert_allclose(
                getattr(got_slots, name), getattr(want_layer, name), rtol=1e-12, atol=1e-15
            )
    # per step: every block forward, layer 1's backward; then one settling wave
    per_step = invocations_per_step(p)
    assert len(sent) == len(batches) * per_step + invocations_per_commit(p)
    n_settle = invocations_per_commit(p)
    assert all(r.phase == "backward" and r.layer in (2, 3) for r in sent[-n_settle:])
    assert not any(r.phase == "backward" and r.layer > 1 for r in sent[:-n_settle])
    carried = [r for r in sent if r.phase == "forward" and r.dz is not None]
    assert {r.layer for r in carried} == {2, 3}
    assert len(carried) == (len(batches) - 1) * sum(len(x) for x in deferred_blocks(p))


def test_payloads_round_trip_exactly() -> None:
    import json

    a = rng.normal(size=(3, 4))
    req = NeuronRequest("r", "k", "backward", 2, 0, 3, "relu", a, a[:, :1], None, [3, 1], a)
    again = NeuronRequest.from_event(json.loads(req.to_json()))
    assert np.array_equal(again.w, a) and again.indices == [3, 1] and again.a_prev is None
    assert again.dz is not None and np.array_equal(again.dz, a)
    lr = 0.1 + 1e-17  # a float that must survive JSON exactly
    x = rng.normal(size=(4, 5))  # the layer's input: 4 rows, 5 examples
    dz = rng.normal(size=(3, 5))
    fwd = NeuronRequest("r", "k", "forward", 2, 0, 3, "relu", a, a[:, :1], x, None, dz, x, lr)
    again = NeuronRequest.from_event(json.loads(fwd.to_json()))
    assert again.learning_rate == lr and np.array_equal(again.grad_input, x)  # type: ignore[arg-type]
    resp = NeuronResponse(dw=a, db=a[:, :1])
    back = NeuronResponse.from_json(json.dumps(resp.to_dict()).encode())
    assert back.dw is not None and np.array_equal(back.dw, a) and back.a is None


@pytest.mark.parametrize("k", [1, 5])
def test_hybrid_plan_fans_out_only_the_first_layer_and_equals_the_network_step(k: int) -> None:
    acts = ("relu", "tanh", "sigmoid")
    weights = three_layers()
    p = blocks(6, (5, 3, 1), k, 9, remote_layers=1)
    assert [len(x) for x in p] == [len(blocks(6, (5,), k, 9)[0]), 0, 0]
    sent: list[NeuronRequest] = []

    def recording(reqs):
        sent.extend(reqs)
        return direct(reqs)

    got = distributed_step.step(
        weights, p, distributed_step.StepInputs("r", "k", acts, 0.1, Y, None), recording
    )
    want = network.step(weights, acts, X, Y, 0.1)
    assert {r.layer for r in sent} == {1}
    # the first layer's backward needs no weights, so none are sent
    assert all(r.w.size == 0 for r in sent if r.phase == "backward")
    assert got.deferred == {}  # the trainer's own layers are updated at once
    assert_same_step(got, want)


def test_a_layers_shared_input_is_encoded_once_and_identically() -> None:
    import json

    a = rng.normal(size=(5, 9))
    reqs = [
        NeuronRequest("r", "k", "forward", 2, i, i + 1, "relu", a[i : i + 1], a[:, :1], a)
        for i in range(3)
    ]
    memo: dict[int, bytes] = {}
    shared = [r.to_json(memo) for r in reqs]
    assert shared == [r.to_json() for r in reqs] and len(memo) == 1
    back = [NeuronRequest.from_event(json.loads(p)) for p in shared]
    assert all(np.array_equal(b.a_prev, a) for b in back)  # type: ignore[arg-type]
    assert [b.w.tolist() for b in back] == [a[i : i + 1].tolist() for i in range(3)]


def test_a_network_whose_layer_inputs_cannot_fit_a_request_is_refused() -> None:
    from trainer_lambdas.invocation_plan import check_inputs

    check_inputs((20, 7, 5, 1), 209, "fanout")  # the cat network: 2 x 20 x 209 values
    with pytest.raises(ValueError, match=r"layer 2's requests would carry 5\.7 MB"):
        check_inputs((900, 7, 1), 209, "fanout")  # a hidden layer 2 gets two 900 x 209 inputs
    check_inputs((900, 1), 209, "fanout")  # the output layer gets only one: 2.9 MB
    check_inputs((900, 7, 1), 209, "hybrid")  # only layer 1 fans out


def test_a_deferred_update_that_does_not_fit_its_rows_is_refused() -> None:
    import json

    from trainer_lambdas.payloads import PayloadError

    a = rng.normal(size=(5, 9))
    ok = NeuronRequest("r", "k", "forward", 2, 0, 2, "relu", a[:2, :5], a[:2, :1], a, None)
    for dz, grad_input in ((a[:1], a), (a[:2], a[:4]), (a[:2, :3], a)):
        bad = dataclasses.replace(ok, dz=dz, grad_input=grad_input, learning_rate=0.1)
        with pytest.raises(PayloadError, match="do not fit rows 0:2"):
            NeuronRequest.from_event(json.loads(bad.to_json()))
    good = dataclasses.replace(ok, dz=a[:2], grad_input=a, learning_rate=0.1)
    assert NeuronRequest.from_event(json.loads(good.to_json())).dz is not None
