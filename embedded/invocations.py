"""How the local Lambda runtime schedules invocations: synchronous, asynchronous, retried.

`Runtime` is the engine behind the Invoke API (`embedded.invoke_api`), the SQS relay and the
schedules: it finds a function's pool of warm workers (`embedded.workers`), consults the fault
plan, enforces the timeout, and reports errors the way Lambda does (`X-Amz-Function-Error:
Unhandled` with an `errorMessage`/`errorType`/`stackTrace` payload). Asynchronous (`Event`)
invocations are queued, retried up to the function's `MaximumRetryAttempts` (two by default,
as on AWS, with the waits scaled down) and then sent to the function's on-failure destination
as a Lambda destination record. It also counts everything it does, for the benchmark.
"""

from __future__ import annotations

import datetime
import json
import random
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from embedded.deploy import ACCOUNT_ID, REGION
from embedded.faults import NO_FAULTS, FaultPlan, Faults
from embedded.functions import FunctionSpec, Topology
from embedded.logsink import LogSink
from embedded.runtime_api import Invocation
from embedded.workers import Credentials, Filesystem, WorkerDied, WorkerPool, WorkerTimedOut

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
ASYNC_PAYLOAD_LIMIT = 256 * 1024


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs of the local runtime; waits are AWS's, scaled down to keep local runs quick."""

    workers: int = 4  # warm workers per function, at most
    retry_delays_s: tuple[float, ...] = (0.2, 0.4)  # Lambda waits about 1 and 2 minutes
    schedule_scale: float = 1 / 6  # rate(1 minute) fires every 10 s; 0 turns schedules off
    acquire_timeout_s: float = 60.0  # no worker free for this long: TooManyRequestsException
    async_concurrency: int = 16
    relay_retry_visibility_s: int = 1  # a failed SQS batch is visible again after this long
    faults: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "retry_delays_s": list(self.retry_delays_s),
            "schedule_scale": self.schedule_scale,
            "acquire_timeout_s": self.acquire_timeout_s,
            "async_concurrency": self.async_concurrency,
            "relay_retry_visibility_s": self.relay_retry_visibility_s,
            "faults": self.faults,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeConfig:
        return cls(**{**data, "retry_delays_s": tuple(data.get("retry_delays_s", (0.2, 0.4)))})


class FunctionNotFound(Exception):
    pass


class Throttled(Exception):
    pass


class PayloadTooLarge(Exception):
    pass


@dataclass(frozen=True)
class InvokeResult:
    """What the Invoke API answers: the payload, and `Unhandled` when the function failed."""

    request_id: str
    payload: bytes
    function_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.function_error is not None


@dataclass
class FunctionStats:
    requests: int = 0  # accepted by the Invoke API or internal callers (relay, schedule)
    sync: int = 0
    async_: int = 0
    executions: int = 0  # handler runs, retries and duplicates included
    errors: int = 0
    timeouts: int = 0
    crashes: int = 0
    throttles: int = 0
    retries: int = 0
    duplicates: int = 0
    destination_failures: int = 0
    destination_successes: int = 0
    duration_ms: float = 0.0
    in_flight: int = 0
    payload_bytes_in: int = 0  # request payloads accepted (for the benchmark)
    payload_bytes_out: int = 0  # response payloads of synchronous invocations

    def to_json(self) -> dict[str, Any]:
        data = {k.rstrip("_"): v for k, v in self.__dict__.items()}
        data["duration_ms"] = round(self.duration_ms, 3)
        return data


@dataclass
class Stats:
    functions: dict[str, FunctionStats] = field(default_factory=lambda: defaultdict(FunctionStats))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, function: str, **increments: float) -> None:
        with self.lock:
            stats = self.functions[function]
            for name, value in increments.items():
                setattr(stats, name, getattr(stats, name) + value)


_IDS = random.Random()  # seeded from the OS once; a request id needs to be unique, not secret


def _request_id() -> str:
    """A version-4 UUID, as Lambda's request ids, without a getrandom(2) per invocation."""
    return str(uuid.UUID(int=_IDS.getrandbits(128), version=4))


def function_name(name_or_arn: str) -> str:
    """The function's name, from a name, a full or partial ARN, with or without qualifier."""
    name = name_or_arn.split(":function:", 1)[1] if ":function:" in name_or_arn else name_or_arn
    return name.split(":", 1)[0]  # drop a qualifier ($LATEST)


def function_arn(name_or_arn: str) -> str:
    """The function's unqualified ARN."""
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name(name_or_arn)}"


def _trace_id() -> str:
    """An X-Ray trace header, as Lambda passes one with every event."""
    epoch = f"{int(time.time()):08x}"
    return (
        f"Root=1-{epoch}-{_IDS.getrandbits(96):024x};Parent={_IDS.getrandbits(64):016x};Sampled=0"
    )


def _now_iso() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Runtime:
    """Runs invocations of the functions in `topology` in pools of warm workers."""

    def __init__(
        self,
        topology: Topology,
        config: RuntimeConfig,
        endpoints: dict[str, str],
        sink: LogSink,
        clients: Any,
        files: dict[str, Filesystem],
        credentials: Credentials,
        role_client: Callable[[str, str], Any],
        faults: FaultPlan | None = None,
    ) -> None:
        self.topology = topology
        self.config = config
        self.sink = sink
        self.clients = clients
        self.role_client = role_client  # (function, service) -> a client with its role
        self.faults = faults or FaultPlan.parse(config.faults)
        self.stats = Stats()
        self.started = time.time()
        self.pools = {
            name: WorkerPool(spec, files[name], config.workers, endpoints, credentials, sink)
            for name, spec in topology.functions.items()
        }
        self._async = ThreadPoolExecutor(config.async_concurrency, thread_name_prefix="async")
        self._timers: set[threading.Timer] = set()
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lookup

    def function(self, name_or_arn: str) -> FunctionSpec:
        """Accepts a name, a full ARN or a partial ARN (`123456789012:function:name`)."""
        spec = self.topology.functions.get(function_name(name_or_arn))
        if spec is None:
            raise FunctionNotFound(f"Function not found: {function_arn(name_or_arn)}")
        return spec

    # ------------------------------------------------------------------ synchronous

    def invoke(self, name_or_arn: str, payload: bytes) -> InvokeResult:
        """A `RequestResponse` invocation: runs now, returns the function's result or error."""
        spec = self.function(name_or_arn)
        if len(payload) > SYNC_PAYLOAD_LIMIT:
            raise PayloadTooLarge(
                f"Request must be smaller than {SYNC_PAYLOAD_LIMIT} bytes "
                "for the InvokeFunction operation"
            )
        self.stats.add(spec.name, requests=1, sync=1, payload_bytes_in=len(payload))
        faults = self.faults.decide(spec.name, "RequestResponse")
        if faults.throttle:
            self.stats.add(spec.name, throttles=1)
            raise Throttled("Rate Exceeded.")
        request_id = _request_id()
        if faults.duplicate:
            self.stats.add(spec.name, duplicates=1)
            self._async.submit(self._execute, spec, payload, _request_id(), NO_FAULTS)
        return self._execute(spec, payload, request_id, faults)

    def _execute(
        self, spec: FunctionSpec, payload: bytes, request_id: str, faults: Faults
    ) -> InvokeResult:
        """Run the handler once in a warm worker (raises Throttled when none frees up)."""
        if faults.delay_s:
            time.sleep(faults.delay_s)
        pool = self.pools[spec.name]
        worker = pool.acquire(self.config.acquire_timeout_s)
        if worker is None:
            self.stats.add(spec.name, throttles=1)
            raise Throttled("Rate Exceeded.")
        self.stats.add(spec.name, executions=1, in_flight=1)
        started = time.monotonic()
        invocation = Invocation(
            request_id=request_id,
            payload=payload or b"{}",
            deadline_ms=int(time.time() * 1000) + spec.timeout_s * 1000,
            invoked_arn=spec.arn,
            trace_id=_trace_id(),
        )
        healthy = False
        try:
            result = worker.call(invocation, spec.timeout_s, faults.worker_fault)
            healthy = True
            error = None if result.ok else "Unhandled"
            body = result.payload
            if error:
                self.stats.add(spec.name, errors=1)
        except WorkerTimedOut:
            self.stats.add(spec.name, errors=1, timeouts=1)
            message = f"Task timed out after {spec.timeout_s:.2f} seconds"
            self.sink.emit(spec.log_group, worker.stream, f"{_now_iso()} {request_id} {message}")
            error, body = "Unhandled", _error_body("Sandbox.Timedout", request_id, message)
        except WorkerDied as e:
            self.stats.add(spec.name, errors=1, crashes=1)
            message = f"Runtime exited with error: {e.status}"
            self.sink.emit(
                spec.log_group, worker.stream, f"RequestId: {request_id} Error: {message}"
            )
            error, body = "Unhandled", _error_body("Runtime.ExitError", request_id, message)
        finally:
            pool.release(worker, healthy)
            self.stats.add(spec.name, in_flight=-1, duration_ms=(time.monotonic() - started) * 1000)
        return InvokeResult(request_id, body, error)

    # ------------------------------------------------------------------ asynchronous

    def invoke_async(self, name_or_arn: str, payload: bytes) -> str:
        """An `Event` invocation: queued, retried on error, then sent to its destination."""
        spec = self.function(name_or_arn)
        if len(payload) > ASYNC_PAYLOAD_LIMIT:
            raise PayloadTooLarge(
                f"Request must be smaller than {ASYNC_PAYLOAD_LIMIT} bytes "
                "for the InvokeAsync operation"
            )
        self.stats.add(spec.name, requests=1, async_=1, payload_bytes_in=len(payload))
        request_id = _request_id()
        self._submit_async(spec, payload, request_id, attempt=1)
        return request_id

    def _submit_async(
        self, spec: FunctionSpec, payload: bytes, request_id: str, attempt: int
    ) -> None:
        if not self._closed:
            self._async.submit(self._run_async, spec, payload, request_id, attempt)

    def _later(self, delay_s: float, action: Any, *args: Any) -> None:
        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
            action(*args)

        timer = threading.Timer(delay_s, fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def _run_async(self, spec: FunctionSpec, payload: bytes, request_id: str, attempt: int) -> None:
        faults = self.faults.decide(spec.name, "Event")
        if faults.duplicate and attempt == 1:
            self.stats.add(spec.name, duplicates=1)
            self._async.submit(self._execute, spec, payload, request_id, NO_FAULTS)
        try:
            if faults.throttle:
                self.stats.add(spec.name, throttles=1)
                raise Throttled("Rate Exceeded.")
            result = self._execute(spec, payload, request_id, faults)
        except Throttled:
            # Lambda keeps throttled events and tries again later, without using up a retry.
            self._later(
                self._retry_delay(attempt), self._submit_async, spec, payload, request_id, attempt
            )
            return
        if not result.failed:
            if spec.on_success:
                self._send_destination(spec, payload, request_id, attempt, result, "Success")
            return
        if attempt <= spec.max_retry_attempts and not self._closed:
            self.stats.add(spec.name, retries=1)
            delay = self._retry_delay(attempt)
            self._later(delay, self._submit_async, spec, payload, request_id, attempt + 1)
            return
        if spec.on_failure:
            self._send_destination(spec, payload, request_id, attempt, result, "RetriesExhausted")

    def _retry_delay(self, attempt: int) -> float:
        delays = self.config.retry_delays_s or (0.0,)
        return delays[min(attempt, len(delays)) - 1]

    def _send_destination(
        self,
        spec: FunctionSpec,
        payload: bytes,
        request_id: str,
        attempts: int,
        result: InvokeResult,
        condition: str,
    ) -> None:
        """Send a Lambda destination record (the format AWS uses) to SQS, SNS or a function."""
        destination = spec.on_success if condition == "Success" else spec.on_failure
        assert destination is not None
        record = {
            "version": "1.0",
            "timestamp": _now_iso(),
            "requestContext": {
                "requestId": request_id,
                "functionArn": f"{spec.arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "requestPayload": _json_or_text(payload),
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                **({"functionError": result.function_error} if result.function_error else {}),
            },
            "responsePayload": _json_or_text(result.payload),
        }
        body = json.dumps(record)
        service = destination.split(":")[2]
        try:
            if service == "sqs":
                # Lambda sends the record with the function's execution role (to the queue's
                # ARN: the URL is looked up as the service, the role needs no GetQueueUrl).
                name = destination.rsplit(":", 1)[-1]
                url = self.clients.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
                self.role_client(spec.name, "sqs").send_message(QueueUrl=url, MessageBody=body)
            elif service == "sns":
                self.role_client(spec.name, "sns").publish(TopicArn=destination, Message=body)
            elif service == "lambda":
                self.invoke_async(destination, body.encode())
            else:
                raise ValueError(f"unsupported destination {destination}")
        except Exception as e:
            print(f"destination {destination} of {spec.name}: {e}", file=sys.stderr, flush=True)
            return
        counter = "destination_successes" if condition == "Success" else "destination_failures"
        self.stats.add(spec.name, **{counter: 1})

    # ------------------------------------------------------------------ lifecycle

    def snapshot(self) -> dict[str, Any]:
        with self.stats.lock:
            functions = {name: s.to_json() for name, s in self.stats.functions.items()}
        for name, pool in self.pools.items():
            entry = functions.setdefault(name, FunctionStats().to_json())
            entry["workers"] = pool.workers
            entry["workers_spawned"] = pool.spawned
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "functions": functions,
            "log_events_sent": self.sink.events_sent,
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timers, self._timers = list(self._timers), set()
        for timer in timers:
            timer.cancel()
        for pool in self.pools.values():
            pool.close()
        self._async.shutdown(wait=False, cancel_futures=True)


def _error_body(error_type: str, request_id: str, message: str) -> bytes:
    return json.dumps(
        {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"}
    ).encode()


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")
