"""L2 regularisation and the optimisers (gd, momentum, adam): gradients, rules, blocks, keys."""

import itertools
import math

import numpy as np
import pytest

from trainer_lambdas import datasets
from trainer_lambdas.nn import network, optimizers, params, reference, schedule
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.params import ParameterError


def base(**over: object) -> dict:
    return {
        "epochs": 10,
        "layers": 2,
        "activations": {"layer1": "relu", "layer2": "sigmoid"},
        "neurons": {"layer1": 3, "layer2": 1},
        "learning_rate": 0.1,
        **over,
    }


def net(rng: np.random.Generator, sizes: tuple[int, ...]) -> network.Weights:
    return [
        (rng.normal(0, 0.8, (n, p)), rng.normal(0, 0.3, (n, 1)))
        for p, n in itertools.pairwise(sizes)
    ]


# --- the regularised cost and its gradient ------------------------------------------------


@pytest.mark.parametrize("hidden", ["tanh", "sigmoid"])
def test_regularised_gradient_matches_finite_differences(hidden: str) -> None:
    rng = np.random.default_rng(4)
    weights = net(rng, (5, 4, 3, 1))
    acts = (hidden, hidden, "sigmoid")
    x = rng.normal(size=(5, 11))
    y = rng.integers(0, 2, (1, 11)).astype(float)
    l2, m = 0.7, 11

    def cost(ws: network.Weights) -> float:
        c, _ = network.gradients(ws, acts, x, y)
        return c + optimizers.l2_cost(ws, l2, m)

    _, grads = network.gradients(weights, acts, x, y)
    h = 1e-6
    for layer, (w, b) in enumerate(weights):
        analytic_w = optimizers.regularised(grads[layer].dw, w, l2, m)
        # biases are not regularised: their gradient is the data term's
        for param, analytic in ((w, analytic_w), (b, grads[layer].db)):
            numeric = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                old = param[idx]
                param[idx] = old + h
                plus = cost(weights)
                param[idx] = old - h
                minus = cost(weights)
                param[idx] = old
                numeric[idx] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
        # and the term is not negligible here: without it the check would fail
        assert not np.allclose(analytic_w, grads[layer].dw, rtol=1e-3)


def test_train_step_cost_and_update_are_those_of_the_regularised_cost() -> None:
    """train_step's cost is J(W) with the L2 term of W before the update, and with gd at
    lr 1 its update is W - dJ/dW."""
    rng = np.random.default_rng(5)
    weights = net(rng, (4, 3, 1))
    x = rng.normal(size=(4, 9))
    y = rng.integers(0, 2, (1, 9)).astype(float)
    p = params.parse(base(neurons={"layer1": 3, "layer2": 1}, learning_rate=1.0, **{"lambda": 2.0}))
    slots = optimizers.initial_state(p, weights)
    cost, new, _ = network.train_step(weights, slots, p, x, y, 1)
    data_cost, _ = network.gradients(weights, p.activations, x, y)
    norms = sum(float((w**2).sum()) for w, _ in weights)
    assert cost == pytest.approx(data_cost + 2.0 / (2 * 9) * norms, rel=1e-14)
    h = 1e-6
    for layer, (w, _) in enumerate(weights):
        for idx in [(0, 0), (w.shape[0] - 1, w.shape[1] - 1)]:
            old = w[idx]
            w[idx] = old + h
            plus = network.train_step(weights, slots, p, x, y, 1)[0]
            w[idx] = old - h
            minus = network.train_step(weights, slots, p, x, y, 1)[0]
            w[idx] = old
            assert w[idx] - new[layer][0][idx] == pytest.approx((plus - minus) / (2 * h), rel=1e-6)


def test_l2_cost_and_regularised_formulas() -> None:
    w1, w2 = np.array([[1.0, -2.0]]), np.array([[3.0], [0.5]])
    weights = [(w1, np.ones((1, 1))), (w2, np.ones((2, 1)) * 100)]
    # (λ / 2m) (1 + 4 + 9 + 0.25); biases do not count
    assert optimizers.l2_cost(weights, 0.4, 4) == pytest.approx(0.4 / 8 * 14.25, rel=1e-15)
    assert optimizers.l2_cost(weights, 0, 4) == 0.0
    dw = np.array([[0.5, 0.25]])
    np.testing.assert_allclose(optimizers.regularised(dw, w1, 0.4, 4), [[0.6, 0.05]], rtol=1e-15)
    assert optimizers.regularised(dw, w1, 0, 4) is dw
    assert optimizers.regularised(dw, w1, 0.0, 4) is dw


# --- the update rules, by hand ------------------------------------------------------------

W0 = [[1.0, -2.0]]
B0 = [[0.5]]
# two steps' gradients
G1, GB1 = [[0.2, -0.4]], [[0.1]]
G2, GB2 = [[0.1, 0.3]], [[-0.2]]


def two_steps(optimizer: str) -> tuple[np.ndarray, np.ndarray, Slots]:
    p = params.parse(base(optimizer=optimizer, learning_rate=0.1))
    w, b = np.array(W0), np.array(B0)
    slots = optimizers.initial_slots(optimizer, w, b)
    for t, (g, gb) in enumerate([(G1, GB1), (G2, GB2)], start=1):
        w, b, slots = optimizers.apply(w, b, np.array(g), np.array(gb), slots, t, p)
    return w, b, slots


def test_gd_two_steps_by_hand() -> None:
    w, b, slots = two_steps("gd")
    # W - 0.1 g1 - 0.1 g2
    np.testing.assert_allclose(w, [[1 - 0.02 - 0.01, -2 + 0.04 - 0.03]], rtol=1e-15)
    np.testing.assert_allclose(b, [[0.5 - 0.01 + 0.02]], rtol=1e-15)
    assert slots == Slots() and slots.names() == ()


def test_momentum_two_steps_by_hand() -> None:
    w, b, slots = two_steps("momentum")
    # v1 = 0.1 g1 = [0.02, -0.04];  W1 = W0 - 0.1 v1 = [0.998, -1.996]
    # v2 = 0.9 v1 + 0.1 g2 = [0.018 + 0.01, -0.036 + 0.03] = [0.028, -0.006]
    # W2 = W1 - 0.1 v2 = [0.998 - 0.0028, -1.996 + 0.0006] = [0.9952, -1.9954]
    np.testing.assert_allclose(slots.vw, [[0.028, -0.006]], rtol=1e-13)
    np.testing.assert_allclose(w, [[0.9952, -1.9954]], rtol=1e-14)
    # vb1 = 0.01, b1 = 0.499; vb2 = 0.009 - 0.02 = -0.011, b2 = 0.499 + 0.0011 = 0.5001
    np.testing.assert_allclose(slots.vb, [[-0.011]], rtol=1e-13)
    np.testing.assert_allclose(b, [[0.5001]], rtol=1e-14)
    assert slots.sw is None and slots.sb is None


def test_adam_two_steps_by_hand() -> None:
    w, b, slots = two_steps("adam")
    eps = 1e-8
    # step 1: v = 0.1 g1, s = 0.001 g1²; bias-corrected v̂ = g1, ŝ = g1²: a step of lr g/(|g|+ε)
    w1 = [1 - 0.1 * 0.2 / (0.2 + eps), -2 + 0.1 * 0.4 / (0.4 + eps)]
    b1 = 0.5 - 0.1 * 0.1 / (0.1 + eps)
    # step 2: v = 0.09 g1 + 0.1 g2, v̂ = v / (1 - 0.9²) = v / 0.19
    #         s = 0.000999 g1² + 0.001 g2², ŝ = s / (1 - 0.999²) = s / 0.001999
    v = [0.018 + 0.01, -0.036 + 0.03]  # [0.028, -0.006]
    s = [0.000999 * 0.04 + 0.001 * 0.01, 0.000999 * 0.16 + 0.001 * 0.09]  # [4.996e-5, 2.4984e-4]
    w2 = [
        w1[0] - 0.1 * (0.028 / 0.19) / (math.sqrt(4.996e-5 / 0.001999) + eps),
        w1[1] - 0.1 * (-0.006 / 0.19) / (math.sqrt(2.4984e-4 / 0.001999) + eps),
    ]
    vb, sb = 0.009 - 0.02, 0.000999 * 0.01 + 0.001 * 0.04  # -0.011, 4.999e-5
    b2 = b1 - 0.1 * (-0.011 / 0.19) / (math.sqrt(4.999e-5 / 0.001999) + eps)
    np.testing.assert_allclose(slots.vw, [v], rtol=1e-13)
    np.testing.assert_allclose(slots.sw, [s], rtol=1e-13)
    np.testing.assert_allclose(slots.vb, [[vb]], rtol=1e-13)
    np.testing.assert_allclose(slots.sb, [[sb]], rtol=1e-13)
    np.testing.assert_allclose(w, [w2], rtol=1e-13)
    np.testing.assert_allclose(b, [[b2]], rtol=1e-13)
    # the numbers: W1 ≈ [0.9, -1.9]; steps 0.1 (0.147368 / 0.158090) and
    # 0.1 (-0.0315789 / 0.353528): W2 ≈ [0.806782, -1.891068]
    np.testing.assert_allclose(w, [[0.806782, -1.891068]], atol=1e-6)


def test_adam_uses_its_own_betas_and_epsilon() -> None:
    p = params.parse(base(optimizer="adam", beta1=0.5, beta2=0.75, epsilon=0.5))
    w, b = np.array([[1.0]]), np.array([[0.0]])
    sl = optimizers.initial_slots("adam", w, b)
    w, b, sl = optimizers.apply(w, b, np.array([[2.0]]), np.array([[0.0]]), sl, 1, p)
    # v̂ = 2, ŝ = 4: W = 1 - 0.1 * 2 / (2 + 0.5)
    assert w[0, 0] == pytest.approx(1 - 0.1 * 2 / 2.5, rel=1e-15)
    assert b[0, 0] == 0.0  # a zero gradient: v = s = 0, no step


def test_step_number_counts_updates_from_one_across_epochs() -> None:
    full = params.parse(base())
    assert [optimizers.step_number(full, 40, e, 0) for e in range(3)] == [1, 2, 3]
    mini = params.parse(base(batch_size=16))  # 3 batches of 40
    got = [optimizers.step_number(mini, 40, e, b) for e in range(2) for b in range(3)]
    assert got == [1, 2, 3, 4, 5, 6]


# --- blocks of rows, and bit-for-bit gd ---------------------------------------------------


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_apply_on_blocks_of_rows_equals_apply_on_the_layer_bitwise(
    optimizer: str, l2: float
) -> None:
    rng = np.random.default_rng(7)
    p = params.parse(base(optimizer=optimizer, **{"lambda": l2}))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 1))
    whole = optimizers.initial_slots(optimizer, w, b)
    assert whole.names() == optimizers.slot_names(optimizer)
    wb, bb = w.copy(), b.copy()
    cuts = [(0, 2), (2, 3), (3, 7)]
    blocks = [whole.rows(lo, hi) for lo, hi in cuts]
    for t in range(1, 6):
        dw, db = rng.normal(size=(7, 5)), rng.normal(size=(7, 1))
        reg = optimizers.regularised(dw, w, l2, 13)
        w, b, whole = optimizers.apply(w, b, reg, db, whole, t, p)
        parts = []
        for (lo, hi), sl in zip(cuts, blocks, strict=True):
            reg_rows = optimizers.regularised(dw[lo:hi], wb[lo:hi], l2, 13)
            parts.append(optimizers.apply(wb[lo:hi], bb[lo:hi], reg_rows, db[lo:hi], sl, t, p))
        wb = np.vstack([q[0] for q in parts])
        bb = np.vstack([q[1] for q in parts])
        blocks = [q[2] for q in parts]
        assert np.array_equal(w, wb) and np.array_equal(b, bb)
        assert Slots.stack(blocks) == whole
    if optimizer != "gd":
        assert whole.vw is not None and whole.vw.any()


def test_slots_rows_and_stack() -> None:
    sl = Slots(vw=np.arange(12.0).reshape(4, 3), vb=np.arange(4.0).reshape(4, 1))
    parts = [sl.rows(0, 1), sl.rows(1, 4)]
    assert parts[1].vw is not None and parts[1].vw.shape == (3, 3) and parts[1].sw is None
    assert Slots.stack(parts) == sl
    assert Slots.stack([Slots(), Slots()]) == Slots()
    assert sl != Slots(vw=sl.vw, vb=sl.vb + 1) and sl != Slots(vw=sl.vw)
    with pytest.raises(ValueError, match="missing in some blocks"):
        Slots.stack([sl, Slots()])
    assert optimizers.slot_names("gd") == ()
    assert optimizers.slot_names("momentum") == ("vw", "vb")
    assert optimizers.slot_names("adam") == ("vw", "vb", "sw", "sb")
    assert optimizers.OPTIMIZERS == ("gd", "momentum", "adam")


def test_gd_without_l2_is_exactly_w_minus_lr_dw() -> None:
    rng = np.random.default_rng(9)
    p = params.parse(base(learning_rate=0.0075))
    w, b, dw, db = (rng.normal(size=s) for s in [(4, 6), (4, 1), (4, 6), (4, 1)])
    reg = optimizers.regularised(dw, w, p.l2, 17)
    assert reg is dw
    w2, b2, sl = optimizers.apply(w, b, reg, db, Slots(), 1, p)
    assert np.array_equal(w2, w - 0.0075 * dw) and np.array_equal(b2, b - 0.0075 * db)
    assert sl == Slots()


@pytest.mark.parametrize("batch_size", [None, 16])
def test_reference_with_defaults_is_bit_for_bit_plain_gradient_descent(batch_size) -> None:
    """With lambda 0 and gd, reference.train is the loop of network.step it always was."""
    x, y = datasets.synthesize(m_train=40, m_test=0, side=8, seed=3).require_train().columns()
    p = params.parse(
        base(
            epochs=15,
            layers=3,
            activations={"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
            neurons={"layer1": 6, "layer2": 3, "layer3": 1},
            batch_size=batch_size,
        )
    )
    got = reference.train(p, x, y)
    m = x.shape[1]
    weights = initial_weights(p, x.shape[0])
    costs = []
    for epoch in range(p.epochs):
        bc, sizes = [], []
        for batch in range(schedule.batches_per_epoch(p, m)):
            idx = schedule.batch_indices(p, m, epoch, batch)
            xb, yb = (x, y) if idx is None else (x[:, idx], y[:, idx])
            st = network.step(weights, p.activations, xb, yb, p.learning_rate)
            weights = st.weights
            bc.append(st.cost)
            sizes.append(xb.shape[1])
        costs.append(schedule.epoch_cost(bc, sizes))
    assert got.costs == costs
    for (w1, b1), (w2, b2) in zip(got.weights, weights, strict=True):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    assert got.slots == [Slots(), Slots(), Slots()]


# --- parameters.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "over, message",
    [
        ({"lambda": -0.1}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"lambda": "0.1"}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"lambda": None}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"lambda": True}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"lambda": float("inf")}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"lambda": float("nan")}, "'lambda' (L2 regularisation) must be a number >= 0"),
        ({"optimizer": "sgd"}, "'optimizer' must be one of gd, momentum, adam, got 'sgd'"),
        ({"optimizer": None}, "'optimizer' must be one of gd, momentum, adam, got None"),
        ({"optimizer": "adam", "beta1": 1}, "'beta1' must be a number from 0 to below 1, got 1"),
        ({"optimizer": "adam", "beta1": -0.1}, "'beta1' must be a number from 0 to below 1"),
        ({"optimizer": "momentum", "beta1": "0.9"}, "'beta1' must be a number from 0 to below 1"),
        ({"optimizer": "adam", "beta2": 1.0}, "'beta2' must be a number from 0 to below 1"),
        ({"optimizer": "adam", "beta2": float("nan")}, "'beta2' must be a number from 0 to"),
        ({"optimizer": "adam", "epsilon": 0}, "'epsilon' must be a positive number, got 0"),
        ({"optimizer": "adam", "epsilon": -1e-8}, "'epsilon' must be a positive number"),
        ({"optimizer": "adam", "epsilon": float("inf")}, "'epsilon' must be a positive number"),
        (
            {"beta1": 0.9},
            "'beta1' is used only by the momentum and adam optimizers, not by 'gd': "
            "set 'optimizer' or remove 'beta1'",
        ),
        (
            {"optimizer": "momentum", "beta2": 0.99},
            "'beta2' is used only by the adam optimizer, not by 'momentum'",
        ),
        ({"epsilon": 1e-7}, "'epsilon' is used only by the adam optimizer, not by 'gd'"),
        ({"optimizer": "momentum", "epsilon": 1e-7}, "'epsilon' is used only by the adam"),
    ],
)
def test_bad_optimizer_parameters_name_the_problem(over: dict, message: str) -> None:
    with pytest.raises(ParameterError) as e:
        params.parse(base(**over))
    assert message in str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith("parameters: ")


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"lambda": 0.7},
        {"optimizer": "gd", "lambda": 0},
        {"optimizer": "momentum"},
        {"optimizer": "momentum", "beta1": 0.5, "lambda": 1e-3},
        {"optimizer": "adam"},
        {"optimizer": "adam", "beta1": 0.0, "beta2": 0.9, "epsilon": 1e-6, "lambda": 2},
    ],
)
def test_round_trip_for_each_optimizer(over: dict) -> None:
    p = params.parse(base(**over))
    d = p.to_json()
    assert params.parse(d) == p
    assert "l2" not in d and d["lambda"] == p.l2 and d["optimizer"] == p.optimizer
    assert ("beta1" in d) == (p.optimizer in ("momentum", "adam"))
    assert ("beta2" in d) == ("epsilon" in d) == (p.optimizer == "adam")


def test_defaults_and_the_values_given() -> None:
    p = params.parse(base())
    assert (p.l2, p.optimizer, p.beta1, p.beta2, p.epsilon) == (0.0, "gd", 0.9, 0.999, 1e-8)
    q = params.parse(base(optimizer="adam", beta1=0, beta2=0.5, epsilon=1, **{"lambda": 3}))
    assert (q.l2, q.optimizer, q.beta1, q.beta2, q.epsilon) == (3.0, "adam", 0.0, 0.5, 1.0)
    assert isinstance(q.l2, float) and isinstance(q.epsilon, float)
    # the shipped defaults gain only lambda and optimizer, at their no-op values
    d = params.default().to_json()
    assert d["lambda"] == 0.0 and d["optimizer"] == "gd"
    assert not {"beta1", "beta2", "epsilon", "l2"} & set(d)
    for key in ("lambda", "optimizer", "beta1", "beta2", "epsilon"):
        assert key in params.KNOWN_KEYS
