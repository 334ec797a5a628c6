"""The dual form of the first layer: the same training as the primal form, cheaper."""

import numpy as np
import pytest

from trainer_lambdas.nn import dual, network, neurons, optimizers
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad
from trainer_lambdas.nn.params import ParameterError

RNG = np.random.default_rng(3)
N_X, M, N1 = 30, 12, 4
X = RNG.random((N_X, M))
Y = (RNG.random((1, M)) > 0.5).astype(float)
ACTS = ("relu", "sigmoid")


def _weights() -> network.Weights:
    return [
        (RNG.standard_normal((N1, N_X)) * 0.3, RNG.standard_normal((N1, 1)) * 0.1),
        (RNG.standard_normal((1, N1)) * 0.5, np.zeros((1, 1))),
    ]


def _dual_step(state, basis, g, idx, lr):
    """One step with layer 1 in the dual form and layer 2 as usual."""
    (c, b1), (w2, b2) = state
    cols = g if idx is None else g[:, idx]
    p0 = basis.p0 if idx is None else basis.p0[:, idx]
    f1 = dual.forward(c, b1, p0, cols, ACTS[0])
    f2 = neurons.forward(w2, b2, f1.a, ACTS[1])
    y = Y if idx is None else Y[:, idx]
    da = -(y / f2.a) + (1 - y) / (1 - f2.a)
    g2 = neurons.backward(w2, f2.a, f1.a, da, ACTS[1], y.shape[1])
    g1 = dual.backward(f1.a, g2.da_prev, ACTS[0], M, idx)
    return [neurons.update(c, b1, g1, lr), neurons.update(w2, b2, g2, lr)]


@pytest.mark.parametrize("batches", [None, [[0, 3, 5, 7], [1, 2, 4, 6, 8, 9, 10, 11]]])
def test_dual_training_equals_primal(batches) -> None:
    w = _weights()
    basis = dual.Basis.of(w[0][0], X)
    g = dual.gram(X)
    state = dual.initial_state(w, M)
    assert not state[0][0].any() and state[0][0].shape == (N1, M)
    primal = w
    for _ in range(20):
        for idx in batches or [None]:
            xb, yb = (X, Y) if idx is None else (X[:, idx], Y[:, idx])
            primal = network.step(primal, ACTS, xb, yb, 0.1).weights
            state = _dual_step(state, basis, g, idx, 0.1)
    rebuilt = dual.primal(state, basis, X)
    for (w_p, b_p), (w_d, b_d) in zip(primal, rebuilt, strict=True):
        np.testing.assert_allclose(w_d, w_p, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b_d, b_p, rtol=1e-12, atol=1e-14)
    assert not np.allclose(rebuilt[0][0], w[0][0])  # it did train


def test_use_dual_decides_by_shape_and_form() -> None:
    assert dual.use_dual("auto", 12288, 209)
    assert not dual.use_dual("auto", 100, 209)  # more examples than inputs
    assert dual.use_dual("dual", 100, 209)
    assert not dual.use_dual("primal", 12288, 209)
    big = 6000  # 8 * 6000^2 bytes > 256 MB
    assert not dual.use_dual("auto", 12288, big)
    with pytest.raises(ParameterError, match="Gram matrix"):
        dual.use_dual("dual", 12288, big)


def test_a_dual_form_request_must_be_a_first_layer_forward() -> None:
    import json

    from trainer_lambdas.payloads import NeuronRequest, PayloadError

    def req(**over: object) -> dict:
        r = NeuronRequest(
            run_id="r",
            data_key="k",
            phase="forward",
            layer=1,
            lo=0,
            hi=1,
            activation="relu",
            w=np.zeros((1, M)),
            b=np.zeros((1, 1)),
            p0=np.ones((1, M)),
        )
        return {**json.loads(r.to_json()), **over}

    ok = NeuronRequest.from_event(req())
    assert ok.p0 is not None and ok.p0.shape == (1, M)
    with pytest.raises(PayloadError, match="only a first-layer forward"):
        NeuronRequest.from_event(req(layer=2))
    with pytest.raises(PayloadError, match="is not a packed array"):
        NeuronRequest.from_event(req(p0={"shape": [1, 2], "f8": "zz"}))


# --- L2 and momentum in the dual form -----------------------------------------------------


def _params(optimizer: str, l2: float) -> params_mod.Parameters:
    return params_mod.parse(
        {
            "epochs": 1,
            "layers": 2,
            "activations": {"layer1": ACTS[0], "layer2": ACTS[1]},
            "neurons": {"layer1": N1, "layer2": 1},
            "learning_rate": 0.1,
            "optimizer": optimizer,
            "lambda": l2,
        }
    )


def _dual_train_step(st, layer2, slots2, basis, g, idx, t, p):
    """One step with layer 1 in the dual form (scale, C, momentum's v_scale, V), layer 2 as
    usual: the cost (with the L2 term from scale, C, P0 and G) and the new states."""
    w2, b2 = layer2
    cols = g if idx is None else g[:, idx]
    p0 = basis.p0 if idx is None else basis.p0[:, idx]
    f1 = dual.forward(st.c, st.b, p0, cols, ACTS[0], st.scale)
    f2 = neurons.forward(w2, b2, f1.a, ACTS[1])
    y = Y if idx is None else Y[:, idx]
    m_b = y.shape[1]
    sq = dual.squared_norm(st.scale, st.c, basis.w0, basis.p0, g) + optimizers.squared_norm(w2)
    cost = cross_entropy(f2.a, y) + optimizers.l2_penalty(sq, p.l2, m_b)
    g2 = neurons.backward(w2, f2.a, f1.a, cross_entropy_grad(f2.a, y), ACTS[1], m_b)
    g1 = dual.backward(f1.a, g2.da_prev, ACTS[0], M, idx)
    new1 = dual.update_coefficients(
        st.scale, st.c, st.v_scale, st.vc, st.b, st.vb, g1.dw, g1.db, m_b, t, p
    )
    dw2 = optimizers.regularised(g2.dw, w2, p.l2, m_b)
    w2, b2, slots2 = optimizers.apply(w2, b2, dw2, g2.db, slots2, t, p)
    return cost, new1, (w2, b2), slots2


@pytest.mark.parametrize("batches", [None, [[0, 3, 5, 7], [1, 2, 4, 6, 8, 9, 10, 11]]])
@pytest.mark.parametrize("optimizer, l2", [("gd", 0.5), ("momentum", 0.0), ("momentum", 0.5)])
def test_dual_training_with_l2_and_momentum_equals_primal(batches, optimizer, l2) -> None:
    p = _params(optimizer, l2)
    w = _weights()
    basis = dual.Basis.of(w[0][0], X)
    g = dual.gram(X)
    (c, b1), layer2 = dual.initial_state(w, M)
    st = dual.initial_step(c, b1, optimizer)
    assert st.scale == 1.0 and st.v_scale == 0.0
    slots2 = optimizers.initial_slots(optimizer, *layer2)
    primal, slots = w, optimizers.initial_state(p, w)
    t = 0
    for _ in range(20):
        for idx in batches or [None]:
            t += 1
            xb, yb = (X, Y) if idx is None else (X[:, idx], Y[:, idx])
            cost_p, primal, slots = network.train_step(primal, slots, p, xb, yb, t)
            cost_d, st, layer2, slots2 = _dual_train_step(st, layer2, slots2, basis, g, idx, t, p)
            assert cost_d == pytest.approx(cost_p, rel=1e-12)
    w1 = dual.materialize(basis.w0, st.c, X, st.scale)
    pairs = [(w1, primal[0][0]), (st.b, primal[0][1]), *zip(layer2, primal[1], strict=True)]
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    if optimizer == "momentum":
        v1 = dual.materialize(basis.w0, st.vc, X, st.v_scale)
        np.testing.assert_allclose(v1, slots[0].vw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(st.vb, slots[0].vb, rtol=1e-12, atol=1e-14)
        assert slots2 == optimizers.Slots(vw=slots2.vw, vb=slots2.vb) and slots[1].vw is not None
        np.testing.assert_allclose(slots2.vw, slots[1].vw, rtol=1e-12, atol=1e-14)
    # L2 shrank W1(0)'s share (and only L2 does), and the network did train
    assert (st.scale < 1.0) == (l2 > 0) and (st.v_scale != 0.0) == (l2 > 0 and optimizer != "gd")
    assert not np.allclose(w1, w[0][0])


def test_without_l2_the_dual_update_is_the_plain_one_bitwise() -> None:
    p = _params("gd", 0.0)
    rng = np.random.default_rng(8)
    c, b, dc, db = (rng.normal(size=s) for s in [(N1, M), (N1, 1), (N1, M), (N1, 1)])
    new = dual.update_coefficients(1.0, c, 0.0, None, b, None, dc, db, M, 1, p)
    assert new.scale == 1.0 and new.v_scale == 0.0 and new.vc is None and new.vb is None
    assert np.array_equal(new.c, c - 0.1 * dc) and np.array_equal(new.b, b - 0.1 * db)
    assert dual.regularised_coefficients(1.0, c, dc, 0.0, M)[1] is dc


def test_dual_update_on_blocks_of_rows_equals_the_whole_layer() -> None:
    p = _params("momentum", 0.3)
    rng = np.random.default_rng(2)
    c, b, vc, vb, dc, db = (
        rng.normal(size=s) for s in [(N1, M), (N1, 1), (N1, M), (N1, 1), (N1, M), (N1, 1)]
    )
    whole = dual.update_coefficients(0.9, c, 0.05, vc, b, vb, dc, db, 5, 3, p)
    parts = [
        dual.update_coefficients(
            0.9, c[lo:hi], 0.05, vc[lo:hi], b[lo:hi], vb[lo:hi], dc[lo:hi], db[lo:hi], 5, 3, p
        )
        for lo, hi in [(0, 1), (1, N1)]
    ]
    assert all(q.scale == whole.scale and q.v_scale == whole.v_scale for q in parts)
    for name in ("c", "b", "vc", "vb"):
        assert np.array_equal(np.vstack([getattr(q, name) for q in parts]), getattr(whole, name))


def test_the_dual_l2_term_is_that_of_the_materialized_weights() -> None:
    rng = np.random.default_rng(6)
    w0 = rng.normal(size=(N1, N_X))
    c = rng.normal(size=(N1, M)) * 0.1
    basis = dual.Basis.of(w0, X)
    g = dual.gram(X)
    w1 = dual.materialize(w0, c, X, 0.7)
    assert dual.squared_norm(0.7, c, w0, basis.p0, g) == pytest.approx(np.sum(w1 * w1), rel=1e-12)
    assert dual.l2_cost(0.7, c, basis, g, 0.4, 6) == pytest.approx(
        0.4 / 12 * np.sum(w1 * w1), rel=1e-12
    )
    assert dual.l2_cost(0.7, c, basis, g, 0.0, 6) == 0.0


def test_adam_keeps_the_first_layer_primal() -> None:
    assert dual.use_dual("auto", 12288, 209, optimizer="momentum")
    assert dual.use_dual("dual", 12288, 209, optimizer="gd")
    assert not dual.use_dual("auto", 12288, 209, optimizer="adam")
    assert not dual.use_dual("primal", 12288, 209, optimizer="adam")
    with pytest.raises(ParameterError, match="first_layer 'dual' cannot train with the adam"):
        dual.use_dual("dual", 12288, 209, optimizer="adam")
    p = _params("adam", 0.0)
    c, b = np.zeros((1, M)), np.zeros((1, 1))
    with pytest.raises(ParameterError, match="the dual form cannot train with the adam"):
        dual.update_coefficients(1.0, c, 0.0, None, b, None, c, b, M, 1, p)
    with pytest.raises(ParameterError, match="cannot train with the adam"):
        dual.initial_step(np.zeros((1, M)), np.zeros((1, 1)), "adam")
