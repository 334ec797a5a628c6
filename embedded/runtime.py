"""The local Lambda runtime: invocations of the template's functions, as Lambda performs them.

`Runtime` is the engine: it finds a function's pool of warm workers, consults the fault plan,
enforces the timeout, and reports errors the way Lambda does (`X-Amz-Function-Error:
Unhandled` with an `errorMessage`/`errorType`/`stackTrace` payload). Asynchronous (`Event`)
invocations are queued, retried up to the function's `MaximumRetryAttempts` (two by default,
as on AWS, with the waits scaled down) and then sent to the function's on-failure destination
as a Lambda destination record. It also counts everything it does, for the benchmark.

`serve()` puts the Lambda Invoke API in front of it on loopback, so that a plain
`boto3.client("lambda")` with `AWS_ENDPOINT_URL_LAMBDA` set invokes local functions; any
other Lambda API call (`list-functions`, `get-function-configuration`, ...) is passed on
to the emulator, which holds the functions' definitions.

Run as `python -m embedded.runtime --home DIR` (what `itsacat up` starts).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from embedded.faults import NO_FAULTS, FaultPlan, Faults
from embedded.functions import FunctionSpec, Topology
from embedded.logsink import LogSink
from embedded.workers import WorkerDied, WorkerPool, WorkerTimedOut

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
        faults: FaultPlan | None = None,
    ) -> None:
        self.topology = topology
        self.config = config
        self.sink = sink
        self.clients = clients
        self.faults = faults or FaultPlan.parse(config.faults)
        self.stats = Stats()
        self.started = time.time()
        self.pools = {
            name: WorkerPool(spec, config.workers, endpoints, sink)
            for name, spec in topology.functions.items()
        }
        self._async = ThreadPoolExecutor(config.async_concurrency, thread_name_prefix="async")
        self._timers: set[threading.Timer] = set()
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lookup

    def function(self, name_or_arn: str) -> FunctionSpec:
        """Accepts a name, a full ARN or a partial ARN (`123456789012:function:name`)."""
        name = name_or_arn
        if ":function:" in name:
            name = name.split(":function:", 1)[1]
        name = name.split(":", 1)[0]  # drop a qualifier ($LATEST)
        spec = self.topology.functions.get(name)
        if spec is None:
            raise FunctionNotFound(
                f"Function not found: arn:aws:lambda:us-east-1:123456789012:function:{name}"
            )
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
        deadline_ms = int(time.time() * 1000) + spec.timeout_s * 1000
        request = {
            "request_id": request_id,
            "payload": payload,
            "deadline_ms": deadline_ms,
            "invoked_arn": spec.arn,
            "fault": faults.worker_fault,
        }
        healthy = False
        try:
            result = worker.call(request, spec.timeout_s)
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
                sqs = self.clients.client("sqs")
                url = sqs.get_queue_url(QueueName=destination.rsplit(":", 1)[-1])["QueueUrl"]
                sqs.send_message(QueueUrl=url, MessageBody=body)
            elif service == "sns":
                self.clients.client("sns").publish(TopicArn=destination, Message=body)
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


# ---------------------------------------------------------------------- HTTP front end

_INVOKE_PREFIX = "/2015-03-31/functions/"
_INVOKE_SUFFIX = "/invocations"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100


class _Headers(dict[str, str]):
    """Request headers by lower-case name; `get` takes any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class InvokeHandler(BaseHTTPRequestHandler):
    """The Lambda Invoke API (HTTP/1.1, keep-alive); other Lambda calls go to the emulator."""

    protocol_version = "HTTP/1.1"
    # A read buffer that takes a request's line, headers and body in one recv(2) (a layer's
    # neuron requests are up to a few hundred KB).
    rbufsize = 1 << 19
    runtime: Runtime
    emulator: tuple[str, int]
    extra_routes: dict[str, Any]

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        """The request line and headers, without the `email` parser the base class uses
        (a third of the runtime's CPU under a fan-out went there)."""
        self.command = ""  # send_error reads it
        raw: bytes = self.raw_requestline  # type: ignore[attr-defined]
        self.requestline = line = str(raw, "iso-8859-1").rstrip("\r\n")
        self.request_version = "HTTP/1.0"
        if not line:  # a stray empty line: close quietly, as the base class does
            self.close_connection = True
            return False
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.close_connection = True
            self.send_error(400, f"Bad request line {line!r}")
            return False
        self.command, self.path, self.request_version = parts
        headers = _Headers()
        while True:
            raw = self.rfile.readline(_MAX_HEADER_LINE + 1)
            if not raw:  # the client went away in the middle of the headers
                self.close_connection = True
                return False
            if len(raw) > _MAX_HEADER_LINE or len(headers) > _MAX_HEADERS:
                self.close_connection = True
                self.send_error(431, "Request header fields too large")
                return False
            if raw in (b"\r\n", b"\n"):
                break
            name, _, value = raw.decode("iso-8859-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive"
        )
        expect = headers.get("expect", "").lower() == "100-continue"
        if expect and self.request_version != "HTTP/1.0":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """The whole response in one write."""
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _send_error(self, status: int, error_type: str, message: str, **extra: str) -> None:
        body = json.dumps({"Type": "User", "message": message, **extra}).encode()
        self._send(
            status,
            body,
            {"Content-Type": "application/json", "x-amzn-ErrorType": error_type},
        )

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/itsacat/health":
            self._send(200, b'{"ok": true}', {"Content-Type": "application/json"})
        elif path == "/itsacat/stats":
            stats = self.runtime.snapshot()
            for name, route in self.extra_routes.items():
                stats[name] = route()
            self._send(200, json.dumps(stats).encode(), {"Content-Type": "application/json"})
        else:
            self._proxy()

    def do_POST(self) -> None:
        path = self.path.partition("?")[0]
        if path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX):
            self._invoke(unquote(path[len(_INVOKE_PREFIX) : -len(_INVOKE_SUFFIX)]))
        else:
            self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def _invoke(self, name: str) -> None:
        payload = self._body()
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        runtime = self.runtime
        try:
            if invocation_type == "Event":
                request_id = runtime.invoke_async(name, payload)
                self._send(202, b"", {"x-amzn-RequestId": request_id})
            elif invocation_type == "DryRun":
                runtime.function(name)
                self._send(204, b"")
            elif invocation_type == "RequestResponse":
                result = runtime.invoke(name, payload)
                runtime.stats.add(
                    runtime.function(name).name, payload_bytes_out=len(result.payload)
                )
                headers = {
                    "Content-Type": "application/json",
                    "x-amzn-RequestId": result.request_id,
                    "X-Amz-Executed-Version": "$LATEST",
                }
                if result.function_error:
                    headers["X-Amz-Function-Error"] = result.function_error
                if self.headers.get("X-Amz-Log-Type") == "Tail":
                    headers["X-Amz-Log-Result"] = base64.b64encode(b"").decode()
                self._send(200, result.payload, headers)
            else:
                self._send_error(
                    400, "InvalidParameterValueException", f"bad invocation type {invocation_type}"
                )
        except FunctionNotFound as e:
            self._send_error(404, "ResourceNotFoundException", str(e))
        except Throttled as e:
            self._send_error(
                429,
                "TooManyRequestsException",
                str(e),
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        except PayloadTooLarge as e:
            self._send_error(413, "RequestTooLargeException", str(e))

    def _proxy(self) -> None:
        """Pass a control-plane call (list-functions, ...) on to the emulator."""
        body = self._body()
        connection = http.client.HTTPConnection(*self.emulator, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            self._send(response.status, data, out)
        finally:
            connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def make_server(
    host: str, port: int, emulator_url: str, extra_routes: dict[str, Any] | None = None
) -> tuple[_Server, type[InvokeHandler]]:
    """Bind the Invoke API; the runtime is attached to the returned handler class afterwards."""
    parts = urlsplit(emulator_url)
    handler = type(
        "BoundInvokeHandler",
        (InvokeHandler,),
        {
            "emulator": (parts.hostname, parts.port),
            "extra_routes": extra_routes if extra_routes is not None else {},
        },
    )
    return _Server((host, port), handler), handler


# ---------------------------------------------------------------------- the daemon


def run_daemon(home: Path, port: int) -> None:
    """Load the stack from `home`; run runtime, relay, schedule and log sink until SIGTERM."""
    from embedded.deploy import DeployedStack
    from embedded.functions import load_topology
    from embedded.gaps import Clients
    from embedded.relay import Relay
    from embedded.schedule import Scheduler

    settings = json.loads((home / "runtime.json").read_text())
    emulator_url = settings["emulator_url"]
    config = RuntimeConfig.from_json(settings["config"])
    clients = Clients(emulator_url)
    stacks = [DeployedStack.from_json(s) for s in settings["stacks"]]
    topology = load_topology(clients, stacks)
    sink = LogSink(Clients(emulator_url).client("logs"))
    extra: dict[str, Any] = {}
    server, handler = make_server("127.0.0.1", port, emulator_url, extra)
    runtime_url = f"http://127.0.0.1:{server.server_port}"
    endpoints = {"AWS_ENDPOINT_URL": emulator_url, "AWS_ENDPOINT_URL_LAMBDA": runtime_url}
    runtime = Runtime(topology, config, endpoints, sink, clients)
    handler.runtime = runtime
    relay = Relay(runtime, Clients(emulator_url), topology.queue_sources, config)
    scheduler = Scheduler(runtime, topology.schedules, config.schedule_scale)
    extra["relay"] = relay.snapshot
    extra["schedules"] = scheduler.snapshot

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.start()
    relay.start()
    scheduler.start()
    ready = home / "runtime.ready"
    ready.with_suffix(".tmp").write_text(
        json.dumps({"port": server.server_port, "pid": os.getpid()})
    )
    ready.with_suffix(".tmp").replace(ready)
    print(
        f"runtime listening on {runtime_url}; functions: {', '.join(topology.functions)}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        scheduler.stop()
        relay.stop()
        runtime.close()
        server.server_close()
        sink.close()
        print("runtime stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The embedded stack's local Lambda runtime.")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    run_daemon(args.home, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
