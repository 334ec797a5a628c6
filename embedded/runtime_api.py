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

`RuntimeAPI` serves those on a loopback port of its own for one worker
(AWS_LAMBDA_RUNTIME_API points there). It has no thread: a worker serves one invocation at a
time, so the thread that drives an invocation also answers the client's requests on the
connection, which spares two thread switches per invocation. Handler loading, the context
object and the error shapes are then AWS's code, not ours.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass

_PREFIX = "/2018-06-01/runtime/"
_NEXT = _PREFIX + "invocation/next"
_INVOCATION = _PREFIX + "invocation/"
_INIT_ERROR = _PREFIX + "init/error"
_MAX_HEAD = 65536
_MAX_HEADERS = 100
_RECV_BYTES = 1 << 18
_ACCEPTED = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
    b'Content-Length: 15\r\n\r\n{"status":"OK"}'
)


class ClientGone(Exception):
    """The runtime client closed its connection (its process exited or was killed)."""


@dataclass
class Invocation:
    """One event handed to a worker."""

    request_id: str
    payload: bytes
    deadline_ms: int
    invoked_arn: str
    trace_id: str


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes


class RuntimeAPI:
    """The Runtime API for one worker: a listening socket and, once the client connects,
    its connection. Every method blocks at most until the deadline it is given."""

    def __init__(self) -> None:
        self.pidfd: int | None = None  # the client process's pidfd, once it is started
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._connection: socket.socket | None = None
        self._buffer = b""
        self._waiting_for_event = False  # a `GET /next` has been read and not yet answered

    def next_request(self, deadline: float) -> str | bytes:
        """Serve the client until it asks for an event: "next", or the body of an init
        error. Raises ClientGone, or TimeoutError past `deadline` (time.monotonic())."""
        if self._waiting_for_event:
            return "next"
        while True:
            request = self._read(deadline)
            if request.method == "GET" and request.path == _NEXT:
                self._waiting_for_event = True
                return "next"
            self._send(_ACCEPTED if request.method == "POST" else _status(404))
            if request.path == _INIT_ERROR:
                return request.body

    def send_event(self, invocation: Invocation) -> None:
        """Answer the waiting `GET /next` with `invocation`."""
        assert self._waiting_for_event and self._connection is not None
        self._waiting_for_event = False
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
        self._send(head.encode("latin-1") + invocation.payload)

    def result(self, request_id: str, deadline: float) -> tuple[bool, bytes]:
        """The client's answer to `request_id`: (True, response) or (False, error payload).
        Raises ClientGone, or TimeoutError past `deadline`."""
        expected = f"{_INVOCATION}{request_id}/"
        while True:
            request = self._read(deadline)
            if request.method == "POST" and request.path.startswith(expected):
                kind = request.path[len(expected) :]
                if kind in ("response", "error"):
                    self._send(_ACCEPTED)
                    return kind == "response", request.body
            self._send(_status(400 if request.method == "POST" else 404))

    def close(self) -> None:
        for sock in (self._connection, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # ------------------------------------------------------------------ HTTP

    def _send(self, data: bytes) -> None:
        assert self._connection is not None
        try:
            self._connection.sendall(data)
        except OSError as e:
            raise ClientGone() from e

    def _read(self, deadline: float) -> Request:
        """One request, read with as few recv(2) as it takes (usually one): the client
        writes a request's line, headers and body together."""
        if self._connection is None:
            self._accept(deadline)
        connection = self._connection
        assert connection is not None
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        buffer = self._buffer
        try:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if len(buffer) > _MAX_HEAD:
                    raise ClientGone()
                buffer += self._recv(connection)
            head = buffer[:end].decode("latin-1").split("\r\n")
            parts = head[0].split()
            if len(parts) != 3 or len(head) > _MAX_HEADERS:
                raise ClientGone()
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            start = end + 4
            while len(buffer) - start < length:
                buffer += self._recv(connection)
        except TimeoutError:
            self._buffer = buffer
            raise
        except (OSError, ValueError) as e:
            raise ClientGone() from e
        self._buffer = buffer[start + length :]
        return Request(parts[0], parts[1], buffer[start : start + length])

    @staticmethod
    def _recv(connection: socket.socket) -> bytes:
        chunk = connection.recv(_RECV_BYTES)
        if not chunk:
            raise ClientGone()
        return chunk

    def _accept(self, deadline: float) -> None:
        """The client's connection; ClientGone if its process exits first (a pidfd says so
        at once, rather than at the end of the init's time limit)."""
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        events = poller.poll(max(int((deadline - time.monotonic()) * 1000), 1))
        if not events:
            raise TimeoutError()
        if any(fd == self.pidfd for fd, _ in events):
            raise ClientGone()
        try:
            connection, _ = self._listener.accept()
        except OSError as e:
            raise ClientGone() from e
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection = connection


def _status(code: int) -> bytes:
    reason = {400: "Bad Request", 404: "Not Found"}.get(code, "")
    body = b'{"errorType":"InvalidRequest"}'
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
