"""The whole network, vectorised, assembled from the block operations in `neurons`."""

from dataclasses import dataclass

import numpy as np

from trainer_lambdas.nn import neurons
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad

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
