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


def _sigmoid_grad(a: Array) -> Array:
    return a * (1.0 - a)


def _relu(z: Array) -> Array:
    return np.maximum(z, 0.0)


def _relu_grad(a: Array) -> Array:
    return (a > 0).astype(a.dtype)  # a = max(z, 0) > 0 exactly where z > 0


def _tanh(z: Array) -> Array:
    return np.tanh(z)


def _tanh_grad(a: Array) -> Array:
    return 1.0 - a * a


# name -> (g(z), g'(z) given a = g(z))
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "relu": (_relu, _relu_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "tanh": (_tanh, _tanh_grad),
}


def activate(name: str, z: Array) -> Array:
    """g(z) for the activation called `name`."""
    return ACTIVATIONS[name][0](z)


def derivative(name: str, a: Array) -> Array:
    """g'(z), given a = g(z): every activation here has its derivative in terms of its
    output, so a backward pass needs only the activations (no Z travels back)."""
    return ACTIVATIONS[name][1](a)
