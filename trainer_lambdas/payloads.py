"""One typed payload per event kind, with validation that raises `PayloadError`.

Arrays travel as {"shape": [...], "f8": hex of their little-endian float64 bytes}: exact
and no pickle. Hex rather than base64: a third larger, but it encodes and decodes about three
times faster in CPython, and decoding the layer inputs of each request was the largest cost
of a neuron invocation. A neuron request's arrays (a first-layer block's weights are 2 MB
in the primal form) are spliced into the JSON as bytes: hex needs no escaping, and
`json.dumps` of a large string costs more than encoding it.
"""

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import numpy as np

from trainer_lambdas.nn import optimizers

# forward (applying first, if the request carries one, the block's update deferred from the
# previous step); backward: the weight gradients of given dZ rows; output: forward, loss
# gradient and backward of an output-layer block
PHASES = ("forward", "backward", "output")


class PayloadError(ValueError):
    """An event that does not have the expected shape."""


def pack(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"shape": list(a.shape), "f8": a.tobytes().hex()}


def unpack(d: Any, what: str) -> np.ndarray:
    try:
        shape = tuple(int(n) for n in d["shape"])
        a = np.frombuffer(bytes.fromhex(d["f8"]), dtype="<f8").reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"'{what}' is not a packed array: {e}") from e
    return a.astype(np.float64)  # a writable native copy


def _optional_array(d: dict, key: str) -> np.ndarray | None:
    return None if d.get(key) is None else unpack(d[key], key)


def _opt_float(d: dict, key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise PayloadError(f"'{key}' must be a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class NeuronRequest:
    """Work for one block of neurons (rows lo:hi of one layer) in one phase of one step.

    `a_prev` None means "the training inputs": the neuron reads them from `data_key` (once
    per warm worker) and takes the columns in `indices` (None: all, in order).

    `dz` is the block's rows of dL_sum/dZ: in a backward request, of this step (with the
    layer's input `a_prev`); in a forward request, of the previous step, whose update the
    block applies before its forward pass (with that step's input `grad_input` and the
    `learning_rate`): a hidden layer's backward invocation rides on its next forward one.
    With L2 or an optimiser other than gd, that update also needs the `rule` (the
    optimiser's hyperparameters: "optimizer", "lambda", "beta1", "beta2", "epsilon"), the
    update's number `t` and the block's rows of the optimiser's state (`vw`, `vb`, `sw`,
    `sb`: `nn.optimizers.Slots`).
    """

    run_id: str
    data_key: str
    phase: str  # one of PHASES
    layer: int
    lo: int
    hi: int
    activation: str
    w: np.ndarray
    b: np.ndarray
    a_prev: np.ndarray | None = None
    indices: list[int] | None = None
    dz: np.ndarray | None = None  # backward; forward: the previous step's, deferred
    grad_input: np.ndarray | None = None  # forward with dz: the input of the step of dz
    learning_rate: float | None = None  # forward with dz
    p0: np.ndarray | None = None  # first layer, dual form: the block's rows of W1(0) X
    rule: dict[str, Any] | None = None  # forward with dz: the update rule, if not plain gd
    t: int | None = None  # forward with dz and a rule: the update's number, from 1
    vw: np.ndarray | None = None  # forward with dz and a rule: the block's optimiser state
    vb: np.ndarray | None = None
    sw: np.ndarray | None = None
    sb: np.ndarray | None = None

    def to_parts(self, memo: dict[tuple[int, int], bytes] | None = None) -> tuple[bytes, bytes]:
        """The request as JSON bytes in two parts: the arrays that all of a layer's requests
        share (its input, and the input of the update it carries), then the rest. `memo`
        (ids of the shared arrays -> their part) lets a layer's requests encode the shared
        part once; the caller keeps the requests, hence the arrays and their ids, alive
        while it is in use. The Invoke client hashes a shared part once too."""
        key = (id(self.a_prev), id(self.grad_input))
        shared = None if memo is None else memo.get(key)
        if shared is None:
            shared = b"{" + b"".join(_field(k, getattr(self, k)) + b", " for k in _SHARED)
            if memo is not None:
                memo[key] = shared
        d: dict[str, Any] = {
            "kind": "neuron",
            "run_id": self.run_id,
            "data_key": self.data_key,
            "phase": self.phase,
            "layer": self.layer,
            "lo": self.lo,
            "hi": self.hi,
            "activation": self.activation,
            "indices": self.indices,
            "learning_rate": self.learning_rate,
            "rule": self.rule,
            "t": self.t,
        }
        own = [json.dumps(d).encode()[1:-1]]  # without the braces
        own += [b", " + _field(k, getattr(self, k)) for k in ("w", "b", "dz", "p0", *SLOTS)]
        own.append(b"}")
        return shared, b"".join(own)

    def to_json(self, memo: dict[tuple[int, int], bytes] | None = None) -> bytes:
        """The request as JSON bytes (`to_parts`, joined)."""
        return b"".join(self.to_parts(memo))

    @classmethod
    def from_event(cls, event: Any) -> "NeuronRequest":
        if not isinstance(event, dict) or event.get("kind") != "neuron":
            raise PayloadError("not a neuron request")
        phase = event.get("phase")
        if phase not in PHASES:
            raise PayloadError(f"phase must be forward, backward or output, got {phase!r}")
        try:
            req = cls(
                run_id=str(event["run_id"]),
                data_key=str(event["data_key"]),
                phase=phase,
                layer=int(event["layer"]),
                lo=int(event["lo"]),
                hi=int(event["hi"]),
                activation=str(event["activation"]),
                w=unpack(event["w"], "w"),
                b=unpack(event["b"], "b"),
                a_prev=_optional_array(event, "a_prev"),
                indices=None if event.get("indices") is None else list(event["indices"]),
                dz=_optional_array(event, "dz"),
                grad_input=_optional_array(event, "grad_input"),
                learning_rate=_opt_float(event, "learning_rate"),
                p0=_optional_array(event, "p0"),
                rule=_rule(event.get("rule")),
                t=None if event.get("t") is None else _int(event["t"], "t"),
                **{k: _optional_array(event, k) for k in SLOTS},
            )
        except KeyError as e:
            raise PayloadError(f"neuron request is missing {e}") from e
        if req.phase == "backward" and req.dz is None:
            raise PayloadError("a backward request needs dz")
        if req.phase == "output" and req.dz is not None:
            raise PayloadError("an output request computes its own dz")
        if req.phase == "forward" and req.dz is not None:
            if req.grad_input is None or req.learning_rate is None:
                raise PayloadError(
                    "a forward request with a deferred dz needs grad_input and learning_rate"
                )
            if req.p0 is not None:
                raise PayloadError("a first-layer request in the dual form carries no deferred dz")
            if (
                req.dz.ndim != 2
                or req.grad_input.ndim != 2
                or req.dz.shape != (req.hi - req.lo, req.grad_input.shape[1])
                or req.grad_input.shape[0] != req.w.shape[1]
            ):
                raise PayloadError(
                    f"a deferred dz {req.dz.shape} and its grad_input {req.grad_input.shape} "
                    f"do not fit rows {req.lo}:{req.hi} of weights {req.w.shape}"
                )
        if req.rule is not None:
            if req.dz is None or req.phase != "forward" or req.t is None or req.t < 1:
                raise PayloadError("an update rule comes with a deferred dz and its t (>= 1)")
            rows, width = req.hi - req.lo, req.w.shape[1]
            for name in optimizers.slot_names(req.rule["optimizer"]):
                a = getattr(req, name)
                want = (rows, width) if name.endswith("w") else (rows, 1)
                if a is None or a.shape != want:
                    raise PayloadError(
                        f"the {req.rule['optimizer']} update needs '{name}' of shape {want}, "
                        f"got {None if a is None else a.shape}"
                    )
        if req.p0 is not None and (req.phase != "forward" or req.layer != 1):
            raise PayloadError("only a first-layer forward request can be in the dual form (p0)")
        return req


_SHARED = ("a_prev", "grad_input")
SLOTS = ("vw", "vb", "sw", "sb")
_RULE_KEYS = {"optimizer", "lambda", "beta1", "beta2", "epsilon"}


def _int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise PayloadError(f"'{key}' must be an integer, got {v!r}")
    return v


def _rule(v: Any) -> dict[str, Any] | None:
    """The update rule's hyperparameters, checked for shape (values: `params.parse`'s)."""
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != _RULE_KEYS:
        raise PayloadError(f"'rule' must have exactly {sorted(_RULE_KEYS)}, got {v!r}")
    if v["optimizer"] not in optimizers.OPTIMIZERS:
        raise PayloadError(f"unknown optimizer {v['optimizer']!r}")
    for key in _RULE_KEYS - {"optimizer"}:
        _opt_float(v, key)
    return v


def _field(key: str, v: np.ndarray | None) -> bytes:
    """`"key": <packed array>` (or null), the array's hex spliced in as bytes."""
    if v is None:
        return f'"{key}": null'.encode()
    a = np.ascontiguousarray(v, dtype="<f8")
    return b"".join(
        [
            f'"{key}": {{"shape": {list(a.shape)}, "f8": "'.encode(),
            a.tobytes().hex().encode("ascii"),
            b'"}',
        ]
    )


@dataclass(frozen=True)
class NeuronResponse:
    """A block's outputs: its activations (forward: the trainer needs no Z, as every
    activation's derivative is a function of its output), and its gradients."""

    a: np.ndarray | None = None
    dw: np.ndarray | None = None
    db: np.ndarray | None = None
    dz: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: pack(v) for k in ("a", "dw", "db", "dz") if (v := getattr(self, k)) is not None}

    @classmethod
    def from_json(cls, body: bytes) -> "NeuronResponse":
        try:
            d = json.loads(body)
        except ValueError as e:
            raise PayloadError(f"neuron response is not JSON: {e}") from e
        if not isinstance(d, dict):
            raise PayloadError("neuron response is not an object")
        return cls(**{k: _optional_array(d, k) for k in ("a", "dw", "db", "dz")})


TRAINER_REASONS = ("launch", "handover", "watchdog", "resume")


@dataclass(frozen=True)
class TrainerEvent:
    run_id: str
    reason: str = "launch"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "trainer", "run_id": self.run_id, "reason": self.reason}

    @classmethod
    def from_event(cls, event: Any) -> "TrainerEvent":
        if not isinstance(event, dict) or not isinstance(event.get("run_id"), str):
            raise PayloadError("a trainer event needs a string 'run_id'")
        reason = event.get("reason", "launch")
        if reason not in TRAINER_REASONS:
            raise PayloadError(f"unknown trainer reason {reason!r}")
        return cls(run_id=event["run_id"], reason=reason)


@dataclass(frozen=True)
class UploadedObject:
    """One S3 ObjectCreated record: which object version landed where."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    sequencer: str
    event_time: str


def uploaded_objects(event: Any) -> list[UploadedObject]:
    """The S3 records of an S3 event, or of an SQS batch of S3 events (keys URL-decoded).

    S3's test event (sent when a notification is configured) yields nothing.
    """
    if not isinstance(event, dict):
        raise PayloadError("the event is not an object")
    records: list[dict] = []
    for rec in event.get("Records", []):
        if rec.get("eventSource") == "aws:sqs":
            try:
                body = json.loads(rec["body"])
            except (KeyError, ValueError) as e:
                raise PayloadError(f"an SQS record's body is not JSON: {e}") from e
            if not isinstance(body, dict):
                raise PayloadError(
                    f"an SQS record's body is JSON but not an S3 event: {type(body).__name__}"
                )
            if body.get("Event") == "s3:TestEvent":
                continue
            if body.get("Type") == "Notification" and "Message" in body:  # via SNS
                try:
                    body = json.loads(body["Message"])
                except (TypeError, ValueError) as e:
                    raise PayloadError(f"an SNS message's body is not JSON: {e}") from e
            if not isinstance(body, dict) or not isinstance(body.get("Records", []), list):
                raise PayloadError("an SQS record's body is not an S3 event")
            records += body.get("Records", [])
        elif rec.get("eventSource") == "aws:s3":
            records.append(rec)
    out = []
    for rec in records:
        if not str(rec.get("eventName", "")).startswith("ObjectCreated"):
            continue
        try:
            s3 = rec["s3"]
            obj = s3["object"]
            out.append(
                UploadedObject(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    size=int(obj.get("size", 0)),
                    etag=str(obj.get("eTag", "")),
                    version_id=obj.get("versionId") or None,
                    sequencer=str(obj.get("sequencer", "")),
                    event_time=str(rec.get("eventTime", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PayloadError(f"an S3 record lacks {e}") from e
    return out
