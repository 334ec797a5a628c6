"""A deferred update's rule in a neuron request: encoded, decoded and checked."""

import json
import re

import numpy as np
import pytest

from trainer_lambdas.distributed_step import compute, rule_of
from trainer_lambdas.nn import neurons, optimizers
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.payloads import NeuronRequest, PayloadError

RNG = np.random.default_rng(3)
W, B = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 1))
DZ, GRAD_INPUT, A_PREV = RNG.normal(size=(2, 5)), RNG.normal(size=(3, 5)), RNG.normal(size=(3, 5))
ADAM = params_mod.parse(
    {
        "epochs": 1,
        "layers": 2,
        "activations": {"layer1": "relu", "layer2": "sigmoid"},
        "neurons": {"layer1": 2, "layer2": 1},
        "learning_rate": 0.01,
        "optimizer": "adam",
        "lambda": 0.5,
    }
)
SLOTS = optimizers.Slots(
    vw=RNG.normal(size=(2, 3)), vb=RNG.normal(size=(2, 1)), sw=np.ones((2, 3)), sb=np.ones((2, 1))
)


def request(**over: object) -> NeuronRequest:
    fields = {
        "run_id": "r",
        "data_key": "k",
        "phase": "forward",
        "layer": 2,
        "lo": 0,
        "hi": 2,
        "activation": "relu",
        "w": W,
        "b": B,
        "a_prev": A_PREV,
        "dz": DZ,
        "grad_input": GRAD_INPUT,
        "learning_rate": 0.01,
        "rule": rule_of(ADAM),
        "t": 4,
        "vw": SLOTS.vw,
        "vb": SLOTS.vb,
        "sw": SLOTS.sw,
        "sb": SLOTS.sb,
    }
    fields.update(over)
    return NeuronRequest(**fields)  # type: ignore[arg-type]


def round_trip(req: NeuronRequest) -> NeuronRequest:
    return NeuronRequest.from_event(json.loads(req.to_json()))


def test_a_block_applies_its_deferred_adam_update_as_the_trainer_does() -> None:
    req = round_trip(request())
    assert req.rule == rule_of(ADAM) and req.t == 4
    out = compute(req, A_PREV)
    # The trainer's side: the raw gradients back, regularised and applied to its copy.
    g = neurons.weight_gradients(DZ, GRAD_INPUT, 5)
    np.testing.assert_array_equal(out.dw, g.dw)
    dw = optimizers.regularised(g.dw, W, ADAM.l2, 5)
    w2, b2, _ = optimizers.apply(W, B, dw, g.db, SLOTS, 4, ADAM)
    np.testing.assert_array_equal(out.a, neurons.forward(w2, b2, A_PREV, "relu").a)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sw": None}, "the adam update needs 'sw' of shape (2, 3)"),
        ({"vb": np.zeros((3, 1))}, "needs 'vb' of shape (2, 1)"),
        ({"t": None}, "comes with a deferred dz and its t"),
        ({"t": 0}, "comes with a deferred dz and its t"),
        ({"rule": {**rule_of(ADAM), "optimizer": "rmsprop"}}, "unknown optimizer 'rmsprop'"),
        ({"rule": {"optimizer": "adam"}}, "'rule' must have exactly"),
    ],
)
def test_a_rule_without_what_it_needs_is_refused(over: dict, message: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(message)):
        round_trip(request(**over))
