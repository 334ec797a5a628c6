"""The first layer in its dual form: W1 = W1(0) + C X^T, trained through C. Pure numpy.

Plain gradient descent only ever adds to W1 multiples of the training inputs' transposes:
a step on the batch `idx` adds -lr dZ1 X[:, idx]^T / m_b. So W1 at any step is its initial
value plus C X^T, where C (n1 x m) holds one coefficient per neuron and training example,
and a step on `idx` changes only the columns `idx` of C:

    C[:, idx] -= lr * dZ1 / m_b                       (the update)
    Z1 = W1 X[:, idx] + b1
       = P0[:, idx] + C G[:, idx] + b1                (the forward pass)

with P0 = W1(0) X (n1 x m) and the Gram matrix G = X^T X (m x m) computed once. A neuron's
forward pass then costs m * m_b multiply-adds instead of n_x * m_b, and its backward pass
(dW1 = dZ1 X^T / m_b, another n_x * m_b) needs no product at all: the layer's state is n1 x m
numbers instead of n1 x n_x. For this network (n_x = 12,288 inputs, m = 209 examples) that is
59 times fewer operations and bytes. The numbers are those of the primal trainer up to
rounding (tested against the reference with both distributions); W1 itself is rebuilt at the end.

The dual form pays when there are fewer examples than inputs and G is cheap enough to hold
and to compute: `use_dual`. The launcher decides once per run and records it in the run
record (`first_layer`), so that a run's stored state keeps one layout whatever the rule
becomes.

L2 and momentum (`nn.optimizers`) keep the form, with one scalar more. L2 adds (λ/m_b) W1
to dW1, and W1 holds a multiple of W1(0), so in general

    W1 = scale W1(0) + C X^T                 (scale = 1 at the start, and always without L2)
    v1 = v_scale W1(0) + V X^T               (momentum's state; v_scale = 0, V = 0 at start)

A step's gradient is then dW1 = d_scale W1(0) + dC_reg X^T with d_scale = (λ/m_b) scale and
dC_reg = dC + (λ/m_b) C (dC: `backward`'s dZ1 / m_b in the batch's columns), and gd and
momentum are linear in the gradient: the same rule applied to (scale, C) and (v_scale, V)
gives the primal W1 and v1 up to rounding (`update_coefficients`, which calls
`optimizers.apply`; tested against the primal trainer to 1e-12).
The forward pass becomes Z1 = scale P0[:, idx] + C G[:, idx] + b1 (`forward(..., scale)`),
and the L2 term needs ||W1||² = scale² ||W1(0)||² + 2 scale Σ(P0 ⊙ C) + Σ((C G) ⊙ C)
(`squared_norm`), with no n_x-sized product. Under L2 all of C's columns change at every
step (they shrink), not only the batch's.

Adam does not keep the form: its step divides each of W1's n1 x n_x entries by its own
sqrt(s), which takes W1 out of W1(0)'s multiples plus the span of the inputs. `use_dual`
keeps adam in the primal form ("auto") or refuses it ("dual").
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from trainer_lambdas.nn import optimizers
from trainer_lambdas.nn.activations import activate, derivative
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.neurons import Backward, Forward
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.params import ParameterError, Parameters

# The Gram matrix is m x m float64: 256 MB at m = 5,792.
MAX_GRAM_BYTES = 256 * 1024 * 1024
# Computing it takes n_x * m^2 multiply-adds in every cold neuron worker (one vCPU): "auto"
# stays under about 6e10 (12,288 inputs x 2,090 examples), a few seconds.
MAX_AUTO_GRAM_FLOPS = 6e10


# The optimisers whose update keeps W1 = scale W1(0) + C X^T (linear in the gradient).
DUAL_OPTIMIZERS = ("gd", "momentum")


def use_dual(form: str, n_x: int, m: int, optimizer: str = "gd") -> bool:
    """Whether the first layer trains in the dual form (`form`: auto, dual or primal) with
    `optimizer`: never for adam ("auto" picks primal, "dual" is a `ParameterError`)."""
    if form == "primal":
        return False
    fits = 8 * m * m <= MAX_GRAM_BYTES
    if optimizer not in DUAL_OPTIMIZERS:
        if form == "dual":
            raise ParameterError(
                f"first_layer 'dual' cannot train with the {optimizer} optimizer: its "
                f"elementwise step takes W1 out of the span of the inputs (W1(0) + C X^T); "
                f"use 'primal' or 'auto'"
            )
        return False
    if form == "dual":
        if not fits:
            raise ParameterError(
                f"first_layer 'dual' needs a {m} x {m} Gram matrix, over "
                f"{MAX_GRAM_BYTES // 2**20} MB: use 'primal' or 'auto'"
            )
        return True
    return fits and m <= n_x and n_x * m * m <= MAX_AUTO_GRAM_FLOPS


def gram(x: np.ndarray) -> np.ndarray:
    """G = X^T X for inputs x (n_x, m)."""
    return x.T @ x


def initial_state(weights: Weights, m: int) -> Weights:
    """The trained state at step 0 of initial `weights`: C = 0 (W1 is its initial value)."""
    (w0, b0), *rest = weights
    return [(np.zeros((w0.shape[0], m)), b0), *rest]


def primal(state: Weights, basis: "Basis", x: np.ndarray, scale: float = 1.0) -> Weights:
    """The ordinary weights of a dual state (layer 1 rebuilt, the others as they are)."""
    (c, b), *rest = state
    return [(materialize(basis.w0, c, x, scale), b), *rest]


def forward(
    c: np.ndarray,
    b: np.ndarray,
    p0: np.ndarray,
    gram_cols: np.ndarray,
    activation: str,
    scale: float = 1.0,
) -> Forward:
    """Z = scale P0[:, idx] + C G[:, idx] + b for a block's rows; `p0` and `gram_cols` are
    already restricted to the batch's columns (all of them for a full batch). (Passing
    `scale * p0` with scale 1 is the same: the neurons need not know about scale.)"""
    z = (p0 if scale == 1.0 else scale * p0) + c @ gram_cols + b
    return Forward(z=z, a=activate(activation, z))


def backward(
    a: np.ndarray,
    da: np.ndarray,
    activation: str,
    m: int,
    idx: list[int] | None,
) -> Backward:
    """The gradients of the mean loss over the batch, in the dual form: dL/dC is dZ1 / m_b
    in the batch's columns of C (m of them), 0 elsewhere; dL/db as in the primal form."""
    dz = da * derivative(activation, a)
    m_b = dz.shape[1]
    if idx is None:
        dc = dz / m_b
    else:
        dc = np.zeros((dz.shape[0], m))
        dc[:, idx] = dz / m_b
    db = dz.sum(axis=1, keepdims=True) / m_b
    return Backward(dw=dc, db=db, da_prev=np.zeros((0, m_b)), dz=dz)


def materialize(w0: np.ndarray, c: np.ndarray, x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """W1 = scale W1(0) + C X^T: the primal weights of the dual state (and, given
    (v_scale, V), momentum's v1 = v_scale W1(0) + V X^T)."""
    return (w0 if scale == 1.0 else scale * w0) + c @ x.T


class DualStep(NamedTuple):
    """Layer 1's trained state in the dual form after a step (see the module docstring):
    W1 = scale W1(0) + C X^T, v1 = v_scale W1(0) + V X^T (momentum), and the bias with its
    momentum v_b. `v_scale`, `vc` and `vb` stay 0.0, None, None for gd."""

    scale: float
    c: np.ndarray
    b: np.ndarray
    v_scale: float
    vc: np.ndarray | None
    vb: np.ndarray | None


def initial_step(c: np.ndarray, b: np.ndarray, optimizer: str) -> DualStep:
    """The state before the first step, given `initial_state`'s C (zeros) and b1(0):
    scale 1, and for momentum v_scale 0, V = 0, v_b = 0."""
    if optimizer not in DUAL_OPTIMIZERS:
        raise ParameterError(f"the dual form cannot train with the {optimizer} optimizer")
    slots = optimizers.initial_slots(optimizer, c, b)
    return DualStep(scale=1.0, c=c, b=b, v_scale=0.0, vc=slots.vw, vb=slots.vb)


def regularised_coefficients(
    scale: float, c: np.ndarray, dc: np.ndarray, l2: float, m: int
) -> tuple[float, np.ndarray]:
    """(d_scale, dC_reg) of the regularised cost, with dW1 = d_scale W1(0) + dC_reg X^T:
    ((l2 / m) scale, dC + (l2 / m) C) — `optimizers.regularised` in the dual coordinates;
    (0.0, `dc` itself) when l2 == 0. `m` is the batch's number of examples."""
    if l2 == 0:
        return 0.0, dc
    return (l2 / m) * scale, optimizers.regularised(dc, c, l2, m)


def update_coefficients(
    scale: float,
    c: np.ndarray,
    v_scale: float,
    vc: np.ndarray | None,
    b: np.ndarray,
    vb: np.ndarray | None,
    dc: np.ndarray,
    db: np.ndarray,
    m: int,
    t: int,
    params: Parameters,
) -> DualStep:
    """One step of layer 1 in the dual form: `dc`, `db` are `backward`'s (dZ1 / m_b in the
    batch's columns of C, and db1), `m` the batch's examples, t the update number (from 1).
    L2 and the update rule of `params` (gd or momentum) applied to the coefficients, so that
    materialize(W1(0), C', X, scale') is the primal update of W1 to rounding (and
    materialize(W1(0), V', X, v_scale') momentum's v1). Rows are independent, as in
    `optimizers.apply`: a block of rows of (c, vc, b, vb, dc, db) gives those rows (scale
    and v_scale are the layer's, the same for every block)."""
    if params.optimizer not in DUAL_OPTIMIZERS:
        raise ParameterError(f"the dual form cannot train with the {params.optimizer} optimizer")
    d_scale, dc_reg = regularised_coefficients(scale, c, dc, params.l2, m)
    c2, b2, slots = optimizers.apply(c, b, dc_reg, db, Slots(vw=vc, vb=vb), t, params)
    if d_scale == 0.0 and v_scale == 0.0:  # no L2: scale stays (1) and v_scale 0, exactly
        return DualStep(scale, c2, b2, v_scale, slots.vw, slots.vb)
    vs = None if params.optimizer == "gd" else np.asarray(v_scale)
    s2, vs2, _ = optimizers.update(np.asarray(scale), np.asarray(d_scale), vs, None, t, params)
    return DualStep(
        scale=float(s2),
        c=c2,
        b=b2,
        v_scale=v_scale if vs2 is None else float(vs2),
        vc=slots.vw,
        vb=slots.vb,
    )


def squared_norm(
    scale: float, c: np.ndarray, w0: np.ndarray, p0: np.ndarray, g: np.ndarray
) -> float:
    """||W1||²_F of W1 = scale W1(0) + C X^T without forming W1: scale² ||W1(0)||² +
    2 scale Σ(P0 ⊙ C) + Σ((C G) ⊙ C), with P0 = W1(0) X and G = X^T X (all their columns).
    A layer's is the sum of its row blocks' (rows of c, w0 and p0)."""
    w0_sq = float(np.sum(w0 * w0))
    return scale * scale * w0_sq + 2.0 * scale * float(np.sum(p0 * c)) + float(np.sum((c @ g) * c))


def l2_cost(
    scale: float,
    c: np.ndarray,
    basis: "Basis",
    g: np.ndarray,
    l2: float,
    m: int,
) -> float:
    """Layer 1's share of the L2 term, (l2 / 2m) ||W1||²_F (`optimizers.l2_penalty`); 0.0
    when l2 == 0. The step's whole term is `optimizers.l2_penalty` of the sum of this
    layer's `squared_norm` and the other layers' `optimizers.squared_norm`."""
    if l2 == 0:
        return 0.0
    return optimizers.l2_penalty(squared_norm(scale, c, basis.w0, basis.p0, g), l2, m)


@dataclass(frozen=True)
class Basis:
    """What turns the dual state into the layer's outputs: W1(0) and P0 = W1(0) X."""

    w0: np.ndarray  # (n1, n_x)
    p0: np.ndarray  # (n1, m)

    @classmethod
    def of(cls, w0: np.ndarray, x: np.ndarray) -> "Basis":
        return cls(w0=w0, p0=w0 @ x)
