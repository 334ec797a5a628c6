"""Warm worker processes, one pool per function: where handlers actually run.

Lambda keeps an execution environment warm between invocations: the handler module is
imported once, and module-level state (clients, cached training data) survives. A worker
here is that environment: a child process (`embedded.bootstrap`) that imports the handler
once and then serves one invocation at a time over a pipe. A pool grows on demand up to its
size, hands out the most recently used idle worker first (its caches are hottest), and
replaces a worker that timed out or died. A worker whose pipe closes exits on its own, so
none outlives the runtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedded.functions import FunctionSpec
from embedded.logsink import LogSink, stream_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# Lambda gives a function's init (imports, module-level setup) its own limit of 10 s; the
# invocation's timeout starts after it.
INIT_TIMEOUT_S = 10.0
# A pipe this large carries a layer's neuron request in one write and one read (a pipe's
# size counts against the user's pipe budget, 64 MB by default: 256 KB leaves room).
PIPE_BYTES = 1 << 18
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class WorkerTimedOut(Exception):
    """The handler ran past the function's timeout; the worker was killed."""


class WorkerDied(Exception):
    """The worker process exited in the middle of an invocation."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class WorkerResult:
    ok: bool
    payload: bytes
    duration_ms: float


def worker_environment(
    spec: FunctionSpec, stream: str, endpoints: dict[str, str]
) -> dict[str, str]:
    """The environment of a worker: the function's own variables and what Lambda adds."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *spec.code_dirs]),
        "LAMBDA_TASK_ROOT": spec.code_dirs[0] if spec.code_dirs else str(PROJECT_ROOT),
        "_HANDLER": spec.handler,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": spec.log_group,
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **endpoints,
    }
    # One BLAS thread per worker unless the runtime's environment says otherwise: a Lambda
    # environment has about one vCPU, and several workers each spinning up OpenBLAS threads
    # on a small machine oversubscribe it (measured: a 4-row block's product took 20 ms with
    # one thread and 300-450 ms with two, four workers at once on two cores).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = os.environ.get(name, "1")
    if spec.log_format == "JSON":
        env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
    env["_ITSACAT_SYSTEM_LOG_LEVEL"] = spec.system_log_level  # read by embedded.bootstrap
    env.update(spec.environment)
    return env


class Worker:
    """One warm worker process and the pipes to it."""

    def __init__(self, spec: FunctionSpec, endpoints: dict[str, str], sink: LogSink) -> None:
        self.spec = spec
        self.stream = stream_name()
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "embedded.bootstrap",
                    str(request_read),
                    str(response_write),
                ],
                pass_fds=(request_read, response_write),
                env=worker_environment(spec, self.stream, endpoints),
                # The source tree, not the CodeUri directory: `python -m` puts the working
                # directory first on sys.path, and a stale build/functions copy of the
                # handlers there would shadow the source the embedded stack must run.
                cwd=str(PROJECT_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            for fd in (request_read, request_write, response_read, response_write):
                os.close(fd)
            raise
        os.close(request_read)
        os.close(response_write)
        for fd in (request_write, response_read):
            # (not Linux, or over /proc/sys/fs/pipe-max-size: the frames take more calls)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
        self._requests = request_write
        self._responses = response_read
        self._closed = False
        self._initialised = False
        self._poller: select.poll | None = None
        self._reader = threading.Thread(
            target=self._forward_output, args=(sink,), name=f"log-{spec.name}", daemon=True
        )
        self._reader.start()

    def _forward_output(self, sink: LogSink) -> None:
        """Each line the worker prints becomes a log event (read in chunks: one wake-up
        forwards all the lines of an invocation that arrived together)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                sink.emit_lines(
                    self.spec.log_group,
                    self.stream,
                    [line.decode(errors="replace") for line in lines],
                )
        if pending:
            sink.emit(self.spec.log_group, self.stream, pending.decode(errors="replace"))

    def call(self, request: dict[str, Any], timeout_s: float) -> WorkerResult:
        """Run one invocation; raises WorkerTimedOut or WorkerDied."""
        try:
            if not self._initialised:
                began = time.monotonic()
                if not self._ready(INIT_TIMEOUT_S):
                    self.kill()
                    raise WorkerTimedOut()
                self._receive()  # the bootstrap's "ready"
                self._initialised = True
                init_ms = int((time.monotonic() - began) * 1000)
                request = {**request, "deadline_ms": request["deadline_ms"] + init_ms}
            self._send(request)
            if not self._ready(max(timeout_s, 0.0)):
                self.kill()
                raise WorkerTimedOut()
            response = self._receive()
        except (EOFError, OSError):
            raise WorkerDied(self._exit_status()) from None
        return WorkerResult(response["ok"], response["payload"], response["duration_ms"])

    # The frames are those of multiprocessing.connection.Connection (a 4-byte big-endian
    # length, or -1 and an 8-byte one, then a pickle), which the bootstrap uses; here each is
    # written with one write(2) and read with as few read(2) as it takes. Every call that
    # blocks lets another of the runtime's threads take the interpreter, so fewer of them
    # mean fewer thread switches per invocation.

    def _send(self, obj: Any) -> None:
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        n = len(data)
        head = struct.pack("!i", n) if n < 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        view = memoryview(head + data)
        while view:
            view = view[os.write(self._requests, view) :]

    def _receive(self) -> Any:
        buf = self._read(PIPE_BYTES)
        while len(buf) < 4:
            buf += self._read(PIPE_BYTES)
        (n,) = struct.unpack("!i", buf[:4])
        start = 4
        if n == -1:
            while len(buf) < 12:
                buf += self._read(PIPE_BYTES)
            (n,) = struct.unpack("!Q", buf[4:12])
            start = 12
        parts = [buf]
        have = len(buf) - start
        while have < n:
            chunk = self._read(max(PIPE_BYTES, n - have))
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts) if len(parts) > 1 else buf
        return pickle.loads(memoryview(data)[start : start + n])

    def _read(self, size: int) -> bytes:
        chunk = os.read(self._responses, size)
        if not chunk:
            raise EOFError
        return chunk

    def _ready(self, timeout_s: float) -> bool:
        """Whether a response (or EOF) arrives within `timeout_s`: one poll(2) on a poller
        kept for the worker (Connection.poll builds a selector on every call)."""
        if self._closed:
            raise OSError("the worker's pipe is closed")
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._responses, select.POLLIN)
        events = self._poller.poll(int(timeout_s * 1000) + 1)
        if any(flags & select.POLLNVAL for _, flags in events):
            raise OSError("the worker's pipe is closed")
        return bool(events)

    def _exit_status(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            return "signal: killed"
        if code < 0:
            return f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
        return f"exit status {code}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self._closed:
            return
        self._closed = True
        for fd in (self._requests, self._responses):
            os.close(fd)
        self._reader.join(timeout=1)  # lets the last lines reach the sink


class WorkerPool:
    """Up to `size` warm workers of one function."""

    def __init__(
        self, spec: FunctionSpec, size: int, endpoints: dict[str, str], sink: LogSink
    ) -> None:
        self.spec = spec
        self.size = max(1, size)
        self.endpoints = endpoints
        self.sink = sink
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()
        self.spawned = 0

    @property
    def workers(self) -> int:
        return self._count

    def acquire(self, wait_s: float) -> Worker | None:
        """An idle worker, a new one if the pool may grow, or None after `wait_s`."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                if self._closed:
                    return None
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive:
                        return worker
                    self._count -= 1  # it exited while idle: let its pipes go
                    self._all.discard(worker)
                    worker.kill()
                if self._count < self.size:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        try:
            worker = Worker(self.spec, self.endpoints, self.sink)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        self.spawned += 1
        return worker

    def release(self, worker: Worker, healthy: bool = True) -> None:
        """Give a worker back; `healthy`: it has just answered (a dead idle worker is found
        out by `acquire`)."""
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
                self._all.discard(worker)
                worker.kill()
            self._cond.notify()

    def close(self) -> None:
        """Kill every worker, busy ones included (their callers see them die)."""
        with self._cond:
            self._closed = True
            workers, self._all, self._idle = list(self._all), set(), []
            self._cond.notify_all()
        for worker in workers:
            worker.kill()
