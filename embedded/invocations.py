"""How the local Lambda runtime schedules invocations: synchronous, asynchronous, retried.

`Runtime` is the engine behind the Invoke API (`embedded.invoke_api`), the SQS relay and the
schedules: it finds a function's pool of warm workers (`embedded.workers`), consults the fault
plan, enforces the timeout, and reports errors the way Lambda does (`X-Amz-Function-Error:
Unhandled` with an `errorMessage`/`errorType`/`stackTrace` payload). Asynchronous (`Event`)
invocations are queued, retried up to the function's `MaximumRetryAttempts` (two by default,
as on AWS) and then sent to the function's on-failure destination as a Lambda destination
record. It also counts everything it does, for the benchmark.

Lambda's limits are enforced as AWS documents them (Lambda quotas,
https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html, and the Invoke API
reference, https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html):
- payloads: 6 MB for a synchronous request and for its response, 1 MB for an asynchronous
  event; a request over its limit is refused (`RequestTooLargeException`, 413), a response
  over it fails the invocation (`Function.ResponseSizeTooLarge`);
- memory: a worker whose memory exceeds the function's `MemorySize` is killed and the
  invocation fails with `Runtime.OutOfMemory` (`embedded.workers`);
- concurrency: the account's concurrency limit (1,000 by default, often far less on a new
  account: `itsacat up --account-concurrency N`) and a function's reserved concurrency; an
  invocation beyond them is throttled (`TooManyRequestsException`, 429). Lambda keeps a
  throttled asynchronous event and tries again, from 1 s doubling up to 5 minutes, for up to
  6 hours (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).

AWS's clocks run here multiplied by one factor, `RuntimeConfig.time_scale`: the waits before
asynchronous retries (about 1 and 2 minutes on AWS), the throttle back-off, the maximum event
age, the schedules' rates, the SQS visibility timeout; the stack scales the trainer's lease
with it (`embedded.stack`), so that these clocks keep AWS's order.
A function's timeout is not scaled: it bounds computing, which runs at this machine's speed.
"""

from __future__ import annotations

import contextlib
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

# Lambda quotas (see the module docstring): the Invoke API counts bytes.
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # request, RequestResponse
SYNC_RESPONSE_LIMIT = 6 * 1024 * 1024 + 100  # the limit Lambda's error message states
ASYNC_PAYLOAD_LIMIT = 1024 * 1024  # Event (256 KB until 2025)
DEFAULT_ACCOUNT_CONCURRENCY = 1000
MIN_UNRESERVED_CONCURRENCY = 100  # reservations must leave the account this much

# AWS's clocks, in seconds at time scale 1 (the Lambda and SQS documentation).
ASYNC_RETRY_DELAYS_S = (60.0, 120.0)  # "one minute", then "two minutes", between attempts
THROTTLE_BACKOFF_S = (1.0, 300.0)  # a throttled event: from 1 s, doubling, to 5 minutes
MAX_EVENT_AGE_S = 6 * 3600.0  # an event not run by then goes to the on-failure destination
DEFAULT_TIME_SCALE = 1 / 15  # locally: a minute lasts 4 s


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs of the local runtime. AWS's clocks run `time_scale` times as long (1: as on
    AWS); `schedules` False leaves the scheduled rules unfired (benchmarks)."""

    workers: int = 4  # warm workers per function, at most
    time_scale: float = DEFAULT_TIME_SCALE
    schedules: bool = True
    account_concurrency: int = DEFAULT_ACCOUNT_CONCURRENCY
    acquire_timeout_s: float = 60.0  # no worker free for this long: TooManyRequestsException
    async_concurrency: int = 16
    faults: str = ""

    @property
    def retry_delays_s(self) -> tuple[float, ...]:
        return tuple(d * self.time_scale for d in ASYNC_RETRY_DELAYS_S)

    @property
    def schedule_scale(self) -> float:
        """Schedules fire at their rate times this (0: never)."""
        return self.time_scale if self.schedules else 0.0

    def throttle_delay_s(self, throttles: int) -> float:
        """The wait before a throttled event's next try, after `throttles` throttles."""
        low, high = THROTTLE_BACKOFF_S
        return min(high, low * 2 ** max(throttles - 1, 0)) * self.time_scale

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "time_scale": self.time_scale,
            "schedules": self.schedules,
            "account_concurrency": self.account_concurrency,
            "acquire_timeout_s": self.acquire_timeout_s,
            "async_concurrency": self.async_concurrency,
            "faults": self.faults,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeConfig:
        return cls(**data)


class FunctionNotFound(Exception):
    pass


class Throttled(Exception):
    """TooManyRequestsException; `reason` is Lambda's `Reason` field."""

    def __init__(self, reason: str = "ConcurrentInvocationLimitExceeded") -> None:
        super().__init__("Rate Exceeded.")
        self.reason = reason


class ConcurrencyConfigError(Exception):
    """The functions' reserved concurrency does not fit in the account's limit."""


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
    out_of_memory: int = 0
    response_too_large: int = 0
    throttles: int = 0
    retries: int = 0
    duplicates: int = 0
    redeliveries: int = 0  # an event delivered again with the same request id
    expired: int = 0  # events dropped at the maximum event age
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
        self.concurrency = Concurrency(config.account_concurrency, topology.functions.values())
        self.pools = {
            name: WorkerPool(
                spec,
                files[name],
                config.workers,
                endpoints,
                credentials,
                sink,
                host=self.faults.host_environment,
            )
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
            raise Throttled()
        request_id = _request_id()
        if faults.duplicate:
            self.stats.add(spec.name, duplicates=1)
            self._async.submit(self._execute_quietly, spec, payload, _request_id())
        result = self._execute(spec, payload, request_id, faults)
        if not result.failed and len(result.payload) > SYNC_RESPONSE_LIMIT:
            # Lambda ran the handler (its side effects stay) but does not return its answer.
            self.stats.add(spec.name, errors=1, response_too_large=1)
            message = (
                "Response payload size exceeded maximum allowed payload size "
                f"({SYNC_RESPONSE_LIMIT} bytes)."
            )
            body = json.dumps(
                {"errorMessage": message, "errorType": "Function.ResponseSizeTooLarge"}
            ).encode()
            return InvokeResult(request_id, body, "Unhandled")
        return result

    def _execute_quietly(self, spec: FunctionSpec, payload: bytes, request_id: str) -> None:
        """A duplicate's run: nobody waits for it, a throttle just drops it."""
        with contextlib.suppress(Throttled):
            self._execute(spec, payload, request_id, NO_FAULTS)

    def _execute(
        self, spec: FunctionSpec, payload: bytes, request_id: str, faults: Faults
    ) -> InvokeResult:
        """Run the handler once in a warm worker; raises Throttled beyond the concurrency
        limits (or when no local worker frees up in time)."""
        reason = self.concurrency.enter(spec.name)
        if reason is not None:
            self.stats.add(spec.name, throttles=1)
            raise Throttled(reason)
        try:
            return self._run(spec, payload, request_id, faults)
        finally:
            self.concurrency.leave(spec.name)

    def _run(
        self, spec: FunctionSpec, payload: bytes, request_id: str, faults: Faults
    ) -> InvokeResult:
        if faults.delay_s:
            time.sleep(faults.delay_s)
        pool = self.pools[spec.name]
        worker = pool.acquire(self.config.acquire_timeout_s)
        if worker is None:
            self.stats.add(spec.name, throttles=1)
            raise Throttled()
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
            message = f"Runtime exited with error: {e.status}"
            error_type = "Runtime.OutOfMemory" if e.out_of_memory else "Runtime.ExitError"
            if e.out_of_memory:
                self.stats.add(spec.name, errors=1, out_of_memory=1)
            else:
                self.stats.add(spec.name, errors=1, crashes=1)
            self.sink.emit_lines(
                spec.log_group,
                worker.stream,
                [f"RequestId: {request_id} Error: {message}", error_type],
            )
            error, body = "Unhandled", _error_body(error_type, request_id, message)
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
        event = _Event(spec, payload, request_id, time.monotonic())
        self._submit_async(event, 1)
        if self.faults.chance("redeliver"):
            # Lambda's event queue delivers at least once: the same event, same request id,
            # again, at some point within the first retry's wait.
            self.stats.add(spec.name, redeliveries=1)
            delay = random.uniform(0, self.config.retry_delays_s[0])
            self._later(delay, self._submit_async, event, 1)
        return request_id

    def _submit_async(self, event: _Event, attempt: int) -> None:
        if not self._closed:
            self._async.submit(self._run_async, event, attempt)

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

    def _run_async(self, event: _Event, attempt: int) -> None:
        spec, payload, request_id = event.spec, event.payload, event.request_id
        age_s = time.monotonic() - event.queued
        if age_s > MAX_EVENT_AGE_S * self.config.time_scale:
            # Never run within the maximum event age (throttled all along): dropped, and
            # sent to the on-failure destination as Lambda does.
            self.stats.add(spec.name, expired=1)
            if spec.on_failure:
                expired = InvokeResult(request_id, b"", None)
                self._send_destination(
                    spec, payload, request_id, attempt - 1, expired, "EventAgeExceeded"
                )
            return
        faults = self.faults.decide(spec.name, "Event")
        if faults.duplicate and attempt == 1:
            self.stats.add(spec.name, duplicates=1)
            self._async.submit(self._execute_quietly, spec, payload, request_id)
        try:
            if faults.throttle:
                self.stats.add(spec.name, throttles=1)
                raise Throttled()
            result = self._execute(spec, payload, request_id, faults)
        except Throttled:
            # Lambda keeps throttled events and tries again later, without using up a retry.
            event.throttles += 1
            self._later(
                self.config.throttle_delay_s(event.throttles), self._submit_async, event, attempt
            )
            return
        if not result.failed:
            if spec.on_success:
                self._send_destination(spec, payload, request_id, attempt, result, "Success")
            return
        if attempt <= spec.max_retry_attempts and not self._closed:
            self.stats.add(spec.name, retries=1)
            delay = self._retry_delay(attempt)
            self._later(delay, self._submit_async, event, attempt + 1)
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
            **({"responsePayload": _json_or_text(result.payload)} if result.payload else {}),
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
        hosts: dict[str, int] = {}
        for name, pool in self.pools.items():
            entry = functions.setdefault(name, FunctionStats().to_json())
            entry["workers"] = pool.workers
            entry["workers_spawned"] = pool.spawned
            for host, count in pool.hosts.items():
                hosts[host] = hosts.get(host, 0) + count
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "functions": functions,
            "concurrency": self.concurrency.snapshot(),
            "hosts": hosts,
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


@dataclass
class _Event:
    """An asynchronous event in Lambda's queue: what it is, since when, throttled how often."""

    spec: FunctionSpec
    payload: bytes
    request_id: str
    queued: float  # time.monotonic()
    throttles: int = 0


class Concurrency:
    """Lambda's concurrency accounting: executions in flight, in the account and per function.

    A function with reserved concurrency runs at most that many at once, and the others
    share what the reservations leave of the account's limit. Raises ConcurrencyConfigError
    when the reservations leave less than Lambda's minimum unreserved concurrency, as
    Lambda refuses such a configuration.
    """

    def __init__(self, account_limit: int, functions: Any) -> None:
        self.account_limit = account_limit
        self.reserved = {
            f.name: f.reserved_concurrency for f in functions if f.reserved_concurrency is not None
        }
        unreserved = account_limit - sum(self.reserved.values())
        if self.reserved and unreserved < min(MIN_UNRESERVED_CONCURRENCY, account_limit):
            raise ConcurrencyConfigError(
                "Specified ReservedConcurrentExecutions for function decreases account's "
                "UnreservedConcurrentExecution below its minimum value of "
                f"[{min(MIN_UNRESERVED_CONCURRENCY, account_limit)}] "
                f"(account concurrency {account_limit}, reserved {sum(self.reserved.values())})"
            )
        self.unreserved_limit = unreserved
        self._in_flight: dict[str, int] = defaultdict(int)
        self._unreserved_in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def enter(self, function: str) -> str | None:
        """Count one execution in; or the throttling reason (and nothing counted)."""
        with self._lock:
            reserved = self.reserved.get(function)
            if reserved is not None:
                if self._in_flight[function] >= reserved:
                    return "ReservedFunctionConcurrentInvocationLimitExceeded"
            elif self._unreserved_in_flight >= self.unreserved_limit:
                return "ConcurrentInvocationLimitExceeded"
            else:
                self._unreserved_in_flight += 1
            self._in_flight[function] += 1
            self.peak = max(self.peak, sum(self._in_flight.values()))
            return None

    def leave(self, function: str) -> None:
        with self._lock:
            self._in_flight[function] -= 1
            if function not in self.reserved:
                self._unreserved_in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "account_limit": self.account_limit,
                "reserved": dict(self.reserved),
                "in_flight": sum(self._in_flight.values()),
                "peak": self.peak,
            }


def _error_body(error_type: str, request_id: str, message: str) -> bytes:
    return json.dumps(
        {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"}
    ).encode()


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")
