"""The Lambda Invoke API on loopback, in front of the local runtime.

A plain `boto3.client("lambda")` with `AWS_ENDPOINT_URL_LAMBDA` set invokes local functions
here (`RequestResponse`, `Event`, `DryRun`); any other Lambda API call (`list-functions`,
`get-function-configuration`, ...) is passed on to the emulator, which holds the functions'
definitions. An Invoke signed with a function's execution-role credentials is authorised
(`lambda:InvokeFunction` on the target's ARN) against that role's policies, as on AWS.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from embedded.authorization import request_authorization
from embedded.invocations import (
    FunctionNotFound,
    PayloadTooLarge,
    Runtime,
    Throttled,
    function_arn,
)

_INVOKE_PREFIX = "/2015-03-31/functions/"
_INVOKE_SUFFIX = "/invocations"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100


class _Headers(dict[str, str]):
    """Request headers by lower-case name; `get` takes any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class InvokeAuthorizer:
    """Asks the emulator whether an Invoke's credentials may invoke its function
    (`lambda:InvokeFunction` on the function's ARN), and remembers the answer for a while:
    roles do not change under a running stack, and IAM itself takes seconds to propagate."""

    TTL_S = 10.0

    def __init__(self, emulator_url: str) -> None:
        self.emulator_url = emulator_url
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str, str], tuple[float, tuple[str, str] | None]] = {}

    def refusal(
        self, authorization: str, token: str | None, function: str
    ) -> tuple[str, str] | None:
        """None when allowed; else (error code, message) as Lambda answers a refusal."""
        if "Credential=" not in authorization:
            return None  # unsigned: only our own tools send those
        key = authorization.split("Credential=", 1)[1].split("/", 1)[0]
        resource = function_arn(function)
        cache_key = (key, token or "", resource)
        now = time.monotonic()
        with self._lock:
            cached = self._answers.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = request_authorization(
            self.emulator_url, key, token, "lambda:InvokeFunction", resource
        )
        refused = (
            None
            if answer.get("allowed")
            else (str(answer.get("code") or "AccessDeniedException"), str(answer["message"]))
        )
        with self._lock:
            self._answers[cache_key] = (now + self.TTL_S, refused)
        return refused


class InvokeHandler(BaseHTTPRequestHandler):
    """The Lambda Invoke API (HTTP/1.1, keep-alive); other Lambda calls go to the emulator."""

    protocol_version = "HTTP/1.1"
    # A read buffer that takes a request's line, headers and body in one recv(2) (a layer's
    # neuron requests are up to a few hundred KB).
    rbufsize = 1 << 19
    runtime: Runtime
    emulator: tuple[str, int]
    authorizer: InvokeAuthorizer
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
        refusal = self.authorizer.refusal(
            self.headers.get("Authorization", ""), self.headers.get("X-Amz-Security-Token"), name
        )
        if refusal is not None:
            self._send_error(403, *refusal)
            return
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
                Reason=e.reason,
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
            "authorizer": InvokeAuthorizer(emulator_url),
            "extra_routes": extra_routes if extra_routes is not None else {},
        },
    )
    return _Server((host, port), handler), handler
