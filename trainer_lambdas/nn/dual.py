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
rounding (tested against the reference on every plan); W1 itself is rebuilt at the end.

The dual form pays when there are fewer examples than inputs and G is cheap enough to hold
and to compute: `use_dual`. The launcher decides once per run and records it in the run
record (`first_layer`), so that a run's stored state keeps one layout whatever the rule
becomes.
"""

from dataclasses import dataclass

import numpy as np

from trainer_lambdas.nn.activations import activate, derivative
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.neurons import Backward, Forward
from trainer_lambdas.nn.params import ParameterError

# The Gram matrix is m x m float64: 256 MB at m = 5,792.
MAX_GRAM_BYTES = 256 * 1024 * 1024
# Computing it takes n_x * m^2 multiply-adds in every cold neuron worker (one vCPU): "auto"
# stays under about 6e10 (12,288 inputs x 2,090 examples), a few seconds.
MAX_AUTO_GRAM_FLOPS = 6e10


def use_dual(form: str, n_x: int, m: int) -> bool:
    """Whether the first layer trains in the dual form (`form`: auto, dual or primal)."""
    if form == "primal":
        return False
    fits = 8 * m * m <= MAX_GRAM_BYTES
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


def primal(state: Weights, basis: "Basis", x: np.ndarray) -> Weights:
    """The ordinary weights of a dual state (layer 1 rebuilt, the others as they are)."""
    (c, b), *rest = state
    return [(materialize(basis.w0, c, x), b), *rest]


def forward(
    c: np.ndarray,
    b: np.ndarray,
    p0: np.ndarray,
    gram_cols: np.ndarray,
    activation: str,
) -> Forward:
    """Z = P0[:, idx] + C G[:, idx] + b for a block's rows; `p0` and `gram_cols` are already
    restricted to the batch's columns (all of them for a full batch)."""
    z = p0 + c @ gram_cols + b
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


def materialize(w0: np.ndarray, c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W1 = W1(0) + C X^T: the primal weights of the dual state."""
    return w0 + c @ x.T


@dataclass(frozen=True)
class Basis:
    """What turns the dual state into the layer's outputs: W1(0) and P0 = W1(0) X."""

    w0: np.ndarray  # (n1, n_x)
    p0: np.ndarray  # (n1, m)

    @classmethod
    def of(cls, w0: np.ndarray, x: np.ndarray) -> "Basis":
        return cls(w0=w0, p0=w0 @ x)
