"""The step schedule shared exactly by the reference and the distributed trainer.

A step is (epoch, batch). Full batch: one step per epoch over all examples, in order.
Mini-batches: each epoch's order is a permutation drawn from a generator seeded by
(seed, epoch), so any step can be recomputed on its own, on any machine, at any time.
"""

import numpy as np

from trainer_lambdas.nn.params import Parameters


def batches_per_epoch(params: Parameters, m: int) -> int:
    if params.full_batch(m) or params.batch_size is None:
        return 1
    return -(-m // params.batch_size)


def batch_indices(params: Parameters, m: int, epoch: int, batch: int) -> np.ndarray | None:
    """Column indices of the examples in step (epoch, batch); None means all, in order."""
    if params.full_batch(m) or params.batch_size is None:
        return None
    order = np.random.default_rng([params.seed, epoch]).permutation(m)
    return order[batch * params.batch_size : (batch + 1) * params.batch_size]


def epoch_cost(batch_costs: list[float], batch_sizes: list[int]) -> float:
    """The cost of an epoch: the example-weighted mean of its batches' costs."""
    total = sum(c * n for c, n in zip(batch_costs, batch_sizes, strict=True))
    return total / sum(batch_sizes)
