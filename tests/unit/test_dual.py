"""The dual form of the first layer: the same training as the primal form, cheaper."""

import numpy as np
import pytest

from trainer_lambdas.nn import dual, network, neurons
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
