"""The AWS emulator process: moto in server mode on loopback, made safe for concurrent callers.

moto keeps its state in plain Python objects without locks; two concurrent DynamoDB
`UpdateItem ... ADD` calls can both read the old value and one update is lost, and
conditional writes can both succeed. DynamoDB guarantees neither happens, and the
trainer's exactly-once commits rely on it, so every request here runs under one global
lock. SQS long polls are the exception that would block everybody for up to 20 s: they
are turned into short polls repeated outside the lock until the wait time is over.

A few small patches bring moto closer to AWS where the stack depends on it:
- S3 event records carry `sequencer` (and `versionId` for versioned buckets), as AWS's do,
  so a handler can tell one upload of a key from the next; keys keep their slashes.
- moto never tries to run Lambda code itself (it would need Docker): the SQS event source
  mappings the template declares are executed by the embedded relay instead.
- DynamoDB's limits that moto lacks (batch and transaction sizes, item size as AWS counts
  it) and the storage faults of `--faults`: `embedded.storage_faults`.

Requests signed with credentials of an assumed role (the functions' execution roles) are
authorised against the role's IAM policies on the real action and resource, as AWS does;
everybody else is the account owner (see `embedded.authorization`). `POST /_itsacat/authorize`
answers the same question for the local Lambda runtime's Invoke requests.

`RequestCounter` counts the requests that Lambda functions make (their botocore user agent
carries `exec-env/AWS_Lambda_...`, as on AWS), by service and operation, with the bytes they
move; `GET /_itsacat/requests` returns the counts. Only the emulator sees every request, so
the counting lives here; the benchmarks (`itsacat.bench`) read it. Requests from the
command line and the runtime's own log shipping are not counted.

With `--state-dir`, the data (objects, items, log events, queued messages) is kept there
across restarts (`embedded.persistence`): `POST /_itsacat/restore` puts the saved data into
the stacks just created and starts saving; after that, a request that may change data
(anything but GET/HEAD and Get/List/Describe/Query/Scan-like operations) marks it for the
next snapshot, taken at most every 5 s, and a last one is taken on SIGTERM.

Run as `python -m embedded.emulator --port N --ready-file PATH`; the actual port is
written to the ready file once the server listens (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from embedded import authorization, persistence

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_LONG_POLL_STEP_S = 0.1
COUNTS_PATH = "/_itsacat/requests"
RESTORE_PATH = "/_itsacat/restore"
# Operations that only read (a conservative list: anything else counts as a change).
_READ_PREFIXES = ("Get", "List", "Describe", "Query", "Scan", "BatchGet", "Head", "Filter")
_S3_BUCKET_OPS = {"GET": "ListObjects", "PUT": "CreateBucket", "HEAD": "HeadBucket"}
_S3_KEY_OPS = {
    "GET": "GetObject",
    "PUT": "PutObject",
    "HEAD": "HeadObject",
    "DELETE": "DeleteObject",
}


def operation(environ: dict[str, Any], body: bytes | None) -> tuple[str, str]:
    """(service, operation) of an AWS request: from SigV4's credential scope, and the
    X-Amz-Target header (JSON protocols), `Action` (query protocol) or the method (S3)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = (
        auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
    )
    service = scope[3] if len(scope) > 3 else "unknown"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return service, target.rsplit(".", 1)[-1]
    if service == "s3":
        path = environ.get("PATH_INFO", "/").strip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if "delete" in environ.get("QUERY_STRING", "") and method == "POST":
            return service, "DeleteObjects"
        ops = _S3_KEY_OPS if "/" in path else _S3_BUCKET_OPS
        return service, ops.get(method, method)
    for part in (body or b"").split(b"&"):
        if part.startswith(b"Action="):
            return service, part[len(b"Action=") :].decode(errors="replace")
    return service, environ.get("REQUEST_METHOD", "?")


class RequestCounter:
    """Requests made from Lambda functions, by `service:Operation`, and their bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def add(self, environ: dict[str, Any], body: bytes | None, response_bytes: int) -> None:
        if "exec-env/AWS_Lambda" not in environ.get("HTTP_USER_AGENT", ""):
            return
        service, op = operation(environ, body)
        name = f"{service}:{op}"
        size = int(environ.get("CONTENT_LENGTH") or 0) + response_bytes
        with self.lock:
            self.requests[name] = self.requests.get(name, 0) + 1
            self.bytes[name] = self.bytes.get(name, 0) + size

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {"requests": dict(self.requests), "bytes": dict(self.bytes)}


class SerialisedApp:
    """WSGI middleware: one request at a time into moto, the response body read inside the lock."""

    def __init__(self, app: WSGIApp, state_dir: str | None = None) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counter = RequestCounter()
        self.saver = persistence.Saver(Path(state_dir), self.lock) if state_dir else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == COUNTS_PATH and environ.get("REQUEST_METHOD") == "GET":
            counts = json.dumps(self.counter.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [counts]
        if (
            environ.get("PATH_INFO") == authorization.AUTHORIZE_PATH
            and environ.get("REQUEST_METHOD") == "POST"
        ):
            return self._authorize(environ, start_response)
        if environ.get("PATH_INFO") == RESTORE_PATH and environ.get("REQUEST_METHOD") == "POST":
            return self._restore(start_response)
        if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
            return self._receive_message(environ, start_response)
        form = None
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            form = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(form)
        try:
            status, headers, body = self._call_locked(environ)
        finally:
            if self.saver is not None and _may_change_data(environ, form):
                self.saver.changed()
        self.counter.add(environ, form, len(body))
        start_response(status, headers)
        return [body]

    def _authorize(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        with self.lock:  # reads moto's IAM and STS state
            status, answer = authorization.answer(raw)
        start_response(
            "200 OK" if status == 200 else "400 Bad Request",
            [("Content-Type", "application/json")],
        )
        return [json.dumps(answer).encode()]

    def _restore(self, start_response: StartResponse) -> Iterable[bytes]:
        """Put the saved data into the stacks just created (`embedded.persistence`)."""
        try:
            restored = self.saver.restore() if self.saver is not None else None
        except persistence.SnapshotError as e:
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [json.dumps({"error": str(e)}).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"restored": restored.to_json() if restored else None}).encode()]

    def _call_locked(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        with self.lock:
            return call_wsgi(self.app, environ)

    def _receive_message(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Serve a long poll as short polls, so that the lock is never held while waiting."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b"{}"
        try:
            request = json.loads(raw or b"{}")
            wait = float(request.get("WaitTimeSeconds") or 0)
        except (ValueError, AttributeError):
            request, wait = None, 0.0
        if request is not None and wait > 0:
            request["WaitTimeSeconds"] = 0
            raw = json.dumps(request).encode()
        deadline = time.monotonic() + wait
        while True:
            attempt = dict(environ, CONTENT_LENGTH=str(len(raw)))
            attempt["wsgi.input"] = io.BytesIO(raw)
            status, headers, body = self._call_locked(attempt)
            if not status.startswith("200") or time.monotonic() >= deadline or _has_messages(body):
                if self.saver is not None and _has_messages(body):
                    self.saver.changed()  # receive counts and visibility changed
                start_response(status, headers)
                return [body]
            time.sleep(_LONG_POLL_STEP_S)


def call_wsgi(app: WSGIApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app on one request: (status, headers, the whole body)."""
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], b"".join(chunks)


def _may_change_data(environ: dict[str, Any], body: bytes | None) -> bool:
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
        return False
    return not operation(environ, body)[1].startswith(_READ_PREFIXES)


def _has_messages(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("Messages"))
    except (ValueError, AttributeError):
        return True  # not what we expected: hand it back as it is


def patch_moto() -> None:
    """Apply the fidelity patches described in the module docstring (idempotent)."""
    import moto.s3.notifications as s3_notifications
    import moto.sqs.models as sqs_models

    authorization.install()
    if getattr(s3_notifications, "_itsacat_patched", False):
        return
    original_event = s3_notifications._get_s3_event
    sequence = itertools.count(1)
    sequence_lock = threading.Lock()

    def s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> Any:
        event = original_event(event_name, bucket, key, notification_id)
        with sequence_lock:
            sequencer = f"{time.time_ns():016X}{next(sequence):08X}"
        obj = event["Records"][0]["s3"]["object"]
        obj["key"] = quote_plus(key.name, safe="/")  # S3 leaves the slashes alone
        obj["sequencer"] = sequencer
        version = getattr(key, "version_id", None)
        if version and version != "null":
            obj["versionId"] = version
        return event

    s3_notifications._get_s3_event = s3_event
    # Reads always see no mapping; writes are dropped. The relay runs the mappings.
    sqs_models.Queue.lambda_event_source_mappings = property(  # type: ignore[assignment]
        lambda self: {}, lambda self, value: None
    )
    s3_notifications._itsacat_patched = True  # type: ignore[attr-defined]


def make_app(faults: str = "", state_dir: str | None = None) -> SerialisedApp:
    """The emulator's WSGI app. `faults`: the `--faults` spec (the emulator acts out the
    storage faults, `embedded.storage_faults`); `state_dir`: where the data is kept across
    restarts (`embedded.persistence`), None for none."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from embedded.faults import FaultPlan
    from embedded.storage_faults import StorageFaults

    patch_moto()
    moto_app = DomainDispatcherApplication(create_backend_app)
    return SerialisedApp(StorageFaults(moto_app, FaultPlan.parse(faults)), state_dir)


def serve(
    host: str, port: int, ready_file: str | None, faults: str = "", state_dir: str | None = None
) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    class Handler(MotoRequestHandler):
        def setup(self) -> None:
            super().setup()
            # Without it, Nagle's algorithm and delayed ACKs add ~40 ms to small requests.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one line per request would dwarf everything else in the log

    # AWS's managed policies exist in every account (SAM attaches AWSLambdaBasicExecutionRole
    # to the roles it generates); moto loads them only when asked.
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    app = make_app(faults, state_dir)
    server = make_server(host, port, app, threaded=True, request_handler=Handler)
    os.environ["MOTO_PORT"] = str(server.server_port)  # moto builds some URLs from it
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"port": server.server_port, "pid": os.getpid()}, f)
        os.replace(tmp, ready_file)
    print(f"emulator listening on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()
    if app.saver is not None:
        app.saver.close()  # stopped (SIGTERM): the last snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The embedded stack's AWS emulator (moto).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--faults", default="", help="the fault spec of `itsacat up --faults`")
    parser.add_argument("--state-dir", help="keep the data here across restarts")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.ready_file, args.faults, args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
