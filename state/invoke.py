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
        self._signer = threading.local()
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            conn.close()
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.hostname, self.port, timeout=self.timeout_s)
        self._local.conn = conn
        return conn

    def invoke(self, function: str, payload: bytes) -> Response:
        """POST the payload; a dropped keep-alive connection is re-opened once.

        (Re-sending is safe for what this client is for: neuron invocations are pure.)
        """
        signer = getattr(self._signer, "s", None)
        if signer is None:
            signer = self._signer.s = Signer(region=self.region)
        path = invoke_path(function)
        creds = self.credentials.get_frozen_credentials()
        headers = signer.headers(
            "POST",
            self.host,
            path,
            payload,
            creds,
            {"X-Amz-Invocation-Type": "RequestResponse", "Content-Type": "application/json"},
        )
        headers["User-Agent"] = self.user_agent
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request("POST", path, body=payload, headers=headers)
                r = conn.getresponse()
                body = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if attempt:
                    raise
                continue
            except BaseException:
                conn.close()
                self._local.conn = None
                raise
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
        raise AssertionError("unreachable")
