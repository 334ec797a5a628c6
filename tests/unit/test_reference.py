"""The reference trainer: learns, is deterministic, honours the schedule and the threshold."""

import numpy as np

from trainer_lambdas import datasets
from trainer_lambdas.nn import network, params, reference, schedule
from trainer_lambdas.nn.init import initial_weights


def small_params(**over: object) -> params.Parameters:
    d = {
        "epochs": 60,
        "layers": 3,
        "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
        "neurons": {"layer1": 6, "layer2": 3, "layer3": 1},
        "learning_rate": 0.05,
        **over,
    }
    return params.parse(d)


def small_data() -> tuple[np.ndarray, np.ndarray]:
    ds = datasets.synthesize(m_train=40, m_test=0, side=8, seed=3)
    return ds.require_train().columns()


def test_costs_decrease_and_accuracy_improves() -> None:
    x, y = small_data()
    p = small_params(epochs=300, learning_rate=0.2)
    r = reference.train(p, x, y)
    assert len(r.costs) == 300
    assert r.costs[-1] < 0.7 * r.costs[0]
    assert np.mean(r.costs[-10:]) < np.mean(r.costs[:10])
    acc_before = network.accuracy(initial_weights(p, x.shape[0]), p.activations, x, y)
    assert network.accuracy(r.weights, p.activations, x, y) > max(acc_before, 0.8)


def test_same_seed_same_costs_bit_for_bit_and_other_seed_differs() -> None:
    x, y = small_data()
    a = reference.train(small_params(batch_size=16), x, y)
    b = reference.train(small_params(batch_size=16), x, y)
    c = reference.train(small_params(batch_size=16, seed=2), x, y)
    assert a.costs == b.costs
    for (wa, ba), (wb, bb) in zip(a.weights, b.weights, strict=True):
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb)
    assert a.costs != c.costs


def test_threshold_stops_after_first_epoch_at_or_below_it() -> None:
    x, y = small_data()
    full = reference.train(small_params(epochs=200, learning_rate=0.2), x, y)
    target = full.costs[120]
    stopped = reference.train(small_params(epochs=200, learning_rate=0.2, threshold=target), x, y)
    first = next(i for i, c in enumerate(full.costs) if c <= target)
    assert stopped.epochs == first + 1
    assert stopped.costs == full.costs[: first + 1]


def test_minibatch_schedule_covers_every_example_once_per_epoch_and_reshuffles() -> None:
    p = small_params(batch_size=16)
    m = 40
    assert schedule.batches_per_epoch(p, m) == 3
    orders = []
    for epoch in range(3):
        idx = [schedule.batch_indices(p, m, epoch, b) for b in range(3)]
        assert [len(i) for i in idx if i is not None] == [16, 16, 8]
        flat = np.concatenate([i for i in idx if i is not None])
        assert sorted(flat.tolist()) == list(range(m))
        orders.append(flat.tolist())
    assert orders[0] != orders[1]
    # a step can be recomputed on its own
    again = schedule.batch_indices(p, m, 1, 2)
    assert again is not None and again.tolist() == orders[1][32:]


def test_full_batch_cases() -> None:
    for batch in (None, 0, 40, 100):
        p = small_params(batch_size=batch)
        assert schedule.batches_per_epoch(p, 40) == 1
        assert schedule.batch_indices(p, 40, 0, 0) is None


def test_scaled_and_he_init_follow_the_documented_formulas() -> None:
    p = small_params()
    w = initial_weights(p, 10)
    rng = np.random.RandomState(1)
    expect1 = rng.randn(6, 10) / np.sqrt(10)
    expect2 = rng.randn(3, 6) / np.sqrt(6)
    assert np.array_equal(w[0][0], expect1) and np.array_equal(w[1][0], expect2)
    assert not w[0][1].any()
    he = initial_weights(small_params(init="he", seed=5), 10)
    assert np.array_equal(he[0][0], np.random.RandomState(5).randn(6, 10) * np.sqrt(2 / 10))
