"""Lambda's limits on the embedded stack, as AWS documents them (Lambda quotas and the
Invoke API reference): memory, payloads, concurrency. Against the session's real stack
(`embedded_stack`) and, for the account's concurrency, the runtime's own accounting."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from embedded.invocations import (
    ASYNC_PAYLOAD_LIMIT,
    SYNC_PAYLOAD_LIMIT,
    SYNC_RESPONSE_LIMIT,
    Concurrency,
    ConcurrencyConfigError,
    RuntimeConfig,
)
from embedded.stack import StackInfo
from tests.support.stack_clients import client

FIXTURES = "itsacat-fixtures"


def invoke(info: StackInfo, function: str, event: Any) -> tuple[dict[str, Any], Any]:
    response = client(info, "lambda").invoke(
        FunctionName=function, Payload=json.dumps(event).encode()
    )
    return response, json.loads(response["Payload"].read() or b"null")


def counters(info: StackInfo, function: str) -> dict[str, Any]:
    return info.stats()["functions"].get(f"{FIXTURES}-{function}", {})


# ---------------------------------------------------------------------- memory


def test_a_handler_over_its_memory_dies_with_out_of_memory(embedded_stack: StackInfo) -> None:
    before = counters(embedded_stack, "memory").get("out_of_memory", 0)
    # Within its 256 MB: fine.
    response, result = invoke(embedded_stack, f"{FIXTURES}-memory", {"mb": 64})
    assert "FunctionError" not in response and result == {"allocated_mb": 64}
    # Over it: killed, as Lambda kills it, and the invocation fails with AWS's error.
    response, error = invoke(embedded_stack, f"{FIXTURES}-memory", {"mb": 400, "hold_s": 2})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.OutOfMemory"
    assert "Runtime exited with error: signal: killed" in error["errorMessage"]
    assert counters(embedded_stack, "memory")["out_of_memory"] == before + 1
    # The worker is replaced, nothing hangs: the function answers again.
    response, result = invoke(embedded_stack, f"{FIXTURES}-memory", {"mb": 16})
    assert result == {"allocated_mb": 16}


# ---------------------------------------------------------------------- payloads


def test_a_response_over_6_mb_is_refused_as_lambda_refuses_it(embedded_stack: StackInfo) -> None:
    response, result = invoke(embedded_stack, f"{FIXTURES}-big-response", {"bytes": 4 << 20})
    assert "FunctionError" not in response and len(result) == (4 << 20) - 2

    response, error = invoke(
        embedded_stack, f"{FIXTURES}-big-response", {"bytes": SYNC_RESPONSE_LIMIT + 1}
    )
    assert response["FunctionError"] == "Unhandled"
    assert error == {
        "errorType": "Function.ResponseSizeTooLarge",
        "errorMessage": "Response payload size exceeded maximum allowed payload size "
        "(6291556 bytes).",
    }
    assert counters(embedded_stack, "big-response")["response_too_large"] >= 1


@pytest.mark.parametrize(
    "invocation_type, limit, operation",
    [
        ("RequestResponse", SYNC_PAYLOAD_LIMIT, "InvokeFunction"),
        ("Event", ASYNC_PAYLOAD_LIMIT, "InvokeAsync"),
    ],
)
def test_a_request_over_its_limit_is_refused(
    embedded_stack: StackInfo, invocation_type: str, limit: int, operation: str
) -> None:
    lam = client(embedded_stack, "lambda")
    at_limit = json.dumps({"pad": "x" * (limit - 11)}).encode()
    assert len(at_limit) == limit
    ok = lam.invoke(
        FunctionName=f"{FIXTURES}-log", InvocationType=invocation_type, Payload=at_limit
    )
    assert ok["StatusCode"] in (200, 202)
    with pytest.raises(ClientError) as refused:
        lam.invoke(
            FunctionName=f"{FIXTURES}-log",
            InvocationType=invocation_type,
            Payload=at_limit[:-2] + b'x"}',
        )
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error["Error"]["Code"] == "RequestTooLargeException"
    assert f"smaller than {limit} bytes for the {operation} operation" in error["Error"]["Message"]


# ---------------------------------------------------------------------- concurrency


def _functions(**reserved: int | None) -> list[Any]:
    return [SimpleNamespace(name=n, reserved_concurrency=r) for n, r in reserved.items()]


def test_the_account_limit_throttles_what_is_beyond_it() -> None:
    concurrency = Concurrency(10, _functions(trainer=None, neuron=None))
    assert [concurrency.enter("neuron") for _ in range(9)] == [None] * 9
    assert concurrency.enter("trainer") is None
    assert concurrency.enter("neuron") == "ConcurrentInvocationLimitExceeded"
    concurrency.leave("neuron")
    assert concurrency.enter("neuron") is None
    assert concurrency.snapshot()["peak"] == 10


def test_reserved_concurrency_is_a_functions_own_and_its_ceiling() -> None:
    concurrency = Concurrency(1000, _functions(api=5, neuron=None))
    assert [concurrency.enter("api") for _ in range(5)] == [None] * 5
    assert concurrency.enter("api") == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert concurrency.unreserved_limit == 995
    with pytest.raises(ConcurrencyConfigError, match=r"below its minimum value of \[100\]"):
        Concurrency(1000, _functions(api=901))
    with pytest.raises(ConcurrencyConfigError, match=r"minimum value of \[10\]"):
        Concurrency(10, _functions(api=1))


def test_a_throttled_event_backs_off_as_lambda_does() -> None:
    """1 s doubling up to 5 minutes, on the stack's clock."""
    aws = RuntimeConfig(time_scale=1)
    assert [aws.throttle_delay_s(n) for n in (1, 2, 3, 9, 10, 30)] == [1, 2, 4, 256, 300, 300]
    assert RuntimeConfig(time_scale=1 / 60).throttle_delay_s(10) == pytest.approx(5.0)
    assert aws.retry_delays_s == (60.0, 120.0)
    assert RuntimeConfig(time_scale=0.5, schedules=False).schedule_scale == 0
