"""Forward and backward for a block of neurons of one layer (one neuron is a block of one).

A block owns rows `lo:hi` of the layer's weight matrix. Everything a block computes depends
only on its own rows and on the previous layer's activations, so blocks can run anywhere, in
any order, any number of times. The vectorised layer is the same call with the whole matrix.
"""

from dataclasses import dataclass

import numpy as np

from trainer_lambdas.nn.activations import activate, derivative


@dataclass(frozen=True)
class Forward:
    z: np.ndarray  # (k, m) pre-activations
    a: np.ndarray  # (k, m) activations


@dataclass(frozen=True)
class Backward:
    dw: np.ndarray  # (k, n_prev) weight gradient
    db: np.ndarray  # (k, 1) bias gradient
    da_prev: np.ndarray  # (n_prev, m) this block's share of dL/dA_prev (shares add up)
    dz: np.ndarray  # (k, m) dL_sum/dZ of the block's rows: dA_prev = W^T dZ over all rows


def forward(w: np.ndarray, b: np.ndarray, a_prev: np.ndarray, activation: str) -> Forward:
    """Z = W A_prev + b, A = g(Z) for the rows of W this block owns."""
    z = w @ a_prev + b
    return Forward(z=z, a=activate(activation, z))


def backward(
    w: np.ndarray,
    a: np.ndarray,
    a_prev: np.ndarray,
    da: np.ndarray,
    activation: str,
    m: int,
    need_da_prev: bool = True,
) -> Backward:
    """Gradients of the mean loss over `m` examples, given dL_sum/dA for this block's rows.

    The first layer's share of dL/dA_prev is never used: `need_da_prev=False` skips it.
    """
    dz = dz_of(da, a, activation)
    g = weight_gradients(dz, a_prev, m)
    if need_da_prev:
        return Backward(dw=g.dw, db=g.db, da_prev=w.T @ dz, dz=dz)
    return g


def dz_of(da: np.ndarray, a: np.ndarray, activation: str) -> np.ndarray:
    """dL_sum/dZ of a block's rows from dL_sum/dA and the rows' activations: elementwise."""
    return da * derivative(activation, a)


def weight_gradients(dz: np.ndarray, a_prev: np.ndarray, m: int) -> Backward:
    """The weight and bias gradients of the mean loss over `m` examples, given the block's
    rows of dL_sum/dZ and the layer's input (no dL/dA_prev: `da_prev` is empty)."""
    return Backward(
        dw=(dz @ a_prev.T) / m,
        db=dz.sum(axis=1, keepdims=True) / m,
        da_prev=np.zeros((0, a_prev.shape[1])),
        dz=dz,
    )


def update(w: np.ndarray, b: np.ndarray, grads: Backward, learning_rate: float) -> tuple:
    """One plain gradient-descent step on a block's rows."""
    return w - learning_rate * grads.dw, b - learning_rate * grads.db
