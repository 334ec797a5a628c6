"""Fetch a picture from a URL given by anyone, safely.

Each hop (the URL, then at most `max_redirects` redirects) is parsed, its host turned into
addresses and every address checked (`addresses.checked_addresses`); the connection then
goes to a checked address, never to a second resolution of the name (no DNS rebinding).
For https the TLS handshake still sends the name (SNI) and verifies the certificate
against it. Connect and read timeouts, an overall deadline, and a streamed size limit
bound the work one request can cause. No proxy settings from the environment are used.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from chalicelib.addresses import IPAddress, Resolver, checked_addresses, resolve
from chalicelib.config import Settings
from chalicelib.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    Refused,
    UpstreamError,
    UpstreamTimeout,
)

MAX_URL_LENGTH = 2048
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "itsacat/0.1 (+prediction API)"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class Target:
    """One hop's parsed URL."""

    url: str
    scheme: str
    host: str  # as in the URL, brackets removed, lower case
    port: int
    path: str  # path and query, ready for the request line


@dataclass(frozen=True)
class Fetched:
    url: str  # the final URL, after redirects
    content_type: str | None
    body: bytes
    redirects: int


def parse_target(url: str) -> Target:
    """Validate one URL; BadRequest/Refused say what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"the URL is longer than {MAX_URL_LENGTH} characters", "bad_url")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise BadRequest("the URL contains spaces or control characters", "bad_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise BadRequest(f"the URL is malformed: {e}", "bad_url") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme!r} URLs are" if scheme else "a URL without a scheme is"
        raise Refused(f"refused: {shown} not fetched; use http or https", "scheme_not_allowed")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("the URL must not contain credentials", "bad_url")
    host = parts.hostname
    if not host:
        raise BadRequest("the URL has no host", "bad_url")
    if port == 0:
        raise BadRequest("the URL's port must be from 1 to 65535", "bad_url")
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    return Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        path=path,
    )


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed address; `host` only names it in the Host header."""

    def __init__(self, host: str, port: int, address: IPAddress, timeouts: tuple[float, float]):
        super().__init__(host, port, timeout=timeouts[0])
        self.address = address
        self.read_timeout = timeouts[1]

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((str(self.address), self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)
        return sock

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a fixed address, with SNI and certificate checks against the URL's host."""

    default_port = 443

    def __init__(
        self,
        host: str,
        port: int,
        address: IPAddress,
        timeouts: tuple[float, float],
        context: ssl.SSLContext,
    ):
        super().__init__(host, port, address, timeouts)
        self.context = context

    def connect(self) -> None:
        self.sock = self.context.wrap_socket(self._open_socket(), server_hostname=self.host)


class SafeFetcher:
    """`fetch(url)` -> the picture's bytes, or an ApiError saying why not."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.clock = clock

    def fetch(self, url: str) -> Fetched:
        deadline = self.clock() + self.settings.fetch_deadline
        redirects = 0
        while True:
            target = parse_target(url)
            addresses = checked_addresses(
                target.host, target.port, self.settings.allow, self.resolver
            )
            conn, response = self._request(target, addresses, deadline)
            try:
                if response.status in REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise UpstreamError(
                            f"the picture's server answered {response.status} without a Location",
                            "bad_response",
                        )
                    redirects += 1
                    if redirects > self.settings.max_redirects:
                        raise Refused(
                            f"refused: more than {self.settings.max_redirects} redirects",
                            "too_many_redirects",
                        )
                    url = urljoin(target.url, location.strip())
                    continue
                if response.status != 200:
                    raise UpstreamError(
                        f"the picture's server answered HTTP {response.status}, not 200",
                        "upstream_status",
                    )
                body = self._read_body(response, deadline)
                return Fetched(
                    url=target.url,
                    content_type=response.getheader("Content-Type"),
                    body=body,
                    redirects=redirects,
                )
            except TimeoutError as e:
                raise UpstreamTimeout(
                    "the picture's server was too slow", "upstream_timeout"
                ) from e
            except (http.client.HTTPException, OSError) as e:
                raise UpstreamError(
                    f"reading the picture failed: {type(e).__name__}", "bad_response"
                ) from e
            finally:
                conn.close()

    def _request(
        self, target: Target, addresses: list[IPAddress], deadline: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Connect to the first checked address that answers, send GET, read the headers."""
        last: Exception | None = None
        for address in addresses:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            timeouts = (
                min(self.settings.connect_timeout, remaining),
                min(self.settings.read_timeout, remaining),
            )
            conn: _PinnedHTTPConnection
            if target.scheme == "https":
                conn = _PinnedHTTPSConnection(
                    target.host, target.port, address, timeouts, self.ssl_context
                )
            else:
                conn = _PinnedHTTPConnection(target.host, target.port, address, timeouts)
            try:
                conn.request(
                    "GET",
                    target.path,
                    headers={
                        "User-Agent": USER_AGENT,
                        "Accept": "image/*",
                        "Accept-Encoding": "identity",
                        "Connection": "close",
                    },
                )
                return conn, conn.getresponse()
            except ssl.SSLError as e:
                conn.close()
                raise UpstreamError(
                    f"TLS with {target.host} failed: {e.__class__.__name__}", "tls_error"
                ) from e
            except TimeoutError as e:
                conn.close()
                last = UpstreamTimeout(f"{target.host} did not answer in time", "upstream_timeout")
                last.__cause__ = e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                last = UpstreamError(
                    f"cannot reach {target.host}: {e.__class__.__name__}", "connect_failed"
                )
                last.__cause__ = e
        if isinstance(last, ApiError):
            raise last
        raise UpstreamTimeout("fetching the picture took too long", "upstream_timeout")

    def _read_body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        """The body, streamed, refusing once it grows past `max_bytes`."""
        limit = self.settings.max_bytes
        declared = response.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"the picture is larger than {limit} bytes ({int(declared)})", "too_large"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            if self.clock() > deadline:
                raise UpstreamTimeout("fetching the picture took too long", "upstream_timeout")
            # read1: at most one socket read, so a trickling server meets the deadline check
            chunk = response.read1(min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the picture is larger than {limit} bytes", "too_large")
        return b"".join(chunks)
