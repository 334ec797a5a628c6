"""The single-process reference trainer: the oracle the distributed trainer must equal."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer_lambdas.nn import network, schedule
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.params import Parameters


@dataclass(frozen=True)
class Result:
    costs: list[float]
    weights: Weights
    seconds: float

    @property
    def epochs(self) -> int:
        return len(self.costs)


def train(
    params: Parameters,
    x: np.ndarray,
    y: np.ndarray,
    on_epoch: Callable[[int, float], None] | None = None,
    epochs: int | None = None,
) -> Result:
    """Train on x (n_x, m), y (1, m); stop after `epochs` or at the first cost <= threshold."""
    start = time.perf_counter()
    m = x.shape[1]
    weights = initial_weights(params, x.shape[0])
    costs: list[float] = []
    for epoch in range(params.epochs if epochs is None else epochs):
        batch_costs, sizes = [], []
        for batch in range(schedule.batches_per_epoch(params, m)):
            idx = schedule.batch_indices(params, m, epoch, batch)
            xb, yb = (x, y) if idx is None else (x[:, idx], y[:, idx])
            step = network.step(weights, params.activations, xb, yb, params.learning_rate)
            weights = step.weights
            batch_costs.append(step.cost)
            sizes.append(xb.shape[1])
        cost = schedule.epoch_cost(batch_costs, sizes)
        costs.append(cost)
        if on_epoch is not None:
            on_epoch(epoch, cost)
        if params.threshold > 0 and cost <= params.threshold:
            break
    return Result(costs=costs, weights=weights, seconds=time.perf_counter() - start)
