"""`Functions.call_many` turns each Invoke answer into bytes or the right domain error."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from state.errors import NotFound, StateError, Throttled
from state.functions import FunctionFailed, Functions

ANSWERS = {
    b"ok": (200, {}, b'{"fine": 1}'),
    b"raised": (
        200,
        {"X-Amz-Function-Error": "Unhandled"},
        json.dumps({"errorType": "ValueError", "errorMessage": "bad shape"}).encode(),
    ),
    b"throttled": (
        429,
        {"x-amzn-ErrorType": "TooManyRequestsException:"},
        b'{"Type": "User", "message": "Rate Exceeded."}',
    ),
    b"missing": (
        404,
        {"x-amzn-ErrorType": "ResourceNotFoundException"},
        b'{"Type": "User", "message": "Function not found: x"}',
    ),
    b"broken": (500, {}, b"not json"),
}


class _Lambda(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/2015-03-31/functions/itsacat-neuron/invocations"
        assert self.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
        status, headers, out = ANSWERS[body]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def functions() -> Iterator[Functions]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lambda)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = boto3.client(
        "lambda",
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region_name="eu-west-1",
        aws_access_key_id="AKID",
        aws_secret_access_key="secret",
    )
    yield Functions(client)
    server.shutdown()
    server.server_close()


def test_each_answer_becomes_bytes_or_its_domain_error(functions: Functions) -> None:
    out = functions.call_many("itsacat-neuron", list(ANSWERS), window=3)
    ok, raised, throttled, missing, broken = out
    assert ok == b'{"fine": 1}'
    assert isinstance(raised, FunctionFailed) and "ValueError: bad shape" in str(raised)
    assert isinstance(throttled, Throttled) and "Rate Exceeded." in str(throttled)
    assert isinstance(missing, NotFound) and "ResourceNotFoundException" in str(missing)
    assert type(broken) is StateError and "500" in str(broken)


def test_an_unreachable_endpoint_is_a_state_error() -> None:
    client = boto3.client(
        "lambda",
        endpoint_url="http://127.0.0.1:9",
        region_name="eu-west-1",
        aws_access_key_id="AKID",
        aws_secret_access_key="secret",
    )
    (out,) = Functions(client).call_many("itsacat-neuron", [b"ok"])
    assert type(out) is StateError and "invoke itsacat-neuron" in str(out)
