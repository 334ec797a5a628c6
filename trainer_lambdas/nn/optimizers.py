"""L2 regularisation and the update rules (gd, momentum, adam). Pure numpy.

Notation: m is the number of examples in the step's batch (all of them for a full batch, the
batch's size for a mini-batch, the last one of an epoch possibly smaller); t is the number
of updates so far, counting this one: it starts at 1 and runs on across epochs,
t = epoch * batches_per_epoch + batch + 1 (`step_number`). lr is `learning_rate`.

L2 ("lambda" in parameters.json, λ >= 0, default 0):
    cost   J = cross-entropy + (λ / 2m) Σ_l ||W_l||²_F             (`l2_cost`)
    dW_l  += (λ / m) W_l, with W_l before the update               (`regularised`)
Biases are not regularised. A batch's cost includes the term with the weights before that
batch's update; an epoch's cost is still the example-weighted mean of its batches' costs
(`schedule.epoch_cost`).

The update of a parameter p (each W and each b, with its own state, zeros at the start),
given its gradient g (for W: already regularised):
    "gd"        p <- p - lr g
    "momentum"  v <- β1 v + (1 - β1) g;                  p <- p - lr v
    "adam"      v <- β1 v + (1 - β1) g;  s <- β2 s + (1 - β2) g²
                p <- p - lr (v / (1 - β1^t)) / (sqrt(s / (1 - β2^t)) + ε)
with β1 = 0.9, β2 = 0.999, ε = 1e-8 unless parameters.json says otherwise.

Every operation is elementwise, so a block of a layer's rows updates exactly as those rows
of the whole layer do: the distributed trainer applies `apply` to each neuron block, with
that block's rows of the state (`Slots.rows`), and gets the reference's numbers bit for bit.
With λ = 0 and "gd" the numbers are those of plain gradient descent bit for bit:
`regularised` returns dW itself and gd's update is exactly `w - lr * dw`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import schedule
from trainer_lambdas.nn.params import Parameters

if TYPE_CHECKING:
    from trainer_lambdas.nn.network import Weights

OPTIMIZERS = params_mod.OPTIMIZERS  # ("gd", "momentum", "adam")

# The state each optimiser keeps per layer: v (first moment) for momentum and adam, s
# (second moment) for adam, each for W and for b.
_SLOT_NAMES: dict[str, tuple[str, ...]] = {
    "gd": (),
    "momentum": ("vw", "vb"),
    "adam": ("vw", "vb", "sw", "sb"),
}


@dataclass(frozen=True)
class Slots:
    """One layer's (or one block of rows') optimiser state; None where the optimiser keeps
    none. vw/sw have W's shape (k, n_prev), vb/sb b's (k, 1). Equality is bitwise."""

    vw: np.ndarray | None = None
    vb: np.ndarray | None = None
    sw: np.ndarray | None = None
    sb: np.ndarray | None = None

    def rows(self, lo: int, hi: int) -> "Slots":
        """The state of rows lo:hi (views, like `w[lo:hi]`)."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[lo:hi]

        return Slots(vw=cut(self.vw), vb=cut(self.vb), sw=cut(self.sw), sb=cut(self.sb))

    @staticmethod
    def stack(parts: Sequence["Slots"]) -> "Slots":
        """The layer's state from its blocks' states, rows in the order given."""
        if not parts:
            raise ValueError("Slots.stack needs at least one block")
        out = {}
        for f in fields(Slots):
            arrays = [getattr(p, f.name) for p in parts]
            present = [a is not None for a in arrays]
            if any(present) and not all(present):
                raise ValueError(f"Slots.stack: '{f.name}' is missing in some blocks")
            out[f.name] = np.vstack(arrays) if all(present) else None
        return Slots(**out)

    def names(self) -> tuple[str, ...]:
        """The fields that hold state, in order."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Slots):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                return False
            if a is not None and not (a.shape == b.shape and np.array_equal(a, b)):
                return False
        return True


def slot_names(optimizer: str) -> tuple[str, ...]:
    """The state `optimizer` keeps per layer: () for gd, ("vw", "vb") for momentum,
    ("vw", "vb", "sw", "sb") for adam."""
    try:
        return _SLOT_NAMES[optimizer]
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}") from None


def initial_slots(optimizer: str, w: np.ndarray, b: np.ndarray) -> Slots:
    """The state before the first update: zeros of W's and b's shapes where kept."""
    return Slots(
        **{name: np.zeros_like(w if name.endswith("w") else b) for name in slot_names(optimizer)}
    )


def initial_state(params: Parameters, weights: "Weights") -> list[Slots]:
    """Every layer's `initial_slots`, first layer first."""
    return [initial_slots(params.optimizer, w, b) for w, b in weights]


def regularised(dw: np.ndarray, w: np.ndarray, l2: float, m: int) -> np.ndarray:
    """dW of the regularised cost: dw + (l2 / m) w, with w before the update; `dw` itself
    (the same object) when l2 == 0. Elementwise: any block of rows on its own."""
    if l2 == 0:
        return dw
    return dw + (l2 / m) * w


def squared_norm(w: np.ndarray) -> float:
    """||W||²_F; a layer's is the sum of its row blocks'."""
    return float(np.sum(w * w))


def l2_penalty(squared_norms: float, l2: float, m: int) -> float:
    """(l2 / 2m) times the sum of the layers' ||W||²_F; 0.0 when l2 == 0."""
    if l2 == 0:
        return 0.0
    return (l2 / (2 * m)) * squared_norms


def l2_cost(weights: "Weights", l2: float, m: int) -> float:
    """The L2 term of the cost, (l2 / 2m) Σ_l ||W_l||²_F (biases excluded); 0.0 when
    l2 == 0. Layers are summed first layer first."""
    if l2 == 0:
        return 0.0
    return l2_penalty(sum(squared_norm(w) for w, _ in weights), l2, m)


def update(
    p: np.ndarray,
    g: np.ndarray,
    v: np.ndarray | None,
    s: np.ndarray | None,
    t: int,
    params: Parameters,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One update of one parameter array `p` with gradient `g` and its state (v, s): the
    new (p, v, s). The rule of `params.optimizer`, elementwise (see the module docstring),
    so `p` may be any array (a 0-d one too: the dual form's scale)."""
    lr = params.learning_rate
    if params.optimizer == "gd":
        return p - lr * g, v, s
    if v is None:
        raise ValueError(f"the {params.optimizer} optimizer needs its first-moment state")
    b1 = params.beta1
    v = b1 * v + (1.0 - b1) * g
    if params.optimizer == "momentum":
        return p - lr * v, v, s
    if params.optimizer != "adam":
        raise ValueError(f"unknown optimizer {params.optimizer!r}; expected one of {OPTIMIZERS}")
    if s is None:
        raise ValueError("the adam optimizer needs its second-moment state")
    if t < 1:
        raise ValueError(f"the step number t counts from 1, got {t}")
    b2 = params.beta2
    s = b2 * s + (1.0 - b2) * (g * g)
    v_hat = v / (1.0 - b1**t)
    s_hat = s / (1.0 - b2**t)
    return p - lr * (v_hat / (np.sqrt(s_hat) + params.epsilon)), v, s


def apply(
    w: np.ndarray,
    b: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
    slots: Slots,
    t: int,
    params: Parameters,
) -> tuple[np.ndarray, np.ndarray, Slots]:
    """One update of a layer's (or a block of rows') (w, b) with gradients (dw, db) — dw
    already `regularised` — and the state `slots` of the same rows, at step t (from 1), with
    learning rate `params.learning_rate`: the new (w, b, slots). For gd this is exactly
    (w - lr * dw, b - lr * db) and `slots` unchanged."""
    w, vw, sw = update(w, dw, slots.vw, slots.sw, t, params)
    b, vb, sb = update(b, db, slots.vb, slots.sb, t, params)
    if params.optimizer == "gd":
        return w, b, slots
    return w, b, Slots(vw=vw, vb=vb, sw=sw, sb=sb)


def step_number(params: Parameters, m: int, epoch: int, batch: int) -> int:
    """t of the update at step (epoch, batch) (both from 0) over `m` training examples:
    epoch * batches_per_epoch + batch + 1."""
    return epoch * schedule.batches_per_epoch(params, m) + batch + 1
