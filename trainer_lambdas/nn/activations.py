"""Activation functions, each forward beside its derivative."""

from collections.abc import Callable

import numpy as np

Array = np.ndarray


def _sigmoid(z: Array) -> Array:
    # Split by sign so that exp never overflows.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _sigmoid_grad(z: Array, a: Array) -> Array:
    return a * (1.0 - a)


def _relu(z: Array) -> Array:
    return np.maximum(z, 0.0)


def _relu_grad(z: Array, a: Array) -> Array:
    return (z > 0).astype(z.dtype)


def _tanh(z: Array) -> Array:
    return np.tanh(z)


def _tanh_grad(z: Array, a: Array) -> Array:
    return 1.0 - a * a


# name -> (g(z), g'(z) given z and a = g(z))
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array, Array], Array]]] = {
    "relu": (_relu, _relu_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "tanh": (_tanh, _tanh_grad),
}


def activate(name: str, z: Array) -> Array:
    """g(z) for the activation called `name`."""
    return ACTIVATIONS[name][0](z)


def derivative(name: str, z: Array, a: Array) -> Array:
    """g'(z), given z and a = g(z) (whichever is cheaper to use)."""
    return ACTIVATIONS[name][1](z, a)
