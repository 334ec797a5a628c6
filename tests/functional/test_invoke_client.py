"""The lean Invoke client against a real HTTP server on loopback: bodies, keep-alive, retry."""

import datetime
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from botocore.credentials import Credentials

from state.invoke import InvokeClient

Reply = Callable[[bytes], bytes | None]  # request body -> raw response (None: drop the line)


@pytest.fixture
def server() -> Iterator[tuple[int, list[Reply], list[tuple[int, bytes, dict[str, str]]]]]:
    """A one-connection-at-a-time HTTP server answering with the scripted `replies`."""
    replies: list[Reply] = []
    seen: list[tuple[int, bytes, dict[str, str]]] = []  # (connection number, body, headers)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            n += 1
            f = conn.makefile("rb")
            with conn, f:
                while replies:
                    line = f.readline()
                    if not line:
                        break
                    headers = {}
                    while (h := f.readline()) not in (b"\r\n", b""):
                        k, _, v = h.decode().partition(":")
                        headers[k.strip().lower()] = v.strip()
                    body = f.read(int(headers["content-length"]))
                    seen.append((n, body, headers))
                    out = replies.pop(0)(body)
                    if out is None:
                        break  # drop the connection without answering
                    conn.sendall(out)
                    if b"Connection: close" in out:
                        break

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()[1], replies, seen
    stop.set()
    listener.close()


def _client(port: int) -> InvokeClient:
    return InvokeClient(f"http://127.0.0.1:{port}", "us-east-1", Credentials("AK", "SK", "TOK"))


def _ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_bodies_keep_alive_and_close(server) -> None:  # type: ignore[no-untyped-def]
    port, replies, seen = server
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    replies += [
        lambda b: chunked,
        lambda b: _ok(b"echo:" + b, "X-Amz-Function-Error: Unhandled\r\nConnection: close\r\n"),
        lambda b: b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}",
    ]
    c = _client(port)
    r1 = c.invoke("itsacat-neuron", b'{"a": 1}')
    assert (r1.status, r1.body) == (200, b"hello world")
    r2 = c.invoke("itsacat-neuron", b'{"b": 2}')
    assert r2.body == b'echo:{"b": 2}' and r2.headers["x-amz-function-error"] == "Unhandled"
    r3 = c.invoke("arn:aws:lambda:us-east-1:1:function:f", b"{}")
    assert r3.status == 429
    # one connection for the first two (keep-alive), a new one after "Connection: close"
    assert [n for n, _, _ in seen] == [1, 1, 2]
    _, body, headers = seen[0]
    assert body == b'{"a": 1}'
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")
    assert headers["x-amz-security-token"] == "TOK"
    assert headers["x-amz-invocation-type"] == "RequestResponse"


def test_a_dropped_keep_alive_connection_is_reopened_once(server) -> None:  # type: ignore[no-untyped-def]
    port, replies, seen = server
    replies += [lambda b: _ok(b"1"), lambda b: None, lambda b: _ok(b"2")]
    c = _client(port)
    assert c.invoke("f", b"{}").body == b"1"
    assert c.invoke("f", b"{}").body == b"2"  # the server dropped the line: sent again
    assert [n for n, _, _ in seen] == [1, 1, 2]


def test_a_fresh_connection_that_drops_is_an_error(server) -> None:  # type: ignore[no-untyped-def]
    port, replies, _ = server
    replies += [lambda b: None]
    with pytest.raises(ConnectionResetError):
        _client(port).invoke("f", b"{}")


def test_invoke_many_runs_a_window_in_parallel_and_keeps_the_order() -> None:
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.3)
            status = 500 if body == b"boom" else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = _client(server.server_address[1])
        payloads = [b"0", b"1", b"boom", b"3", b"4", b"5"]
        began = time.monotonic()
        out = c.invoke_many("f", payloads, window=3)
        took = time.monotonic() - began
        assert [(r.status, r.body) for r in out] == [  # type: ignore[union-attr]
            (200 if p != b"boom" else 500, p) for p in payloads
        ]
        assert took < 1.2  # two windows of three at once: 0.6 s, not 1.8 s one by one
        assert len(c._idle) == 3  # the connections are kept for the next window
    finally:
        server.shutdown()
        server.server_close()


def test_invoke_many_reports_each_failure_in_its_place() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out = _client(port).invoke_many("f", [b"a", b"b"], window=2)
    assert all(isinstance(r, ConnectionRefusedError) for r in out)


def test_two_part_bodies_go_out_whole_and_are_signed_as_whole(server) -> None:  # type: ignore[no-untyped-def]
    """A body may come as (a part several requests share, the rest): it is sent joined, and
    its SHA-256 (what SigV4 signs) is that of the joined bytes, the shared part hashed once."""
    import hashlib

    from state import invoke

    port, replies, seen = server
    shared = b'{"a_prev": [1, 2], '
    bodies: list[invoke.Body] = [(shared, b'"lo": 0}'), (shared, b'"lo": 1}'), b'{"lo": 2}']
    joined = [shared + b'"lo": 0}', shared + b'"lo": 1}', b'{"lo": 2}']
    replies += [lambda b: _ok(b)] * 3
    out = _client(port).invoke_many("f", bodies, window=1)
    assert [r.body for r in out] == joined  # type: ignore[union-attr]
    assert [body for _, body, _ in seen] == joined
    payloads, hashes = invoke._hashed(bodies)
    assert payloads == joined
    assert hashes == [hashlib.sha256(b).hexdigest() for b in joined]
    # the Authorization header signs that hash: the same as the signer computing it itself
    signer = invoke.Signer("us-east-1")
    creds = Credentials("AK", "SK", "TOK").get_frozen_credentials()
    args = ("POST", "h", "/p", joined[0], creds, {})
    now = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)
    assert signer.headers(*args, now) == signer.headers(*args, now, body_sha256=hashes[0])
