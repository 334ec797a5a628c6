"""reference.train with L2 and each optimiser, against a second implementation written here
straight from the formulas (its own forward, backward, cost and updates: it takes only the
data, the batch order and the initial weights from the project)."""

import numpy as np
import pytest

from trainer_lambdas import datasets
from trainer_lambdas.nn import params, reference, schedule
from trainer_lambdas.nn.init import initial_weights

ACTS = ("relu", "tanh", "sigmoid")


def independent_train(p: params.Parameters, x: np.ndarray, y: np.ndarray) -> tuple:
    """Costs per epoch, final [(W, b)], final [{vw, vb, sw, sb}] — from the formulas:
    Z_l = W_l A_{l-1} + b_l, A_l = g_l(Z_l); J = -mean(y log a + (1-y) log(1-a))
    + λ/(2m) Σ||W_l||²; dZ_L = A_L - Y; dW_l = dZ_l A_{l-1}^T / m + (λ/m) W_l,
    db_l = Σ_cols dZ_l / m, dZ_{l-1} = (W_l^T dZ_l) g'(Z_{l-1}); then the optimiser."""
    ws = [(w.copy(), b.copy()) for w, b in initial_weights(p, x.shape[0])]
    state = [
        {k: np.zeros_like(w if k.endswith("w") else b) for k in ("vw", "vb", "sw", "sb")}
        for w, b in ws
    ]
    lam, lr, b1, b2, eps = p.l2, p.learning_rate, p.beta1, p.beta2, p.epsilon
    n_total = x.shape[1]
    t = 0
    costs = []
    for epoch in range(p.epochs):
        total, count = 0.0, 0
        for batch in range(schedule.batches_per_epoch(p, n_total)):
            idx = schedule.batch_indices(p, n_total, epoch, batch)
            xb, yb = (x, y) if idx is None else (x[:, idx], y[:, idx])
            m = xb.shape[1]
            t += 1
            # forward
            zs, acts = [], [xb]
            for (w, b), g in zip(ws, ACTS, strict=True):
                z = w @ acts[-1] + b
                if g == "relu":
                    a = np.where(z > 0, z, 0.0)
                elif g == "tanh":
                    a = np.tanh(z)
                else:
                    a = 1.0 / (1.0 + np.exp(-z))
                zs.append(z)
                acts.append(a)
            a_out = acts[-1]
            data_cost = -np.mean(yb * np.log(a_out) + (1 - yb) * np.log(1 - a_out))
            reg_cost = lam / (2 * m) * sum(np.sum(np.square(w)) for w, _ in ws)
            cost = float(data_cost + reg_cost)
            total += cost * m
            count += m
            # backward
            grads = [None] * len(ws)
            dz = a_out - yb
            for layer in reversed(range(len(ws))):
                w, _ = ws[layer]
                dw = dz @ acts[layer].T / m + (lam / m) * w
                db = np.sum(dz, axis=1, keepdims=True) / m
                grads[layer] = (dw, db)
                if layer > 0:
                    da = w.T @ dz
                    z_prev = zs[layer - 1]
                    if ACTS[layer - 1] == "relu":
                        dz = da * (z_prev > 0)
                    elif ACTS[layer - 1] == "tanh":
                        dz = da * (1 - np.tanh(z_prev) ** 2)
                    else:
                        sg = 1.0 / (1.0 + np.exp(-z_prev))
                        dz = da * sg * (1 - sg)
            # update
            new = []
            for (w, b), (dw, db), st in zip(ws, grads, state, strict=True):
                out = []
                for par, grad, v_key, s_key in ((w, dw, "vw", "sw"), (b, db, "vb", "sb")):
                    if p.optimizer == "gd":
                        par = par - lr * grad
                    elif p.optimizer == "momentum":
                        st[v_key] = b1 * st[v_key] + (1 - b1) * grad
                        par = par - lr * st[v_key]
                    else:
                        st[v_key] = b1 * st[v_key] + (1 - b1) * grad
                        st[s_key] = b2 * st[s_key] + (1 - b2) * grad**2
                        v_hat = st[v_key] / (1 - b1**t)
                        s_hat = st[s_key] / (1 - b2**t)
                        par = par - lr * v_hat / (np.sqrt(s_hat) + eps)
                    out.append(par)
                new.append((out[0], out[1]))
            ws = new
        costs.append(total / count)
    return costs, ws, state


def make_params(optimizer: str, l2: float, batch_size: int | None) -> params.Parameters:
    lr = {"gd": 0.1, "momentum": 0.1, "adam": 0.01}[optimizer]
    return params.parse(
        {
            "epochs": 20,
            "layers": 3,
            "activations": {"layer1": ACTS[0], "layer2": ACTS[1], "layer3": ACTS[2]},
            "neurons": {"layer1": 6, "layer2": 4, "layer3": 1},
            "learning_rate": lr,
            "batch_size": batch_size,
            "seed": 5,
            "optimizer": optimizer,
            "lambda": l2,
        }
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return datasets.synthesize(m_train=40, m_test=12, side=8, seed=11).require_train().columns()


@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("l2", [0.0, 0.8])
@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
def test_reference_equals_the_formulas(data, optimizer: str, l2: float, batch_size) -> None:
    x, y = data
    p = make_params(optimizer, l2, batch_size)
    got = reference.train(p, x, y)
    costs, weights, state = independent_train(p, x, y)
    assert len(got.costs) == 20
    np.testing.assert_allclose(got.costs, costs, rtol=1e-9)
    for (w1, b1), (w2, b2) in zip(got.weights, weights, strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(b1, b2, rtol=1e-9, atol=1e-13)
    for sl, st in zip(got.slots, state, strict=True):
        for name in ("vw", "vb", "sw", "sb"):
            kept = getattr(sl, name)
            used = optimizer == "adam" or (optimizer == "momentum" and name in ("vw", "vb"))
            assert (kept is not None) == used, name
            if kept is not None:
                np.testing.assert_allclose(kept, st[name], rtol=1e-9, atol=1e-15)
    # it trained, and the settings matter (the comparison above could fail)
    assert got.costs[-1] < got.costs[0]
    if l2 or optimizer != "gd":
        plain = reference.train(make_params("gd", 0.0, batch_size), x, y)
        assert abs(plain.costs[-1] - got.costs[-1]) > 1e-6


def test_the_epoch_cost_includes_the_l2_term_of_the_weights_before_each_update(data) -> None:
    x, y = data
    p = make_params("gd", 0.8, None)
    one = reference.train(p, x, y, epochs=1)
    w0 = initial_weights(p, x.shape[0])
    plain = reference.train(make_params("gd", 0.0, None), x, y, epochs=1)
    penalty = 0.8 / (2 * 40) * sum(float(np.sum(w * w)) for w, _ in w0)
    assert one.costs[0] == pytest.approx(plain.costs[0] + penalty, rel=1e-13)
