"""Issue 16, finding 9c: a block's rows and its layer's shared inputs together stay under
Lambda's 6 MB synchronous payload limit, measured on the real request bytes."""

import json
from collections.abc import Sequence

import numpy as np
import pytest

from trainer_lambdas import fanout, plan
from trainer_lambdas.nn import network
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.nn.params import parse
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse

LIMIT = 6 * 1024 * 1024  # Lambda's synchronous request and response payload limit


def test_the_worst_request_of_600_200_1_with_fanout_200_fits_the_payload_limit() -> None:
    """The cat data's shape (12,288 inputs, a full batch of 209): layer 2's requests carry
    two 600 x 209 inputs (3.8 MB in hex) that `check_inputs` accepts; a block of 200 rows
    on top of them made a 6,605,179-byte request before the fix."""
    n_x, m = 12288, 209
    p = parse(
        {
            "epochs": 2,
            "layers": 3,
            "activations": {"layer1": "relu", "layer2": "relu", "layer3": "sigmoid"},
            "neurons": {"layer1": 600, "layer2": 200, "layer3": 1},
            "learning_rate": 0.01,
            "fanout": 200,
            "first_layer": "primal",
        }
    )
    plan.check_inputs(p.neurons, m, p.plan)  # accepted at launch
    rng = np.random.default_rng(3)
    x = rng.random((n_x, m))
    y = rng.integers(0, 2, (1, m)).astype(float)
    blocks = plan.for_params(n_x, p.neurons, p.fanout, m, p.plan)
    sizes: dict[tuple[int, str, bool], int] = {}
    responses: list[int] = []

    def invoke(reqs: Sequence[NeuronRequest]) -> list[NeuronResponse]:
        out = []
        for r in reqs:
            body = r.to_json()  # the bytes the trainer sends (fanout -> Invoke)
            key = (r.layer, r.phase, r.dz is not None)
            sizes[key] = max(sizes.get(key, 0), len(body))
            wire = NeuronRequest.from_event(json.loads(body))
            resp = fanout.compute(wire, x if wire.a_prev is None else wire.a_prev, y)
            responses.append(len(json.dumps(resp.to_dict())))
            out.append(resp)
        return out

    inp = fanout.StepInputs("run", "runs/run/train.npz", p.activations, p.learning_rate, y, None)
    weights = initial_weights(p, n_x)
    first = fanout.step(weights, blocks, inp, invoke)
    # the second step's layer-2 requests also carry the first step's deferred update
    second = fanout.step(first.weights, blocks, inp, invoke, first.deferred)
    fanout.settle(second.weights, second.deferred, blocks, inp, invoke)
    assert (2, "forward", True) in sizes and (3, "output", False) in sizes  # all kinds seen
    worst = max(sizes.values())
    assert worst == sizes[(2, "forward", True)]  # two 600 x 209 inputs and a block's rows
    assert worst < LIMIT, f"a request of {worst} bytes: {sizes}"
    assert max(responses) < LIMIT
    # and the blocks' numbers are the network's
    want = network.step(weights, p.activations, x, y, p.learning_rate)
    np.testing.assert_allclose(first.cost, want.cost, rtol=1e-12)


@pytest.mark.parametrize("m", [209, 1000, 20_000])
@pytest.mark.parametrize("neurons", [(600, 200, 1), (20, 7, 5, 1), (3, 2, 1), (100, 1)])
def test_a_block_and_its_layers_inputs_stay_within_the_limit(
    neurons: tuple[int, ...], m: int
) -> None:
    """For every network `check_inputs` accepts, every block of the plan fits with its
    layer's shared inputs and the JSON (the budget, computed as the requests are built)."""
    n_x = 12288
    try:
        plan.check_inputs(neurons, m, "fanout", n_x)
    except ValueError:
        return
    n_prev = n_x
    for i, layer in enumerate(plan.plan(n_x, neurons, 4096, m), start=1):
        shared = plan.shared_bytes(i, len(neurons), n_prev, m)
        rows = max(b.size for b in layer)
        assert shared + rows * plan.row_bytes(n_prev, m) + plan.json_room(m) <= LIMIT
        n_prev = neurons[i - 1]


def test_a_network_whose_one_row_and_inputs_cannot_fit_is_refused() -> None:
    """Layer 2's two 3 x 43,000 inputs (3.9 MB) pass the inputs' own budget, but one row
    of its own (dZ, A and the deferred dZ: 3 x 43,000 values) does not fit beside them."""
    with pytest.raises(ValueError, match=r"one neuron of layer 2 needs a request of 6\.3 MB"):
        plan.check_inputs((3, 2, 1), 43_000, "fanout")
    plan.check_inputs((3, 2, 1), 20_000, "fanout")  # a smaller batch fits
    # the first layer, when its width is given: one 49,872-value row and a batch of 100,000
    with pytest.raises(ValueError, match="one neuron of layer 1 needs a request"):
        plan.check_inputs((3, 1), 100_000, "hybrid", 49_872)
