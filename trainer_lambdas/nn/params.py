"""`parameters.json`: the original project's format, our optional extensions, and validation.

The original format (accepted unchanged):
    {"epochs": 2500, "layers": 4,
     "activations": {"layer1": "relu", ..., "layer4": "sigmoid"},
     "neurons": {"layer1": 20, ..., "layer4": 1},
     "learning_rate": 0.0075, "batch_size": null, "threshold": 0}
The original also carried "weight" and "bias" (its initialisation scale); they are accepted
and ignored with a warning, since `init` decides initialisation here.

Regularisation and the optimiser (see `nn.optimizers` for the update rules):
    "lambda"     L2 strength λ >= 0 (default 0: none); the cost gains (λ / 2m) Σ_l ||W_l||²
                 and each dW_l gains (λ / m) W_l, m the batch's examples (biases: never)
    "optimizer"  "gd" (default), "momentum" or "adam"
    "beta1"      in [0, 1), default 0.9: momentum and adam only
    "beta2"      in [0, 1), default 0.999: adam only
    "epsilon"    > 0, default 1e-8: adam only
A beta or epsilon key with an optimizer that does not use it is an error, not a silent
no-op; `to_json` writes them only for the optimizers that use them.

How a step is spread over Lambda invocations (see `trainer_lambdas.invocation_plan`); the
keys keep their names, the fields say what they are:
    "fanout"     neurons per neuron invocation, 1 to 4096 (default 1):
                 `Parameters.neurons_per_invocation`
    "plan"       "fanout" (default): every layer computed by neuron invocations; "hybrid":
                 only layer 1, the trainer computes the others: `Parameters.distribution`
"""

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer_lambdas.nn.activations import ACTIVATIONS

MAX_EPOCHS = 1_000_000
MAX_LAYERS = 32
MAX_NEURONS = 4096
INITS = ("scaled", "he")
# How a step's layers are distributed over invocations (`Parameters.distribution`, the
# values of the key "plan"): every layer computed by neuron invocations, or only the first,
# the one that touches the 12,288 inputs, the trainer computing the small layers itself with
# the same core functions.
EVERY_LAYER_REMOTE = "fanout"
FIRST_LAYER_REMOTE = "hybrid"
DISTRIBUTIONS = (EVERY_LAYER_REMOTE, FIRST_LAYER_REMOTE)
# How the first layer's weights are held while training (see `nn.dual`): "dual" as
# W0 + C X^T with C one coefficient per neuron and example, "primal" as W itself, "auto"
# dual when that is cheaper (fewer examples than inputs, and a Gram matrix that fits).
FIRST_LAYER_FORMS = ("auto", "primal", "dual")
# The update rules (`nn.optimizers`), and which of them reads which hyperparameter.
OPTIMIZERS = ("gd", "momentum", "adam")
OPTIMIZER_KEYS = {"beta1": ("momentum", "adam"), "beta2": ("adam",), "epsilon": ("adam",)}
LEGACY_KEYS = ("weight", "bias")
KNOWN_KEYS = (
    "epochs",
    "layers",
    "activations",
    "neurons",
    "learning_rate",
    "batch_size",
    "threshold",
    "seed",
    "init",
    "fanout",  # Parameters.neurons_per_invocation
    "commit_every",
    "plan",  # Parameters.distribution
    "first_layer",
    "lambda",
    "optimizer",
    "beta1",
    "beta2",
    "epsilon",
    *LEGACY_KEYS,
)


# The fields of `Parameters` whose key in parameters.json is another name.
JSON_KEYS = {"neurons_per_invocation": "fanout", "distribution": "plan", "l2": "lambda"}


class ParameterError(ValueError):
    """A parameters file that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class Parameters:
    epochs: int
    activations: tuple[str, ...]
    neurons: tuple[int, ...]
    learning_rate: float
    batch_size: int | None = None
    threshold: float = 0.0
    seed: int = 1
    init: str = "scaled"
    neurons_per_invocation: int = 1  # JSON key "fanout"
    commit_every: int = 50
    distribution: str = EVERY_LAYER_REMOTE  # JSON key "plan"
    first_layer: str = "auto"
    l2: float = 0.0  # JSON key "lambda"
    optimizer: str = "gd"
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def layers(self) -> int:
        return len(self.neurons)

    def to_json(self) -> dict[str, Any]:
        """The original format plus our keys, under their names in parameters.json
        (`JSON_KEYS`): `parse(p.to_json()) == p`. beta1, beta2 and epsilon are written only
        for the optimizers that use them."""
        d: dict[str, Any] = {"epochs": self.epochs, "layers": self.layers}  # its order
        d.update((JSON_KEYS.get(k, k), v) for k, v in asdict(self).items() if k != "warnings")
        d["activations"] = {f"layer{i + 1}": g for i, g in enumerate(self.activations)}
        d["neurons"] = {f"layer{i + 1}": n for i, n in enumerate(self.neurons)}
        for key, users in OPTIMIZER_KEYS.items():
            value = d.pop(key)
            if self.optimizer in users:
                d[key] = value
        return d

    def full_batch(self, m: int) -> bool:
        return self.batch_size is None or self.batch_size == 0 or self.batch_size >= m


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool) and math.isfinite(v)


def _unit_interval(d: dict, key: str, default: float) -> float:
    """An optional number in [0, 1) (a beta: the share of the running average kept)."""
    v = d.get(key, default)
    if not _is_number(v) or not 0 <= v < 1:
        raise ParameterError(f"parameters: '{key}' must be a number from 0 to below 1, got {v!r}")
    return float(v)


def _choice(d: dict, key: str, choices: tuple[str, ...]) -> str:
    """An optional name out of `choices`; the first is the default."""
    v = d.get(key, choices[0])
    if v not in choices:
        raise ParameterError(f"parameters: '{key}' must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _int(d: dict, key: str, default: int | None, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if v is None:
        raise ParameterError(f"parameters: '{key}' is required (an integer from {lo} to {hi})")
    if not _is_int(v):
        raise ParameterError(f"parameters: '{key}' must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ParameterError(f"parameters: '{key}' must be from {lo} to {hi}, got {v}")
    return int(v)


def _per_layer(d: dict, key: str, layers: int) -> list:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ParameterError(
            f"parameters: '{key}' must be an object like {{\"layer1\": ...}}, got {v!r}"
        )
    expected = {f"layer{i + 1}" for i in range(layers)}
    if set(v) != expected:
        missing = sorted(expected - set(v))
        extra = sorted(set(v) - expected)
        raise ParameterError(
            f"parameters: '{key}' must have exactly layer1..layer{layers} for {layers} layers"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    return [v[f"layer{i + 1}"] for i in range(layers)]


def parse(d: Any) -> Parameters:
    """Validate a decoded `parameters.json`; raise `ParameterError` naming the problem."""
    if not isinstance(d, dict):
        raise ParameterError(f"parameters: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(KNOWN_KEYS))
    if unknown:
        raise ParameterError(
            f"parameters: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are {', '.join(KNOWN_KEYS)}"
        )
    warnings = tuple(
        f"parameters: '{k}' (the original project's initial scale) is ignored; see 'init'"
        for k in LEGACY_KEYS
        if k in d
    )
    epochs = _int(d, "epochs", None, 1, MAX_EPOCHS)
    layers = _int(d, "layers", None, 1, MAX_LAYERS)
    acts = _per_layer(d, "activations", layers)
    for i, g in enumerate(acts):
        if g not in ACTIVATIONS:
            raise ParameterError(
                f"parameters: activations.layer{i + 1} is {g!r}; "
                f"expected one of {', '.join(sorted(ACTIVATIONS))}"
            )
    sizes = _per_layer(d, "neurons", layers)
    for i, n in enumerate(sizes):
        if not _is_int(n) or not 1 <= n <= MAX_NEURONS:
            raise ParameterError(
                f"parameters: neurons.layer{i + 1} must be an integer from 1 to {MAX_NEURONS}, "
                f"got {n!r}"
            )
    if sizes[-1] != 1:
        raise ParameterError(
            f"parameters: the output layer (layer{layers}) must have 1 neuron for a binary "
            f"classifier, got {sizes[-1]}"
        )
    if acts[-1] != "sigmoid":
        raise ParameterError(
            f"parameters: the output layer (layer{layers}) must use 'sigmoid' (its output is "
            f"the probability of class 1), got {acts[-1]!r}"
        )
    lr = d.get("learning_rate")
    if not isinstance(lr, int | float) or not _is_number(lr) or lr <= 0:
        raise ParameterError(f"parameters: 'learning_rate' must be a positive number, got {lr!r}")
    batch = d.get("batch_size")
    if batch is not None and (not _is_int(batch) or batch < 0):
        raise ParameterError(
            f"parameters: 'batch_size' must be null, 0 (full batch) or a positive integer, "
            f"got {batch!r}"
        )
    threshold = d.get("threshold", 0)
    if threshold is None:
        threshold = 0
    if not _is_number(threshold) or threshold < 0:
        raise ParameterError(
            f"parameters: 'threshold' must be a number >= 0 (0: never stop early), "
            f"got {threshold!r}"
        )
    seed = _int(d, "seed", 1, 0, 2**32 - 1)
    init = _choice(d, "init", INITS)
    neurons_per_invocation = _int(d, "fanout", 1, 1, MAX_NEURONS)
    commit_every = _int(d, "commit_every", 50, 1, MAX_EPOCHS)
    distribution = _choice(d, "plan", DISTRIBUTIONS)
    first_layer = _choice(d, "first_layer", FIRST_LAYER_FORMS)
    l2 = d.get("lambda", 0)
    if not _is_number(l2) or l2 < 0:
        raise ParameterError(
            f"parameters: 'lambda' (L2 regularisation) must be a number >= 0 (0: none), got {l2!r}"
        )
    optimizer = _choice(d, "optimizer", OPTIMIZERS)
    beta1 = _unit_interval(d, "beta1", 0.9)
    beta2 = _unit_interval(d, "beta2", 0.999)
    epsilon = d.get("epsilon", 1e-8)
    if not _is_number(epsilon) or epsilon <= 0:
        raise ParameterError(f"parameters: 'epsilon' must be a positive number, got {epsilon!r}")
    for key, users in OPTIMIZER_KEYS.items():
        if key in d and optimizer not in users:
            raise ParameterError(
                f"parameters: '{key}' is used only by the {' and '.join(users)} "
                f"optimizer{'s' if len(users) > 1 else ''}, not by {optimizer!r}: "
                f"set 'optimizer' or remove '{key}'"
            )
    return Parameters(
        epochs=epochs,
        activations=tuple(acts),
        neurons=tuple(sizes),
        learning_rate=float(lr),
        batch_size=batch or None,
        threshold=float(threshold),
        seed=seed,
        init=init,
        neurons_per_invocation=neurons_per_invocation,
        commit_every=commit_every,
        distribution=distribution,
        first_layer=first_layer,
        l2=float(l2),
        optimizer=optimizer,
        beta1=beta1,
        beta2=beta2,
        epsilon=float(epsilon),
        warnings=warnings,
    )


def with_overrides(p: Parameters, **overrides: Any) -> Parameters:
    """`p` with some of its keys replaced, named as in parameters.json (`epochs=`,
    `fanout=`, `plan=`, `commit_every=`; "lambda" as `**{"lambda": x}`), and validated as a
    parameters file is, so a bad value or an unknown key raises the same `ParameterError`.
    None values are ignored (an option not given). An optimiser's beta or epsilon that a
    new `optimizer` does not use is dropped unless it is given too."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return p
    d = p.to_json()
    if "optimizer" in given:
        for key, users in OPTIMIZER_KEYS.items():
            if given["optimizer"] not in users:
                d.pop(key, None)
    d.update(given)
    changed = parse(d)
    return replace(changed, warnings=p.warnings + changed.warnings)


def loads(text: str | bytes) -> Parameters:
    """Parse the text of a `parameters.json`."""
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParameterError(f"parameters: not valid JSON: {e}") from e
    return parse(d)


DEFAULT_PATH = Path(__file__).with_name("default_parameters.json")


def default() -> Parameters:
    """The shipped defaults (12288-20-7-5-1, relu/sigmoid, 2500 epochs, full batch)."""
    return loads(DEFAULT_PATH.read_text())
