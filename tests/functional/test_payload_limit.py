"""The worst request of a run at the cat data's size (12,288 inputs, 209 examples, 600-200-1
in blocks of 200 neurons) stays under Lambda's 6 MB synchronous payload limit, measured on
the real request bytes of two distributed steps (seconds of arithmetic, so not in the unit
tier; tests/unit/test_plan_budget.py checks the budget itself)."""

import json
from collections.abc import Sequence

import numpy as np

from trainer_lambdas import distributed_step, invocation_plan
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
    invocation_plan.check_inputs(p.neurons, m, p.distribution)  # accepted at launch
    rng = np.random.default_rng(3)
    x = rng.random((n_x, m))
    y = rng.integers(0, 2, (1, m)).astype(float)
    blocks = invocation_plan.for_run(n_x, p.neurons, p.neurons_per_invocation, m, p.distribution)
    sizes: dict[tuple[int, str, bool], int] = {}
    responses: list[int] = []

    def invoke(reqs: Sequence[NeuronRequest]) -> list[NeuronResponse]:
        out = []
        for r in reqs:
            body = r.to_json()  # the bytes the trainer sends (distributed_step -> Invoke)
            key = (r.layer, r.phase, r.dz is not None)
            sizes[key] = max(sizes.get(key, 0), len(body))
            wire = NeuronRequest.from_event(json.loads(body))
            resp = distributed_step.compute(wire, x if wire.a_prev is None else wire.a_prev, y)
            responses.append(len(json.dumps(resp.to_dict())))
            out.append(resp)
        return out

    inp = distributed_step.StepInputs(
        "run", "runs/run/train.npz", p.activations, p.learning_rate, y, None
    )
    weights = initial_weights(p, n_x)
    first = distributed_step.step(weights, blocks, inp, invoke)
    # the second step's layer-2 requests also carry the first step's deferred update
    second = distributed_step.step(first.weights, blocks, inp, invoke, first.deferred)
    distributed_step.settle(second.weights, second.deferred, blocks, inp, invoke)
    assert (2, "forward", True) in sizes and (3, "output", False) in sizes  # all kinds seen
    worst = max(sizes.values())
    assert worst == sizes[(2, "forward", True)]  # two 600 x 209 inputs and a block's rows
    assert worst < LIMIT, f"a request of {worst} bytes: {sizes}"
    assert max(responses) < LIMIT
    # and the blocks' numbers are the network's
    want = network.step(weights, p.activations, x, y, p.learning_rate)
    np.testing.assert_allclose(first.cost, want.cost, rtol=1e-12)
