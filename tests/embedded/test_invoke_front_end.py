"""The runtime's HTTP front end parses requests itself: malformed ones get clean answers."""

import socket
import threading
from collections.abc import Iterator

import pytest

from embedded.invoke_api import make_server


@pytest.fixture
def front_end() -> Iterator[int]:
    server, _ = make_server("127.0.0.1", 0, "http://127.0.0.1:9")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_bad_request_line_gets_a_complete_400(front_end: int) -> None:
    out = _exchange(front_end, b"GARBAGE\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    assert len(body) == length > 0 and b"Bad request line" in body


def test_an_empty_line_or_cut_headers_close_without_an_answer(front_end: int) -> None:
    assert _exchange(front_end, b"\r\n") == b""
    assert _exchange(front_end, b"GET /itsacat/health HTTP/1.1\r\nHost: x\r\n") == b""


def test_a_well_formed_request_still_works(front_end: int) -> None:
    out = _exchange(
        front_end, b"GET /itsacat/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b'{"ok": true}')
