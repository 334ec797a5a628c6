"""Lambda's synchronous Invoke API over plain HTTP(S), signed with SigV4: the fan-out's hot path.

A trainer makes tens of thousands of `RequestResponse` invocations per run. Through boto3,
each one costs about 1 ms of the trainer's CPU (request model, hooks, validation, response
parsing), more than the neuron's own work; this client builds the one request by hand:
the `POST /2015-03-31/functions/<name>/invocations` of the Lambda API reference, signed
with Signature Version 4 (tested to sign exactly as botocore does), over one keep-alive
connection per thread. The endpoint, region and credentials are boto3's, so it reaches the
same place as every other client: AWS, or the embedded stack's Lambda endpoint.

It returns the status, headers and body; `state.functions` turns them into domain errors.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

SERVICE = "lambda"
ALGORITHM = "AWS4-HMAC-SHA256"
USER_AGENT = "itsacat-invoke/1"


class Credentials(Protocol):
    access_key: str
    secret_key: str
    token: str | None


def invoke_path(function: str) -> str:
    """The request path of an invocation (a name, a partial or a full ARN)."""
    return f"/2015-03-31/functions/{quote(function, safe='')}/invocations"


@dataclass
class Signer:
    """SigV4 for one region and service; the day's signing key is derived once."""

    region: str
    service: str = SERVICE
    _key: tuple[str, str, bytes] | None = None

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
    ) -> dict[str, str]:
        """The request's headers: `extra`, plus Host, X-Amz-Date, token and Authorization.

        Every header but User-Agent is signed. The canonical URI is the path as sent,
        percent-encoded once more (what SigV4 asks of every service but S3).
        """
        now = now or datetime.datetime.now(datetime.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
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
                quote(path, safe="/~"),
                "",
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), "sha256"
        ).hexdigest()
        out = dict(extra)
        out["X-Amz-Date"] = amz_date
        if creds.token:
            out["X-Amz-Security-Token"] = creds.token
        out["Authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return out


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request out, a response back, in few calls.

    http.client parses every response's headers with the `email` package, which cost more
    of a trainer's CPU than anything else in an invocation; this reads the status line and
    headers itself (Content-Length or chunked bodies).
    """

    def __init__(self, hostname: str, port: int, https: bool, timeout_s: float) -> None:
        sock = socket.create_connection((hostname, port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=hostname)
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

    def _line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

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
            n = int(headers["content-length"])
            data = self.rfile.read(n)
            if len(data) != n:
                raise http.client.IncompleteRead(data, n - len(data))
        else:  # the body runs to the end of the connection
            data = self.rfile.read()
            self.open = False
        if headers.get("connection", "").lower() == "close":
            self.open = False
        return Response(status, headers, data)

    def _chunked(self) -> bytes:
        parts = []
        while (size := int(self._line().split(b";")[0], 16)) > 0:
            parts.append(self.rfile.read(size))
            self._line()  # the CRLF after the chunk
        while self._line() not in (b"\r\n", b"\n"):  # trailers
            pass
        return b"".join(parts)


_MAX_LINE = 65536


class InvokeClient:
    """`RequestResponse` invocations, one keep-alive connection per calling thread."""

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
        self.host = self.hostname if default_port else f"{self.hostname}:{self.port}"
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable or not)
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._signer = Signer(region=region)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def _request(self, function: str, payload: bytes) -> bytes:
        """The request line and headers, signed."""
        path = invoke_path(function)
        headers = self._signer.headers(
            "POST",
            self.host,
            path,
            payload,
            self.credentials.get_frozen_credentials(),
            {"X-Amz-Invocation-Type": "RequestResponse", "Content-Type": "application/json"},
        )
        headers["User-Agent"] = self.user_agent
        headers["Content-Length"] = str(len(payload))
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        return (head + "\r\n").encode("latin-1")

    def _take(self) -> tuple[_Connection, bool]:
        """An idle keep-alive connection (True: reused), or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return _Connection(self.hostname, self.port, self.https, self.timeout_s), False

    def _give(self, conn: _Connection) -> None:
        with self._lock:
            if conn.open and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _fresh_roundtrip(self, head: bytes, payload: bytes) -> Response:
        conn = _Connection(self.hostname, self.port, self.https, self.timeout_s)
        try:
            conn.send(head, payload)
            response = conn.receive()
        except BaseException:
            conn.close()
            raise
        self._give(conn)
        return response

    def invoke_many(
        self, function: str, payloads: list[bytes], window: int = 32
    ) -> list[Response | Exception]:
        """Invoke once per payload, `window` at a time, from the calling thread alone.

        Each request of a window goes out on its own keep-alive connection, then the
        responses are read in order: the invocations run in parallel without a thread per
        request. A request that fails gets its exception in its place in the result. A
        keep-alive connection the server had dropped is retried once on a fresh one
        (re-sending is safe for what this client is for: neuron invocations are pure).
        """
        results: list[Response | Exception | None] = [None] * len(payloads)
        for start in range(0, len(payloads), max(1, window)):
            sent: list[tuple[int, _Connection, bool, bytes]] = []
            for i in range(start, min(len(payloads), start + max(1, window))):
                head = self._request(function, payloads[i])
                try:
                    conn, reused = self._take()
                except Exception as e:
                    results[i] = e
                    continue
                try:
                    conn.send(head, payloads[i])
                    sent.append((i, conn, reused, head))
                except Exception as e:
                    conn.close()
                    results[i] = e if not reused else self._retry(head, payloads[i], e)
            for i, conn, reused, head in sent:
                try:
                    results[i] = conn.receive()
                except Exception as e:
                    conn.close()
                    results[i] = e if not reused else self._retry(head, payloads[i], e)
                    continue
                self._give(conn)
        return [r if r is not None else RuntimeError("not sent") for r in results]

    def _retry(self, head: bytes, payload: bytes, first: Exception) -> Response | Exception:
        if not isinstance(first, ConnectionResetError | BrokenPipeError):
            return first
        try:
            return self._fresh_roundtrip(head, payload)
        except Exception as e:
            return e

    def invoke(self, function: str, payload: bytes) -> Response:
        """One invocation; raises what failed."""
        out = self.invoke_many(function, [payload], 1)[0]
        if isinstance(out, Exception):
            raise out
        return out


MAX_IDLE = 64  # idle keep-alive connections kept
