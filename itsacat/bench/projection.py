"""What a full training run would take and cost on AWS, projected from measured counts.

The benchmark counts, per epoch and per plan, the Lambda invocations, the AWS requests by
operation and the bytes moved; this module turns those counts into wall time and dollars
with the assumptions below. They are assumptions, not measurements: each says where it
comes from and when it was read, so that a reader can redo the arithmetic with their own.
Prices are us-east-1, on-demand, x86, without the free tier. What the deployed functions
are (their memory, timeouts, the trainer's concurrency) is read from the template
(`template_settings`), not copied here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Pricing pages as read in 2025-06 (not re-checked since: this project runs offline).
LAMBDA_GB_SECOND_USD = 0.0000166667  # https://aws.amazon.com/lambda/pricing/ (x86)
LAMBDA_REQUEST_USD = 0.20 / 1_000_000  # same page, per request
DYNAMODB_WRU_USD = 0.625 / 1_000_000  # https://aws.amazon.com/dynamodb/pricing/on-demand/
DYNAMODB_RRU_USD = 0.125 / 1_000_000  # same page (prices since the 2024-11-01 cut)
S3_PUT_USD = 0.005 / 1000  # https://aws.amazon.com/s3/pricing/ (Standard: PUT/COPY/POST/LIST)
S3_GET_USD = 0.0004 / 1000  # same page (GET and all other requests)

# Latencies: typical published figures, stated as assumptions.
INVOKE_OVERHEAD_S = 0.015  # warm synchronous Invoke round trip in-region, small payload
PAYLOAD_BYTES_PER_S = 100e6  # request/response payload transfer through the Invoke API
DYNAMODB_REQUEST_S = 0.006  # "single-digit milliseconds" per request (DynamoDB docs)
DYNAMODB_BYTES_PER_S = 50e6  # large BatchWriteItem bodies (a 96 KiB weight row each)
S3_REQUEST_S = 0.030  # first byte of a small GET/PUT (S3 performance guidelines)

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "template.yaml"
# The functions' variable that says how many neuron invocations a trainer keeps in flight.
CONCURRENCY_VARIABLE = "NEURON_CONCURRENCY"
WRU_BYTES = 1024  # one write request unit per KB of item, for puts and deletes alike
RRU_BYTES = 4096  # one strongly consistent read unit per 4 KB


@dataclass(frozen=True)
class TemplateSettings:
    """What the projection takes from the template (templates/template.yaml): the deployed
    functions' memory, timeouts and the trainer's concurrency, parameters at their defaults."""

    neuron_memory_mb: int
    trainer_memory_mb: int
    neuron_concurrency: int  # neuron invocations a trainer keeps in flight
    neuron_timeout_s: float
    trainer_timeout_s: float  # a trainer hands its run over to a fresh invocation by then


def _resolve(template: dict[str, Any], value: Any, what: str) -> float:
    """A number of the template, following a `!Ref` to its parameter's default."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        try:
            value = template["Parameters"][name]["Default"]
        except KeyError as e:
            raise ValueError(f"{what}: !Ref {name} is not a parameter with a default") from e
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not a number: {value!r}") from e


def _function(template: dict[str, Any], logical_id: str, key: str) -> float:
    """A property of one function, else of the template's Globals."""
    props = template["Resources"][logical_id].get("Properties", {})
    shared = template.get("Globals", {}).get("Function", {})
    if key not in props and key not in shared:
        raise ValueError(f"{logical_id} has no {key}")
    return _resolve(template, props.get(key, shared.get(key)), f"{logical_id}.{key}")


def _variable(template: dict[str, Any], logical_id: str, name: str) -> float:
    """An environment variable of one function, else of the template's Globals."""
    own = template["Resources"][logical_id].get("Properties", {})
    shared = template.get("Globals", {}).get("Function", {})
    for props in (own, shared):
        variables = props.get("Environment", {}).get("Variables", {})
        if name in variables:
            return _resolve(template, variables[name], f"{logical_id}'s {name}")
    raise ValueError(f"{logical_id} has no environment variable {name}")


@functools.cache
def template_settings(path: Path = TEMPLATE) -> TemplateSettings:
    """The settings of the template at `path` (the project's by default)."""
    from itsacat.deploy.package import load_template

    t = load_template(path)
    return TemplateSettings(
        neuron_memory_mb=int(_function(t, "NeuronFunction", "MemorySize")),
        trainer_memory_mb=int(_function(t, "TrainerFunction", "MemorySize")),
        neuron_concurrency=int(_variable(t, "TrainerFunction", CONCURRENCY_VARIABLE)),
        neuron_timeout_s=_function(t, "NeuronFunction", "Timeout"),
        trainer_timeout_s=_function(t, "TrainerFunction", "Timeout"),
    )


@dataclass(frozen=True)
class PlanCounts:
    """What the benchmark measured for one plan, per epoch (and the plan's shape)."""

    invocations: float  # neuron invocations per epoch
    waves: float  # rounds of parallel invocations per epoch (each waits for the slowest)
    payload_bytes: float  # request + response payload bytes per epoch
    execution_s: float  # mean handler time of one neuron invocation (measured locally)
    requests: dict[str, float]  # AWS requests per epoch by "service:Operation"
    storage_bytes: float  # bytes moved to and from DynamoDB and S3 per epoch
    local_s: float = 0.0  # trainer-side compute per epoch (the hybrid plan's small layers)
    weight_wru_per_commit: float = 0.0  # WRUs of writing (and later deleting) one version
    commits_per_epoch: float = 1.0


@dataclass(frozen=True)
class Projection:
    epoch_s: float
    run_s: float
    run_minutes: float
    usd: float
    usd_breakdown: dict[str, float]


def waves(
    blocks_per_layer: list[int],
    concurrency: int | None = None,
    backward_per_layer: list[int] | None = None,
) -> int:
    """Rounds of invocations per step: forward, then backward (`backward_per_layer`, by
    default the same blocks), each layer waiting for the last; `concurrency`: invocations in
    flight (None: the template's)."""
    if concurrency is None:
        concurrency = template_settings().neuron_concurrency
    backward = blocks_per_layer if backward_per_layer is None else backward_per_layer
    return sum(math.ceil(n / concurrency) for n in [*blocks_per_layer, *backward] if n)


def weight_wru(n_x: int, neurons: tuple[int, ...]) -> int:
    """WRUs to write one version of every weight row (one item per row, float64 bytes);
    `n_x` is the first layer's row width (m, the examples, in the dual form)."""
    total, n_prev = 0, n_x
    for n in neurons:
        item = 8 * (n_prev + 1) + 64  # w and b, plus keys and the TTL attribute
        total += n * math.ceil(item / WRU_BYTES)
        n_prev = n
    return total


def project(c: PlanCounts, epochs: int, settings: TemplateSettings | None = None) -> Projection:
    """Wall time and dollars of `epochs` epochs on AWS for one plan, with the functions as
    `settings` says (None: as the project's template deploys them)."""
    f = settings or template_settings()
    ddb = sum(v for k, v in c.requests.items() if k.startswith("dynamodb:"))
    s3 = sum(v for k, v in c.requests.items() if k.startswith("s3:"))
    epoch_s = (
        c.waves * (INVOKE_OVERHEAD_S + c.execution_s)
        + c.payload_bytes / PAYLOAD_BYTES_PER_S
        + ddb * DYNAMODB_REQUEST_S
        + c.storage_bytes / DYNAMODB_BYTES_PER_S
        + s3 * S3_REQUEST_S
        + c.local_s
    )
    run_s = epochs * epoch_s
    invocations = epochs * c.invocations
    # The trainer hands the run over to a fresh invocation of itself before its timeout.
    trainer_invocations = max(1, math.ceil(run_s / f.trainer_timeout_s))
    gb_s = invocations * (c.execution_s + 0.001) * f.neuron_memory_mb / 1024
    gb_s += run_s * f.trainer_memory_mb / 1024  # the trainer waits for its neurons
    other_writes = sum(
        v
        for k, v in c.requests.items()
        if k in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
    )
    reads = sum(v for k, v in c.requests.items() if k in ("dynamodb:GetItem", "dynamodb:Query"))
    wru = epochs * (2 * c.weight_wru_per_commit * c.commits_per_epoch + other_writes)
    s3_puts = sum(v for k, v in c.requests.items() if k in ("s3:PutObject", "s3:ListObjects"))
    breakdown = {
        "lambda_requests": (invocations + trainer_invocations) * LAMBDA_REQUEST_USD,
        "lambda_compute": gb_s * LAMBDA_GB_SECOND_USD,
        "dynamodb_writes": wru * DYNAMODB_WRU_USD,
        "dynamodb_reads": epochs * reads * DYNAMODB_RRU_USD,
        "s3_requests": epochs * (s3_puts * S3_PUT_USD + (s3 - s3_puts) * S3_GET_USD),
    }
    return Projection(
        epoch_s=round(epoch_s, 4),
        run_s=round(run_s, 1),
        run_minutes=round(run_s / 60, 1),
        usd=round(sum(breakdown.values()), 4),
        usd_breakdown={k: round(v, 4) for k, v in breakdown.items()},
    )


def assumptions(settings: TemplateSettings | None = None) -> dict[str, Any]:
    """The numbers the projection uses, for printing beside it."""
    f = settings or template_settings()
    return {
        "prices_as_of": "2025-06, us-east-1, on-demand, x86, no free tier",
        "lambda_gb_second_usd": LAMBDA_GB_SECOND_USD,
        "lambda_request_usd": LAMBDA_REQUEST_USD,
        "dynamodb_wru_usd": DYNAMODB_WRU_USD,
        "dynamodb_rru_usd": DYNAMODB_RRU_USD,
        "s3_put_usd": S3_PUT_USD,
        "s3_get_usd": S3_GET_USD,
        "invoke_overhead_s": INVOKE_OVERHEAD_S,
        "payload_bytes_per_s": PAYLOAD_BYTES_PER_S,
        "dynamodb_request_s": DYNAMODB_REQUEST_S,
        "dynamodb_bytes_per_s": DYNAMODB_BYTES_PER_S,
        "s3_request_s": S3_REQUEST_S,
        "template": "templates/template.yaml (parameters at their defaults)",
        **asdict(f),
        "execution_time": "each neuron invocation's handler time as measured locally "
        "(one local core per worker standing in for one Lambda vCPU)",
        "model": "epoch = waves x (invoke overhead + execution) + payload bytes / rate + "
        "DynamoDB requests x latency + storage bytes / rate + S3 requests x latency + "
        "trainer-side compute",
        "sources": [
            "https://aws.amazon.com/lambda/pricing/",
            "https://aws.amazon.com/dynamodb/pricing/on-demand/",
            "https://aws.amazon.com/s3/pricing/",
        ],
    }


def as_dict(p: Projection) -> dict[str, Any]:
    return asdict(p)
