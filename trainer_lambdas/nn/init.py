"""Initial weights, drawn from an explicit seeded generator (numpy's legacy RandomState)."""

import itertools

import numpy as np

from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.params import Parameters


def initial_weights(params: Parameters, n_x: int) -> Weights:
    """For l = 1..L in order: W_l = randn(n_l, n_{l-1}) * scale, b_l = 0.

    scale is 1/sqrt(n_{l-1}) for init "scaled" and sqrt(2/n_{l-1}) for init "he".
    """
    rng = np.random.RandomState(params.seed)
    sizes = (n_x, *params.neurons)
    weights: Weights = []
    for n_prev, n in itertools.pairwise(sizes):
        w = rng.randn(n, n_prev)
        w = w / np.sqrt(n_prev) if params.init == "scaled" else w * np.sqrt(2.0 / n_prev)
        weights.append((w, np.zeros((n, 1))))
    return weights
