"""The whole network, vectorised, assembled from the block operations in `neurons`.

`step` is one plain gradient-descent step; `train_step` one step of the cost and update
rule that parameters.json asks for (L2 and the optimiser, see `nn.optimizers`): with
lambda 0 and optimizer "gd" the two give the same numbers bit for bit.
"""

from dataclasses import dataclass

import numpy as np

from trainer_lambdas.nn import neurons, optimizers
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.params import Parameters

# One (W, b) pair per layer: W is (n_l, n_{l-1}), b is (n_l, 1).
Weights = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Step:
    """What one gradient step on a batch produced."""

    cost: float
    weights: Weights


def forward(weights: Weights, activations: tuple[str, ...], x: np.ndarray) -> list:
    """Forward pass over all layers; returns each layer's `neurons.Forward`."""
    outs = []
    a = x
    for (w, b), g in zip(weights, activations, strict=True):
        out = neurons.forward(w, b, a, g)
        outs.append(out)
        a = out.a
    return outs


def predict_proba(weights: Weights, activations: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """The output layer's activations, shape (1, m): the probability of class 1."""
    return forward(weights, activations, x)[-1].a


def accuracy(weights: Weights, activations: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> float:
    """Share of examples where (output > 0.5) equals the label."""
    pred = predict_proba(weights, activations, x) > 0.5
    return float((pred == (y > 0.5)).mean())


def gradients(
    weights: Weights, activations: tuple[str, ...], x: np.ndarray, y: np.ndarray
) -> tuple[float, list]:
    """Cost of the batch and each layer's `neurons.Backward`, first layer first."""
    outs = forward(weights, activations, x)
    m = x.shape[1]
    cost = cross_entropy(outs[-1].a, y)
    da = cross_entropy_grad(outs[-1].a, y)
    grads: list = [None] * len(weights)
    for layer in reversed(range(len(weights))):
        a_prev = x if layer == 0 else outs[layer - 1].a
        w = weights[layer][0]
        g = neurons.backward(w, outs[layer].a, a_prev, da, activations[layer], m, layer > 0)
        grads[layer] = g
        da = g.da_prev
    return cost, grads


def step(
    weights: Weights,
    activations: tuple[str, ...],
    x: np.ndarray,
    y: np.ndarray,
    learning_rate: float,
) -> Step:
    """One forward/backward/update on a batch."""
    cost, grads = gradients(weights, activations, x, y)
    new = [neurons.update(w, b, g, learning_rate) for (w, b), g in zip(weights, grads, strict=True)]
    return Step(cost=cost, weights=new)


def train_step(
    weights: Weights,
    slots: list[Slots],
    params: Parameters,
    x: np.ndarray,
    y: np.ndarray,
    t: int,
) -> tuple[float, Weights, list[Slots]]:
    """One forward/backward/update on the batch (x, y) with L2 and the optimiser of
    `params`, at update number t (from 1, `optimizers.step_number`), each layer with its
    optimiser state `slots` (`optimizers.initial_state` at the start). Returns the batch's
    cost (the L2 term with the weights before the update), the new weights and the new
    state."""
    cost, grads = gradients(weights, params.activations, x, y)
    m = x.shape[1]
    if params.l2 != 0:
        cost += optimizers.l2_cost(weights, params.l2, m)
    new: Weights = []
    new_slots: list[Slots] = []
    for (w, b), g, sl in zip(weights, grads, slots, strict=True):
        dw = optimizers.regularised(g.dw, w, params.l2, m)
        w2, b2, sl2 = optimizers.apply(w, b, dw, g.db, sl, t, params)
        new.append((w2, b2))
        new_slots.append(sl2)
    return cost, new, new_slots
