"""Lambda's synchronous Invoke API over plain HTTP(S), signed with SigV4: the fan-out's hot path.

A trainer makes tens of thousands of `RequestResponse` invocations per run. Through boto3,
each one costs about 1 ms of the trainer's CPU (request model, hooks, validation, response
parsing), more than the neuron's own work; this client builds the one request by hand:
the `POST /2015-03-31/functions/<name>/invocations` of the Lambda API reference, signed
with Signature Version 4 (tested to sign exactly as botocore does), over a pool of
keep-alive connections, one per request in flight (`invoke_many` keeps up to a window of
a layer's requests in flight, reading the answers in order: parallel without a thread per
request). The
endpoint, region and credentials are boto3's, so it reaches the same place as every other
client: AWS, or the embedded stack's Lambda endpoint.

It returns the status, headers and body; `state.functions` turns them into domain errors.
"""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import hmac
import http.client
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

SERVICE = "lambda"
ALGORITHM = "AWS4-HMAC-SHA256"
USER_AGENT = "itsacat-invoke/1"


# A request body, whole or in two parts: (a part that several requests of one `invoke_many`
# start with, the rest). The shared part is hashed once for all of them (SigV4 signs the
# body's SHA-256, and a hash state can be copied once it has absorbed the shared part).
Body = bytes | tuple[bytes, bytes]


class Credentials(Protocol):
    access_key: str
    secret_key: str
    token: str | None


@functools.lru_cache(maxsize=256)
def invoke_path(function: str) -> str:
    """The request path of an invocation (a name, a partial or a full ARN)."""
    return f"/2015-03-31/functions/{quote(function, safe='')}/invocations"


@functools.lru_cache(maxsize=256)
def _canonical_uri(path: str) -> str:
    return quote(path, safe="/~")


@dataclass
class Signer:
    """SigV4 for one region and service; the day's signing key is derived once."""

    region: str
    service: str = SERVICE
    _key: tuple[str, str, bytes] | None = None
    _date: tuple[int, str] = (0, "")  # the last second signed in, and its X-Amz-Date

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[:2] != (secret, day):
            k = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
            for part in (self.region, self.service, "aws4_request"):
                k = hmac.digest(k, part.encode(), "sha256")
            self._key = (secret, day, k)
        return self._key[2]

    def headers(
        self,
        method: str,
        host: str,
        path: str,
        body: bytes,
        creds: Credentials,
        extra: dict[str, str],
        now: datetime.datetime | None = None,
        body_sha256: str | None = None,
    ) -> dict[str, str]:
        """The request's headers: `extra`, plus Host, X-Amz-Date, token and Authorization.

        Every header but User-Agent is signed. The canonical URI is the path as sent,
        percent-encoded once more (what SigV4 asks of every service but S3). `body_sha256`:
        the body's hash, if the caller has it.
        """
        amz_date = self._amz_date() if now is None else now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        signed = {k.lower(): v.strip() for k, v in extra.items()}
        signed["host"] = host
        signed["x-amz-date"] = amz_date
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical = "\n".join(
            [
                method,
                _canonical_uri(path),
                "",
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                body_sha256 or hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.digest(
            self._signing_key(creds.secret_key, day), to_sign.encode(), "sha256"
        ).hex()
        out = dict(extra)
        out["X-Amz-Date"] = amz_date
        if creds.token:
            out["X-Amz-Security-Token"] = creds.token
        out["Authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return out

    def _amz_date(self) -> str:
        """X-Amz-Date of now; formatted once per second (strftime is slow)."""
        second = int(time.time())
        if self._date[0] != second:
            stamp = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._date = (second, stamp.strftime("%Y%m%dT%H%M%SZ"))
        return self._date[1]


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request out, a response back, in few calls.

    http.client parses every response's headers with the `email` package, which cost more
    of a trainer's CPU than anything else in an invocation; this reads the status line and
    headers itself (Content-Length or chunked bodies). TCP keep-alive is on, as botocore's
    Lambda client had it, so that a peer that vanished during a long invocation is noticed.
    """

    def __init__(
        self, hostname: str, port: int, https: bool, connect_s: float, read_s: float
    ) -> None:
        sock = socket.create_connection((hostname, port), timeout=connect_s)
        try:
            sock.settimeout(read_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if https:
                context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
                sock = context.wrap_socket(sock, server_hostname=hostname)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.open = True

    def close(self) -> None:
        self.open = False
        self.rfile.close()
        self.sock.close()

    def stale(self) -> bool:
        """Whether an idle connection has something to read: the server closed it, or sent
        what no request asked for. Either way it must not carry the next request."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise http.client.IncompleteRead(data, n - len(data))
        return data

    def send(self, head: bytes, body: bytes) -> None:
        self.sock.sendall(head + body)

    def receive(self) -> Response:
        status_line = self._line().split(None, 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise http.client.BadStatusLine(repr(status_line))
        status = int(status_line[1])
        headers: dict[str, str] = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = self._chunked()
        elif "content-length" in headers:
            data = self._read(int(headers["content-length"]))
        else:  # the body runs to the end of the connection
            data = self.rfile.read()
            self.open = False
        connection = headers.get("connection", "").lower()
        if connection == "close" or (status_line[0] == b"HTTP/1.0" and connection != "keep-alive"):
            self.open = False
        return Response(status, headers, data)

    def _chunked(self) -> bytes:
        parts = []
        while (size := int(self._line().split(b";")[0], 16)) > 0:
            parts.append(self._read(size))
            self._line()  # the CRLF after the chunk
        while self._line() not in (b"\r\n", b"\n"):  # trailers
            pass
        return b"".join(parts)


_MAX_LINE = 65536
CONNECT_TIMEOUT_S = 60.0  # botocore's default
MAX_IDLE = 64  # idle keep-alive connections kept (at least a window's worth)


class InvokeClient:
    """`RequestResponse` invocations over a pool of keep-alive connections."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        timeout_s: float = 900,
        user_agent: str = USER_AGENT,
    ) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an HTTP(S) endpoint: {endpoint_url!r}")
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        default_port = (self.https and self.port == 443) or (not self.https and self.port == 80)
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname  # IPv6
        self.host = host if default_port else f"{host}:{self.port}"
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable or not)
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._signer = Signer(region=region)
        self._idle: list[_Connection] = []
        self._max_idle = MAX_IDLE
        self._lock = threading.Lock()

    def _request(self, function: str, payload: bytes, payload_sha256: str | None = None) -> bytes:
        """The request line and headers, signed."""
        path = invoke_path(function)
        headers = self._signer.headers(
            "POST",
            self.host,
            path,
            payload,
            self.credentials.get_frozen_credentials(),
            {"X-Amz-Invocation-Type": "RequestResponse", "Content-Type": "application/json"},
            body_sha256=payload_sha256,
        )
        headers["User-Agent"] = self.user_agent
        headers["Content-Length"] = str(len(payload))
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        return (head + "\r\n").encode("latin-1")

    def _new(self) -> _Connection:
        return _Connection(
            self.hostname,
            self.port,
            self.https,
            min(CONNECT_TIMEOUT_S, self.timeout_s),
            self.timeout_s,
        )

    def _take(self) -> tuple[_Connection, bool]:
        """An idle keep-alive connection that is still good (True: reused), or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new(), False
            if not conn.stale():
                return conn, True
            conn.close()

    def _give(self, conn: _Connection) -> None:
        with self._lock:
            if conn.open and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def invoke_many(
        self, function: str, bodies: Sequence[Body], window: int = 32
    ) -> list[Response | Exception]:
        """Invoke once per body, at most `window` in flight, from the calling thread alone.

        Each request in flight has its own keep-alive connection; the responses are read in
        order, and each one read lets the next request go out (a sliding window): the
        invocations run in parallel without a thread per request. A request that fails gets
        its exception in its place in the result (signing errors included). A reused
        connection the server had dropped is tried once more on a fresh one, freshly signed
        (re-sending is safe for what this client is for: neuron invocations are pure). A
        connection goes back to the pool only after a whole response was read from it.
        """
        payloads, hashes = _hashed(bodies)
        window = max(1, window)
        self._max_idle = max(MAX_IDLE, window)
        results: list[Response | Exception | None] = [None] * len(payloads)
        in_flight: collections.deque[tuple[int, _Connection, bool]] = collections.deque()
        try:
            for i in range(len(payloads) + 1):
                while in_flight and (len(in_flight) >= window or i == len(payloads)):
                    j, busy, reused = in_flight.popleft()
                    try:
                        results[j] = busy.receive()
                    except Exception as e:
                        busy.close()
                        results[j] = self._retry(function, payloads[j], e) if reused else e
                        continue
                    self._give(busy)
                if i == len(payloads):
                    break
                conn = None
                try:
                    head = self._request(function, payloads[i], hashes[i])
                    conn, reused = self._take()
                    conn.send(head, payloads[i])
                except Exception as e:
                    if conn is not None:
                        conn.close()
                        if reused:
                            results[i] = self._retry(function, payloads[i], e)
                            continue
                    results[i] = e
                    continue
                in_flight.append((i, conn, reused))
        finally:
            for _, busy, _ in in_flight:  # not read (an exception went through): unusable
                busy.close()
        return [r if r is not None else RuntimeError("not sent") for r in results]

    def _retry(self, function: str, payload: bytes, first: Exception) -> Response | Exception:
        if not isinstance(first, ConnectionResetError | BrokenPipeError):
            return first
        conn = None
        try:
            conn = self._new()
            conn.send(self._request(function, payload), payload)
            response = conn.receive()
        except Exception as e:
            if conn is not None:
                conn.close()
            return e
        self._give(conn)
        return response

    def invoke(self, function: str, payload: Body) -> Response:
        """One invocation; raises what failed."""
        out = self.invoke_many(function, [payload], 1)[0]
        if isinstance(out, Exception):
            raise out
        return out


def _hashed(bodies: Sequence[Body]) -> tuple[list[bytes], list[str]]:
    """Each body whole, and its SHA-256 in hex; a shared first part is hashed once."""
    states: dict[int, Any] = {}  # id of a shared part -> the hash state after it
    payloads, hashes = [], []
    for body in bodies:
        if isinstance(body, bytes):
            payloads.append(body)
            hashes.append(hashlib.sha256(body).hexdigest())
            continue
        shared, own = body
        state = states.get(id(shared))
        if state is None:
            state = states[id(shared)] = hashlib.sha256(shared)
        h = state.copy()
        h.update(own)
        payloads.append(shared + own)
        hashes.append(h.hexdigest())
    return payloads, hashes
