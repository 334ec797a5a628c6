"""The Lambda Runtime API of one execution environment, as AWS's runtime interface emulator does.

Each worker process runs AWS's own runtime interface client (`python -m awslambdaric HANDLER`),
which loads the handler and then loops over the documented Runtime API
(https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html):

- `GET  /2018-06-01/runtime/invocation/next`: blocks until there is an event; the answer
  carries it with `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`
  and `-Trace-Id` (the client never posts its answer without the trace id);
- `POST /2018-06-01/runtime/invocation/{id}/response` or `/{id}/error`;
- `POST /2018-06-01/runtime/init/error` when the handler cannot be loaded (the client then
  exits).

`RuntimeAPI` serves those on its own loopback port for one worker (AWS_LAMBDA_RUNTIME_API
points there), one connection at a time, and hands each invocation's outcome to the caller
through an `Invocation`. Handler loading, the context object and the error shapes are then
AWS's code, not ours.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from dataclasses import dataclass, field

_PREFIX = "/2018-06-01/runtime/"
_NEXT = _PREFIX + "invocation/next"
_INIT_ERROR = _PREFIX + "init/error"
_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100


@dataclass
class Invocation:
    """One event handed to a worker, and what became of it."""

    request_id: str
    payload: bytes
    deadline_ms: int
    invoked_arn: str
    trace_id: str
    # "response", "error" (the handler raised), "init_error", or "died" (set by the worker)
    outcome: str | None = None
    body: bytes = b""
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, outcome: str, body: bytes) -> None:
        if not self.done.is_set():
            self.outcome, self.body = outcome, body
            self.done.set()


class RuntimeAPI:
    """The Runtime API for one worker: a listening socket and a thread that serves it."""

    def __init__(self, name: str) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._pending: queue.SimpleQueue[Invocation | None] = queue.SimpleQueue()
        self._current: Invocation | None = None
        self._lock = threading.Lock()
        self.polled = threading.Event()  # the client asked for its first event: init is over
        self.init_error: bytes | None = None
        self.changed = threading.Event()  # set on the first poll and on an init error
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"runtime-api-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side

    def deliver(self, invocation: Invocation) -> None:
        """Hand `invocation` to the client's (next) `GET /next`."""
        self._pending.put(invocation)

    def current(self) -> Invocation | None:
        with self._lock:
            return self._current

    def close(self) -> None:
        """Stop serving; a `GET /next` that waits is answered by closing its connection."""
        self._closed = True
        self._pending.put(None)
        with contextlib.suppress(OSError):
            self._listener.close()

    # ------------------------------------------------------------------ the server

    def _serve(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._serve_connection(connection)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    connection.close()

    def _serve_connection(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb", buffering=1 << 19)
        while not self._closed:
            line = reader.readline(_MAX_HEADER_LINE + 1)
            if not line:
                return
            parts = line.decode("latin-1").split()
            if len(parts) != 3:
                return
            method, path, _ = parts
            headers: dict[str, str] = {}
            while True:
                raw = reader.readline(_MAX_HEADER_LINE + 1)
                if not raw or len(headers) > _MAX_HEADERS:
                    return
                if raw in (b"\r\n", b"\n"):
                    break
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = reader.read(length) if length else b""
            if method == "GET" and path == _NEXT:
                invocation = self._next()
                if invocation is None:
                    return
                connection.sendall(_event_response(invocation))
            elif method == "POST" and path == _INIT_ERROR:
                self.init_error = body
                self.changed.set()
                connection.sendall(_accepted())
            elif method == "POST" and path.startswith(_PREFIX + "invocation/"):
                request_id, _, kind = path[len(_PREFIX + "invocation/") :].partition("/")
                connection.sendall(self._answer(request_id, kind, body))
            else:
                connection.sendall(_status(404, b'{"errorType":"InvalidRequest"}'))

    def _next(self) -> Invocation | None:
        if not self.polled.is_set():
            self.polled.set()
            self.changed.set()
        invocation = self._pending.get()
        with self._lock:
            self._current = invocation
        return invocation

    def _answer(self, request_id: str, kind: str, body: bytes) -> bytes:
        with self._lock:
            invocation = self._current
        if invocation is None or invocation.request_id != request_id:
            message = json.dumps({"errorMessage": f"unknown request id {request_id}"}).encode()
            return _status(400, message)
        if kind == "response":
            invocation.finish("response", body)
        elif kind == "error":
            invocation.finish("error", body)
        else:
            return _status(404, b'{"errorType":"InvalidRequest"}')
        with self._lock:
            self._current = None
        return _accepted()


def _event_response(invocation: Invocation) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(invocation.payload)}\r\n"
        f"Lambda-Runtime-Aws-Request-Id: {invocation.request_id}\r\n"
        f"Lambda-Runtime-Deadline-Ms: {invocation.deadline_ms}\r\n"
        f"Lambda-Runtime-Invoked-Function-Arn: {invocation.invoked_arn}\r\n"
        f"Lambda-Runtime-Trace-Id: {invocation.trace_id}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + invocation.payload


def _status(code: int, body: bytes) -> bytes:
    reason = {202: "Accepted", 400: "Bad Request", 404: "Not Found"}.get(code, "")
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _accepted() -> bytes:
    return _status(202, b'{"status":"OK"}')
