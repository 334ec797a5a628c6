"""Finite-difference checks: each activation and the whole network against numeric gradients."""

import itertools

import numpy as np
import pytest

from trainer_lambdas.nn import network, neurons
from trainer_lambdas.nn.activations import ACTIVATIONS, activate, derivative
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_matches_finite_difference(name: str) -> None:
    z = np.linspace(-4, 4, 81).reshape(1, -1)
    z = z[np.abs(z) > 1e-3]  # relu has no derivative at 0
    h = 1e-6
    numeric = (activate(name, z + h) - activate(name, z - h)) / (2 * h)
    analytic = derivative(name, activate(name, z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_relu_derivative_from_its_output_is_the_step_of_its_input() -> None:
    """Backward passes get only A (no Z): relu's g'(z) = [z > 0] must come out of a = max(z, 0)
    exactly, at 0, at the smallest numbers and for -0.0 too."""
    z = np.array([[-3.0, -5e-324, -0.0, 0.0, 5e-324, 1e-300, 2.0]])
    np.testing.assert_array_equal(derivative("relu", activate("relu", z)), (z > 0).astype(float))


def test_sigmoid_is_stable_for_large_inputs() -> None:
    z = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    a = activate("sigmoid", z)
    assert np.isfinite(a).all()
    assert a[0, 0] == 0.0 and a[0, 2] == 0.5 and a[0, -1] == 1.0


def test_cross_entropy_is_finite_at_zero_and_one() -> None:
    a = np.array([[0.0, 1.0, 0.0, 1.0]])
    y = np.array([[0.0, 1.0, 1.0, 0.0]])
    assert np.isfinite(cross_entropy(a, y))
    assert np.isfinite(cross_entropy_grad(a, y)).all()
    assert cross_entropy(a[:, :2], y[:, :2]) < 1e-9


def test_cross_entropy_gradient_matches_finite_difference() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 0.95, (1, 7))
    y = rng.integers(0, 2, (1, 7)).astype(float)
    h = 1e-7
    numeric = np.zeros_like(a)
    for j in range(a.shape[1]):
        e = np.zeros_like(a)
        e[0, j] = h
        numeric[0, j] = (cross_entropy(a + e, y) - cross_entropy(a - e, y)) / (2 * h)
    # cross_entropy_grad is d(sum of losses)/da; the cost is the mean
    np.testing.assert_allclose(cross_entropy_grad(a, y) / a.shape[1], numeric, rtol=1e-5)


def _net(rng: np.random.Generator, sizes: tuple[int, ...]) -> network.Weights:
    return [
        (rng.normal(0, 0.8, (n, p)), rng.normal(0, 0.3, (n, 1)))
        for p, n in itertools.pairwise(sizes)
    ]


@pytest.mark.parametrize("hidden", ["relu", "tanh", "sigmoid"])
def test_network_gradients_match_finite_differences(hidden: str) -> None:
    rng = np.random.default_rng(1)
    sizes = (6, 5, 3, 1)
    acts = (hidden, hidden, "sigmoid")
    weights = _net(rng, sizes)
    x = rng.normal(size=(6, 11))
    y = rng.integers(0, 2, (1, 11)).astype(float)
    _, grads = network.gradients(weights, acts, x, y)
    h = 1e-6
    for layer, (w, b) in enumerate(weights):
        for param, analytic in ((w, grads[layer].dw), (b, grads[layer].db)):
            numeric = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                old = param[idx]
                param[idx] = old + h
                plus = cross_entropy(network.predict_proba(weights, acts, x), y)
                param[idx] = old - h
                minus = cross_entropy(network.predict_proba(weights, acts, x), y)
                param[idx] = old
                numeric[idx] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-8)


def test_blocks_assembled_over_a_layer_equal_the_vectorised_layer() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(7, 9))
    b = rng.normal(size=(7, 1))
    a_prev = rng.normal(size=(9, 13))
    da = rng.normal(size=(7, 13))
    whole_f = neurons.forward(w, b, a_prev, "relu")
    whole_b = neurons.backward(w, whole_f.a, a_prev, da, "relu", 13)
    for blocks in ([(i, i + 1) for i in range(7)], [(0, 3), (3, 6), (6, 7)]):
        parts_f = [neurons.forward(w[lo:hi], b[lo:hi], a_prev, "relu") for lo, hi in blocks]
        np.testing.assert_allclose(np.vstack([f.z for f in parts_f]), whole_f.z, rtol=1e-12)
        np.testing.assert_allclose(np.vstack([f.a for f in parts_f]), whole_f.a, rtol=1e-12)
        parts_b = [
            neurons.backward(w[lo:hi], f.a, a_prev, da[lo:hi], "relu", 13)
            for (lo, hi), f in zip(blocks, parts_f, strict=True)
        ]
        np.testing.assert_allclose(np.vstack([g.dw for g in parts_b]), whole_b.dw, rtol=1e-12)
        np.testing.assert_allclose(np.vstack([g.db for g in parts_b]), whole_b.db, rtol=1e-12)
        np.testing.assert_allclose(
            sum(g.da_prev for g in parts_b), whole_b.da_prev, rtol=1e-10, atol=1e-12
        )
