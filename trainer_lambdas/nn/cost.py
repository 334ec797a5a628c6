"""Binary cross-entropy, the mean over examples, safe at outputs of exactly 0 and 1."""

import numpy as np

# Outputs are clipped to [EPS, 1 - EPS] so that log() and the division stay finite.
EPS = 1e-12


def cross_entropy(a: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of outputs `a` (1, m) against labels `y` (1, m)."""
    a = np.clip(a, EPS, 1.0 - EPS)
    m = y.shape[-1]
    return float(-(y * np.log(a) + (1.0 - y) * np.log(1.0 - a)).sum() / m)


def cross_entropy_grad(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(sum of per-example losses)/da; the 1/m of the mean is applied in the backward step."""
    a = np.clip(a, EPS, 1.0 - EPS)
    return -(y / a - (1.0 - y) / (1.0 - a))
