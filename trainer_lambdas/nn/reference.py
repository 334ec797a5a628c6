"""The single-process reference trainer: the oracle the distributed trainer must equal.

Each step (epoch, batch) of `schedule` is one `network.train_step`: forward and backward
on the batch's m examples, the cost plus the L2 term (λ / 2m) Σ ||W_l||² of the weights
before the update, each dW_l regularised with (λ / m) W_l, then `optimizers.apply` on every
layer at update number t = epoch * batches_per_epoch + batch + 1 (from 1, across epochs).
An epoch's cost is the example-weighted mean of its batches' costs (`schedule.epoch_cost`).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from trainer_lambdas.nn import network, optimizers, schedule
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.params import Parameters


@dataclass(frozen=True)
class Result:
    costs: list[float]
    weights: Weights
    seconds: float
    slots: list[Slots] = field(default_factory=list)  # the final optimiser state, per layer

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
    slots = optimizers.initial_state(params, weights)
    costs: list[float] = []
    for epoch in range(params.epochs if epochs is None else epochs):
        batch_costs, sizes = [], []
        for batch in range(schedule.batches_per_epoch(params, m)):
            idx = schedule.batch_indices(params, m, epoch, batch)
            xb, yb = (x, y) if idx is None else (x[:, idx], y[:, idx])
            t = optimizers.step_number(params, m, epoch, batch)
            batch_cost, weights, slots = network.train_step(weights, slots, params, xb, yb, t)
            batch_costs.append(batch_cost)
            sizes.append(xb.shape[1])
        cost = schedule.epoch_cost(batch_costs, sizes)
        costs.append(cost)
        if on_epoch is not None:
            on_epoch(epoch, cost)
        if params.threshold > 0 and cost <= params.threshold:
            break
    return Result(costs=costs, weights=weights, seconds=time.perf_counter() - start, slots=slots)
