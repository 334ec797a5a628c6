"""Warm worker processes, one pool per function: where handlers actually run.

Lambda keeps an execution environment warm between invocations: the handler module is
imported once, and module-level state (clients, cached training data) survives. A worker
here is that environment: a process running AWS's runtime interface client
(`python -S -m awslambdaric HANDLER`) against its own Runtime API (`embedded.runtime_api`),
with what Lambda gives a function and nothing else: its code package as the task root, its
layers, the runtime's own packages (`embedded.lambda_files`), the function's environment and
its execution role's credentials. `-S` keeps the project's virtualenv off `sys.path`, so a
package missing from the code or the layers fails to import as it would on AWS.

A pool grows on demand up to its size, hands out the most recently used idle worker first
(its caches are hottest), and replaces a worker that timed out or died.

A worker may use as much memory as its function's `MemorySize`, as on Lambda: `MemoryGuard`
reads the resident memory of every busy worker every few milliseconds and kills one that
has gone over; its invocation then fails with `Runtime.OutOfMemory`. (Lambda counts the
whole environment's memory; a handler's own child processes are not counted here.)
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from embedded.functions import FunctionSpec
from embedded.logsink import LogSink, stream_name
from embedded.runtime_api import ClientGone, Invocation, RuntimeAPI

# Lambda gives a function's init (imports, module-level setup) its own limit of 10 s; the
# invocation's timeout starts after it.
INIT_TIMEOUT_S = 10.0
_LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


class WorkerTimedOut(Exception):
    """The handler ran past the function's timeout (or init past its limit); it was killed."""


class WorkerDied(Exception):
    """The worker process exited in the middle of an invocation (`out_of_memory`: killed
    for going over its function's memory)."""

    def __init__(self, status: str, out_of_memory: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.out_of_memory = out_of_memory


# How Lambda's runtime (Go) names the signal a runtime died of: "signal: killed".
_SIGNAL_WORDS = {
    "SIGKILL": "killed",
    "SIGTERM": "terminated",
    "SIGSEGV": "segmentation fault",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
}
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int:
    """A process's resident memory (RSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class MemoryGuard:
    """Kills busy workers that use more memory than their function has (one thread for all)."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self._busy: dict[int, tuple[Worker, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def watch(self, worker: Worker) -> None:
        with self._lock:
            self._busy[id(worker)] = (worker, worker.spec.memory_mb * 1024 * 1024)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memory", daemon=True)
                self._thread.start()
            self._wake.notify()

    def unwatch(self, worker: Worker) -> None:
        with self._lock:
            self._busy.pop(id(worker), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._busy:
                    self._wake.wait()
                busy = list(self._busy.values())
            for worker, limit in busy:
                if resident_bytes(worker.process.pid) > limit:
                    worker.kill_for_memory()
            time.sleep(self.PERIOD_S)


MEMORY_GUARD = MemoryGuard()


@dataclass(frozen=True)
class Filesystem:
    """What a function's environment holds: Lambda's /var/task, /opt and /var/runtime."""

    task_root: str
    layer_roots: tuple[str, ...]
    runtime_root: str

    def python_path(self) -> list[str]:
        """sys.path as Lambda's Python runtime orders it: code, layers, then the runtime's."""
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        paths = [self.task_root]
        for root in self.layer_roots:
            paths += [f"{root}/python/lib/{version}/site-packages", f"{root}/python"]
        return [*paths, self.runtime_root]


@dataclass(frozen=True)
class WorkerResult:
    ok: bool
    payload: bytes
    duration_ms: float


Credentials = Callable[[FunctionSpec], dict[str, str]]


def worker_environment(
    spec: FunctionSpec,
    files: Filesystem,
    stream: str,
    endpoints: dict[str, str],
    credentials: dict[str, str],
    runtime_api: str,
    host: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker: the function's own variables and what Lambda adds
    (`host`: what its host sets, e.g. an OpenBLAS kernel under `hosts=mixed`)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": os.pathsep.join(files.python_path()),
        "LAMBDA_TASK_ROOT": files.task_root,
        "LAMBDA_RUNTIME_DIR": files.runtime_root,
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "_HANDLER": spec.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": spec.log_group,
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        **credentials,
        **endpoints,
    }
    # One BLAS thread per worker: a Lambda environment of this size has about one vCPU per
    # 1,769 MB, and several workers each spinning up OpenBLAS threads on a small machine
    # oversubscribe it (measured: a 4-row block's product took 20 ms with one thread and
    # 300-450 ms with two, four workers at once on two cores).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = os.environ.get(name, "1")
    env.update(host or {})
    if spec.log_format == "JSON":
        env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
    env.update(spec.environment)
    return env


class Worker:
    """One warm worker process, its Runtime API, and the pipe of its output."""

    def __init__(
        self,
        spec: FunctionSpec,
        files: Filesystem,
        endpoints: dict[str, str],
        credentials: dict[str, str],
        sink: LogSink,
        host: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.host = host or {}
        self.out_of_memory = False
        self.stream = stream_name()
        self.api = RuntimeAPI()
        self.platform_lines = _LOG_LEVELS.get(spec.system_log_level, 20) <= 20
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-m", "awslambdaric", spec.handler],
                env=worker_environment(
                    spec, files, self.stream, endpoints, credentials, self.api.address, host
                ),
                cwd=files.task_root,  # Lambda's working directory is the task root
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self.api.close()
            raise
        # (not Linux 5.3 or newer: a death before connecting is found at the init's limit)
        with contextlib.suppress(AttributeError, OSError):
            self.api.pidfd = os.pidfd_open(self.process.pid)
        assert self.process.stdout is not None
        self._out = self.process.stdout.fileno()
        os.set_blocking(self._out, False)
        self._out_lock = threading.Lock()
        self._pending_line = b""
        self._initialised = False
        threading.Thread(target=self._forward_output, name=f"log-{spec.name}", daemon=True).start()

    # ------------------------------------------------------------------ output

    def _forward_output(self) -> None:
        """Each line the worker prints becomes a log event, as Lambda ships stdout."""
        poller = select.poll()
        poller.register(self._out, select.POLLIN)
        while True:
            poller.poll()
            if not self.drain():
                return

    def drain(self) -> bool:
        """Forward what the worker has written so far; False once its output is closed."""
        with self._out_lock:
            chunks = []
            open_ = True
            while True:
                try:
                    chunk = os.read(self._out, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    open_ = False
                    break
                chunks.append(chunk)
            if not chunks and open_:
                return True
            data = self._pending_line + b"".join(chunks)
            *lines, self._pending_line = data.split(b"\n")
            if not open_ and self._pending_line:
                lines.append(self._pending_line)
                self._pending_line = b""
            if lines:
                self.sink.emit_lines(
                    self.spec.log_group,
                    self.stream,
                    [line.decode(errors="replace") for line in lines],
                )
            return open_

    # ------------------------------------------------------------------ invocations

    def call(self, invocation: Invocation, timeout_s: float, fault: str | None) -> WorkerResult:
        """Run one invocation; raises WorkerTimedOut or WorkerDied.

        `fault` is an injected one: `crash_before` kills the worker before the handler runs,
        `crash_after` once it has answered, `timeout` holds the event back until the deadline.
        """
        try:
            if not self._initialised:
                # Lambda gives the init its own limit; the invocation's clock starts after it.
                began = time.monotonic()
                state = self.api.next_request(began + INIT_TIMEOUT_S)
                self._initialised = True
                invocation.deadline_ms += int((time.monotonic() - began) * 1000)
                if isinstance(state, bytes):
                    # The handler could not be loaded: the invocation fails with the init
                    # error, and, as on Lambda, the next one starts a fresh environment.
                    self._finish_process()
                    return WorkerResult(False, state, 0.0)
            else:
                self.api.next_request(time.monotonic() + INIT_TIMEOUT_S)
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut() from None
        except ClientGone:
            raise WorkerDied(self._finish_process()) from None
        if fault == "crash_before":
            self.kill()
            raise WorkerDied(self._finish_process())
        if self.platform_lines:
            self.sink.emit(
                self.spec.log_group,
                self.stream,
                f"START RequestId: {invocation.request_id} Version: $LATEST",
            )
        started = time.monotonic()
        deadline = started + max(timeout_s, 0.0)
        MEMORY_GUARD.watch(self)
        try:
            if fault == "timeout":
                time.sleep(max(timeout_s, 0.0))
                raise TimeoutError()
            self.api.send_event(invocation)
            ok, body = self.api.result(invocation.request_id, deadline)
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut() from None
        except ClientGone:
            raise WorkerDied(self._finish_process(), self.out_of_memory) from None
        finally:
            MEMORY_GUARD.unwatch(self)
        duration_ms = (time.monotonic() - started) * 1000
        if fault == "crash_after":
            self.kill()
            raise WorkerDied(self._finish_process())
        self.drain()  # the handler's output, before Lambda's END line
        if self.platform_lines:
            request_id = invocation.request_id
            self.sink.emit_lines(
                self.spec.log_group,
                self.stream,
                [
                    f"END RequestId: {request_id}",
                    f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                    f"Billed Duration: {int(duration_ms) + 1} ms\t"
                    f"Memory Size: {self.spec.memory_mb} MB\t"
                    f"Max Memory Used: {self.max_memory_mb()} MB",
                ],
            )
        return WorkerResult(ok, body, duration_ms)

    def _finish_process(self) -> str:
        """Wait for the process to end (it is ending); how it ended, as Lambda says it."""
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._close()
        if code < 0:
            name = signal.Signals(-code).name
            return f"signal: {_SIGNAL_WORDS.get(name, name.lower().removeprefix('sig'))}"
        return f"exit status {code}"

    def max_memory_mb(self) -> int:
        """The process's peak resident memory (VmHWM), as Lambda's REPORT line gives it."""
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_for_memory(self) -> None:
        """Over its memory: killed at once, as Lambda does (the caller sees it die)."""
        self.out_of_memory = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._close()

    def _close(self) -> None:
        self.api.close()
        if self.api.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.api.pidfd)
            self.api.pidfd = None
        self.drain()  # its last lines reach the sink


class WorkerPool:
    """Up to `size` warm workers of one function."""

    def __init__(
        self,
        spec: FunctionSpec,
        files: Filesystem,
        size: int,
        endpoints: dict[str, str],
        credentials: Credentials,
        sink: LogSink,
        host: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.spec = spec
        self.files = files
        self.host = host  # the environment of a new worker's host
        self.hosts: dict[str, int] = {}  # workers started, by host (`hosts=mixed`)
        self.size = max(1, size)
        self.endpoints = endpoints
        self.credentials = credentials
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
                    self._count -= 1  # it exited while idle
                    self._all.discard(worker)
                    worker.kill()
                if self._count < self.size:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        host = self.host()
        try:
            worker = Worker(
                self.spec,
                self.files,
                self.endpoints,
                self.credentials(self.spec),
                self.sink,
                host,
            )
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
            if host:
                label = "/".join(f"{k}={v}" for k, v in sorted(host.items()))
                self.hosts[label] = self.hosts.get(label, 0) + 1
        self.spawned += 1
        return worker

    def release(self, worker: Worker, healthy: bool = True) -> None:
        """Give a worker back; `healthy`: it has just answered and may serve again."""
        with self._cond:
            if healthy and not self._closed and worker.alive:
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
