"""Fetch a picture from a URL given by anyone, safely.

Each hop (the URL, then at most `max_redirects` redirects) is parsed, its host turned into
addresses and every address checked (`addresses.checked_addresses`), and its port checked
against `Settings.fetch_ports` (80 and 443 unless the operator opens others); the
connection then goes to a checked address, never to a second resolution of the name (no
DNS rebinding). For https the TLS handshake still sends the name (SNI) and verifies the
certificate against it. No proxy settings from the environment are used.

One wall-clock budget (`Settings.fetch_deadline`) covers the whole fetch: DNS, connect,
TLS handshake, status line, headers, any number of 1xx responses, body, chunked trailers,
every hop. Per-read socket timeouts cannot do that (a server trickling a byte a second
passes each of them for ever), so a watchdog timer shuts the socket in use when the
budget runs out (`Deadline`), and DNS runs in a thread that is waited for at most the
remaining budget (`_bounded`: getaddrinfo cannot be interrupted). Running out is 504
`upstream_timeout`.

Every other failure of the picture's server (refused, reset, TLS, DNS, a broken or
non-200 answer, ...) is one and the same 502 `upstream_error` with one message, so that
answers do not tell what listens where; the detail goes to the log at WARNING.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from chalicelib.addresses import IPAddress, Resolver, checked_addresses, resolve
from chalicelib.config import Settings
from chalicelib.errors import (
    BadRequest,
    PayloadTooLarge,
    Refused,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "itsacat/0.1 (+prediction API)"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
# The one answer for every failure of the picture's server (502 upstream_error).
UPSTREAM_FAILED = (
    "the picture could not be fetched: its server could not be reached "
    "or did not answer with a picture"
)
# At most this many DNS lookups at once (a hanging lookup keeps its thread until the
# system resolver gives up; this bounds how many such threads can pile up).
DNS_THREADS = 16
_dns_slots = threading.BoundedSemaphore(DNS_THREADS)


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


class _Failed(Exception):
    """A failure of the picture's server; its text is logged, never answered."""


class _Expired(Exception):
    """The fetch's budget ran out."""


def _shut(sock: socket.socket) -> None:
    """Shut the TCP connection under `sock` (also under an SSLSocket), waking any reader."""
    with contextlib.suppress(OSError):  # already closed or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Deadline:
    """One wall-clock budget for a whole fetch, enforced by a watchdog timer.

    The socket in use is registered with `watch`; when the budget runs out the timer
    thread shuts it (shutdown(SHUT_RDWR) wakes a blocked recv, a TLS handshake's too),
    sets `expired`, and the fetch answers 504 whatever error the shut socket gave.
    `unwatch` before closing a socket, so the timer never touches a closed descriptor.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.end = clock() + seconds
        self.expired = False
        self.where = ""  # the hop being fetched, for the log
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return 0.0 if self.expired else max(0.0, self.end - self.clock())

    def over(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        if self.over():
            raise _Expired(f"the {self.seconds:g} s budget ran out")

    def timeout(self, limit: float) -> float:
        """A socket timeout: `limit`, but never past the deadline (and never 0, which
        would make the socket non-blocking)."""
        self.check()
        return max(0.001, min(limit, self.remaining()))

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shut(sock)

    def unwatch(self) -> None:
        with self._lock:
            self._sock = None

    def cancel(self) -> None:
        self._timer.cancel()
        self.unwatch()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)


def _bounded(resolver: Resolver, deadline: Deadline) -> Resolver:
    """`resolver` run in a thread, waited for at most the remaining budget.

    getaddrinfo cannot be interrupted and takes no timeout: a lookup that hangs keeps its
    (daemon) thread until the system resolver gives up (resolv.conf's timeout and
    attempts), but the fetch stops waiting for it when the budget runs out. At most
    `DNS_THREADS` lookups run at once; a fetch that finds none free within its budget
    times out too.
    """

    def lookup(host: str, port: int) -> list[IPAddress]:
        if not _dns_slots.acquire(timeout=deadline.remaining()):
            raise _Expired(f"no DNS thread free for {host}")
        done = threading.Event()
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["addresses"] = list(resolver(host, port))
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e
            finally:
                _dns_slots.release()
                done.set()

        try:
            threading.Thread(target=run, name=f"dns-{host}", daemon=True).start()
        except BaseException:
            _dns_slots.release()
            raise
        if not done.wait(deadline.remaining()):
            raise _Expired(f"DNS did not answer for {host}")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["addresses"]  # type: ignore[return-value]

    return lookup


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed address; `host` only names it in the Host header.

    Its socket is watched by the fetch's `Deadline` from the moment it is connected.
    """

    def __init__(
        self, host: str, port: int, address: IPAddress, deadline: Deadline, settings: Settings
    ) -> None:
        super().__init__(host, port, timeout=settings.connect_timeout)
        self.address = address
        self.deadline = deadline
        self.settings = settings

    def _open_socket(self) -> socket.socket:
        # connect() is one system call bounded by its timeout, itself within the budget
        timeout = self.deadline.timeout(self.settings.connect_timeout)
        sock = socket.create_connection((str(self.address), self.port), timeout)
        try:
            self.deadline.watch(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # each read: at most read_timeout idle; the whole: the watchdog
            sock.settimeout(self.deadline.timeout(self.settings.read_timeout))
        except BaseException:
            self.deadline.unwatch()
            sock.close()
            raise
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
        deadline: Deadline,
        settings: Settings,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, address, deadline, settings)
        self.context = context

    def connect(self) -> None:
        raw = self._open_socket()
        # The handshake only once the TLS socket is watched (wrapping detaches `raw`).
        try:
            sock = self.context.wrap_socket(
                raw, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            self.deadline.unwatch()
            raw.close()
            raise
        self.sock = sock  # closed by close(), whatever the handshake does
        self.deadline.watch(sock)
        sock.do_handshake()


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
        deadline = Deadline(self.settings.fetch_deadline, self.clock)
        try:
            return self._fetch(url, deadline)
        except (BadRequest, PayloadTooLarge):
            raise  # verdicts on the URL or the picture, not failures of its server
        except Exception as e:
            if deadline.expired or deadline.over() or isinstance(e, TimeoutError | _Expired):
                log.warning(
                    "fetch %s: no complete answer within %g s (then: %s)",
                    deadline.where,
                    self.settings.fetch_deadline,
                    _describe(e),
                )
                raise UpstreamTimeout(
                    "the picture's server did not send the picture in time", "upstream_timeout"
                ) from e
            if isinstance(e, _Failed | UpstreamError | OSError | http.client.HTTPException):
                log.warning("fetch %s failed: %s", deadline.where, _describe(e))
                raise UpstreamError(UPSTREAM_FAILED, "upstream_error") from e
            raise
        finally:
            deadline.cancel()

    def _fetch(self, url: str, deadline: Deadline) -> Fetched:
        redirects = 0
        while True:
            target = parse_target(url)
            deadline.where = f"{target.scheme}://{target.host}:{target.port}"
            addresses = checked_addresses(
                target.host,
                target.port,
                self.settings.allow,
                _bounded(self.resolver, deadline),
            )
            if not self.settings.port_allowed(target.port):
                shown = ", ".join(
                    str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.settings.fetch_ports
                )
                raise Refused(
                    f"refused: port {target.port} is not fetched (only {shown}; an operator "
                    "can open others with ITSACAT_FETCH_PORTS)",
                    "port_not_allowed",
                )
            conn, response = self._request(target, addresses, deadline)
            try:
                if response.status in REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise _Failed(f"HTTP {response.status} without a Location")
                    redirects += 1
                    if redirects > self.settings.max_redirects:
                        raise Refused(
                            f"refused: more than {self.settings.max_redirects} redirects",
                            "too_many_redirects",
                        )
                    url = urljoin(target.url, location.strip())
                    continue
                if response.status != 200:
                    raise _Failed(f"HTTP {response.status} {response.reason}, not 200")
                body = self._read_body(response, deadline)
                # A body cut short by the watchdog can look complete (read until close).
                deadline.check()
                return Fetched(
                    url=target.url,
                    content_type=response.getheader("Content-Type"),
                    body=body,
                    redirects=redirects,
                )
            finally:
                deadline.unwatch()
                conn.close()

    def _request(
        self, target: Target, addresses: list[IPAddress], deadline: Deadline
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Connect to the first checked address that answers, send GET, read the headers
        (http.client skips any 1xx responses: the watchdog bounds how many)."""
        last: Exception = _Expired("no address left to try")
        for address in addresses:
            deadline.check()
            deadline.where = f"{target.scheme}://{target.host}:{target.port} ({address})"
            conn: _PinnedHTTPConnection
            if target.scheme == "https":
                conn = _PinnedHTTPSConnection(
                    target.host, target.port, address, deadline, self.settings, self.ssl_context
                )
            else:
                conn = _PinnedHTTPConnection(
                    target.host, target.port, address, deadline, self.settings
                )
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
            except (OSError, http.client.HTTPException) as e:
                deadline.unwatch()
                conn.close()
                if isinstance(e, ssl.SSLError) or deadline.over():
                    raise  # the certificate is the name's, wrong at every address
                last = e  # try the next address
        raise last

    def _read_body(self, response: http.client.HTTPResponse, deadline: Deadline) -> bytes:
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
            deadline.check()
            # read1: at most one socket read at a time (the watchdog bounds the whole)
            chunk = response.read1(min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the picture is larger than {limit} bytes", "too_large")
        return b"".join(chunks)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
