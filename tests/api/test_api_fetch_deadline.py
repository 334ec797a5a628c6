"""The fetch's one deadline, its ports and its uniform failure, against a real `itsacat serve`.

Loopback servers on 127.0.0.2 (allowed by the server under test) misbehave on purpose:
they trickle a status line or a header a byte at a time, answer `100 Continue` for ever,
send chunked trailers for ever, accept TCP and never answer a TLS handshake, trickle a body.
Each passes every per-read timeout; only a deadline over the whole fetch ends them. The
server is started with a 2 s budget (ITSACAT_FETCH_DEADLINE_SECONDS) so that the tests are
quick: each must get its 504 `upstream_timeout` within the budget + 1 s, while the server
keeps answering `GET /` within a second. Nothing here leaves loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from api_support import Api, PictureServer, TinyModel, serve_api, store_with_model
from chalicelib.config import Settings, parse_allow_hosts, parse_ports
from chalicelib.errors import Refused, UpstreamError, UpstreamTimeout
from chalicelib.fetch import UPSTREAM_FAILED, SafeFetcher

BUDGET = 2.0
HOST = "127.0.0.2"
TRICKLE = 0.5  # seconds between two bytes of a trickle

Behaviour = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            part = conn.recv(4096)
            if not part:
                return
            data += part


def _drip(conn: socket.socket, stop: threading.Event, head: bytes, drop: bytes, every: float):
    """Send `head`, then `drop` every `every` seconds until stopped or the client leaves."""
    _read_request(conn)
    with contextlib.suppress(OSError):
        conn.sendall(head)
        while not stop.wait(every):
            conn.sendall(drop)


def trickled_status(conn: socket.socket, stop: threading.Event) -> None:
    _drip(conn, stop, b"HTTP/1.1 200 ", b"O", TRICKLE)


def trickled_header(conn: socket.socket, stop: threading.Event) -> None:
    _drip(conn, stop, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: ", b"a", TRICKLE)


def endless_continue(conn: socket.socket, stop: threading.Event) -> None:
    _drip(conn, stop, b"", b"HTTP/1.1 100 Continue\r\n\r\n", 0.05)


def endless_trailers(conn: socket.socket, stop: threading.Event) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\n\x89PNG\r\n0\r\n"
    )
    _drip(conn, stop, head, b"X-Trailer: more\r\n", 0.05)


def trickled_body(conn: socket.socket, stop: threading.Event) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    _drip(conn, stop, head, b"\x89", TRICKLE)


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, read what comes (a TLS ClientHello), never answer."""
    conn.settimeout(0.2)
    while not stop.is_set():
        try:
            if not conn.recv(4096):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def not_http(conn: socket.socket, stop: threading.Event) -> None:
    """Another protocol's banner, then hang up (as an SSH or SMTP server would)."""
    with contextlib.suppress(OSError):
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        _read_request(conn)


def reset(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, then reset the connection."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class Misbehaving:
    """A TCP server on 127.0.0.2 that runs `behaviour` on each connection, in a thread."""

    behaviour: Behaviour
    stop: threading.Event = field(default_factory=threading.Event)
    connections: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            self.behaviour(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


ATTACKS: dict[str, tuple[str, Behaviour]] = {
    "trickled status line": ("http", trickled_status),
    "trickled header": ("http", trickled_header),
    "endless 100 Continue": ("http", endless_continue),
    "endless chunked trailers": ("http", endless_trailers),
    "TLS handshake never answered": ("https", silent),
    "trickled body": ("http", trickled_body),
}
FAILURES: dict[str, Behaviour] = {"not http": not_http, "reset": reset}


@dataclass
class Loopback:
    """Every server the tests aim the API at, and a port where nothing listens."""

    attacks: dict[str, Misbehaving]
    failures: dict[str, Misbehaving]
    unlisted: Misbehaving  # listening, on a port the API is not allowed to fetch from
    closed_port: int

    def all(self) -> list[Misbehaving]:
        return [*self.attacks.values(), *self.failures.values(), self.unlisted]


def _closed_port() -> int:
    """A port on 127.0.0.2 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    servers = Loopback(
        attacks={name: Misbehaving(b) for name, (_, b) in ATTACKS.items()},
        failures={name: Misbehaving(b) for name, b in FAILURES.items()},
        unlisted=Misbehaving(silent),
        closed_port=_closed_port(),
    )
    yield servers
    for server in servers.all():
        server.close()


@pytest.fixture(scope="module")
def api(
    moto_endpoint: str,
    tiny_model: TinyModel,
    loopback: Loopback,
    pictures: PictureServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    bucket = store_with_model(
        moto_endpoint, "itsacat-deadline", "run-1", tiny_model.weights, tiny_model.metadata
    ).bucket
    ports = [s.port for s in (*loopback.attacks.values(), *loopback.failures.values())]
    ports += [loopback.closed_port, pictures.port]  # not loopback.unlisted
    env = {
        "ITSACAT_FETCH_DEADLINE_SECONDS": str(BUDGET),
        "ITSACAT_FETCH_PORTS": ",".join(map(str, ports)),
        "ITSACAT_MODEL_CHECK_SECONDS": "300",  # no S3 call inside the timed requests
    }
    log = tmp_path_factory.mktemp("deadline") / "serve.log"
    with serve_api(moto_endpoint, bucket, log, env, allow=HOST) as api:
        assert api.get("/model")[0] == 200  # the model loaded before any timing
        yield api


def _image_while_pinging(api: Api, url: str) -> tuple[int | None, dict, float, list[float]]:
    """GET /image?image=url; meanwhile `GET /` every 0.1 s, each timed (inf: no answer
    within a second). Returns the status (None: no answer within budget + 3 s), the
    answer, the seconds it took, and the pings' seconds."""
    result: dict = {}

    def ask() -> None:
        start = time.monotonic()
        try:
            result["status"], result["answer"] = api.image(url, timeout=BUDGET + 3)
        except OSError as e:
            result["status"], result["answer"] = None, {"client": repr(e)}
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    pings: list[float] = []
    time.sleep(0.2)
    while thread.is_alive():
        start = time.monotonic()
        try:
            status, _ = api.get("/", timeout=1.0)
            pings.append(time.monotonic() - start if status == 200 else float("inf"))
        except OSError:
            pings.append(float("inf"))
        time.sleep(0.1)
    thread.join()
    return result["status"], result["answer"], result["seconds"], pings


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_slow_server_is_cut_off_at_the_deadline(
    api: Api, loopback: Loopback, attack: str
) -> None:
    scheme = ATTACKS[attack][0]
    server = loopback.attacks[attack]
    before = server.connections
    status, answer, seconds, pings = _image_while_pinging(
        api, f"{scheme}://{HOST}:{server.port}/cat.png"
    )
    assert server.connections > before  # the attack was met
    assert status == 504, (status, answer, seconds)
    assert answer["code"] == "upstream_timeout" and set(answer) == {"error", "code"}
    assert BUDGET - 0.2 <= seconds <= BUDGET + 1, seconds
    assert pings and max(pings) < 1.0, pings  # the server kept answering meanwhile


def test_open_and_closed_ports_answer_alike(
    api: Api, loopback: Loopback, pictures: PictureServer
) -> None:
    urls = {
        "closed port": f"http://{HOST}:{loopback.closed_port}/x.png",
        "another protocol": f"http://{HOST}:{loopback.failures['not http'].port}/x.png",
        "reset": f"http://{HOST}:{loopback.failures['reset'].port}/x.png",
        "an HTTP 404": pictures.url("/missing.png"),
        "https to an HTTP server": f"https://{HOST}:{pictures.port}/x.png",
    }
    answers = {name: api.image(url) for name, url in urls.items()}
    first = answers["closed port"]
    assert first[0] == 502 and first[1]["code"] == "upstream_error", first
    assert answers == dict.fromkeys(urls, first)  # one status, one body, whatever listens
    shown = first[1]["error"]
    assert not any(word in shown for word in ("Error", "404", "TLS", "refused", "reset"))
    log = api.log_path.read_text()
    assert "ConnectionRefusedError" in log and "HTTP 404" in log  # the detail: in the log


def test_only_the_allowed_ports_are_fetched(api: Api, loopback: Loopback) -> None:
    before = loopback.unlisted.connections
    status, answer = api.image(f"http://{HOST}:{loopback.unlisted.port}/x.png")
    assert status == 400 and answer["code"] == "port_not_allowed", answer
    assert loopback.unlisted.connections == before  # never connected


# -- in process: DNS, the default ports, the setting


def test_a_hanging_dns_lookup_is_cut_off_at_the_deadline() -> None:
    released = threading.Event()

    def hanging(host: str, port: int) -> list[ipaddress.IPv4Address]:
        released.wait(10)  # getaddrinfo stuck on a silent name server
        return [ipaddress.IPv4Address("127.0.0.2")]

    settings = Settings(allow=parse_allow_hosts(HOST), fetch_deadline=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout) as e:
            SafeFetcher(settings, resolver=hanging).fetch("http://pictures.invalid/x.png")
    finally:
        released.set()
    assert e.value.status == 504 and e.value.code == "upstream_timeout"
    assert time.monotonic() - start < 1.5


def test_dns_failures_are_the_uniform_upstream_error() -> None:
    def failing(host: str, port: int) -> list[ipaddress.IPv4Address]:
        raise UpstreamError(f"{host} cannot be resolved", "unresolvable_host")

    settings = Settings(allow=parse_allow_hosts(HOST))
    with pytest.raises(UpstreamError) as e:
        SafeFetcher(settings, resolver=failing).fetch("http://pictures.invalid/x.png")
    assert (e.value.status, e.value.code, e.value.message) == (
        502,
        "upstream_error",
        UPSTREAM_FAILED,
    )


def test_ports_80_and_443_by_default(loopback: Loopback) -> None:
    settings = Settings(allow=parse_allow_hosts(HOST))
    assert settings.port_allowed(80) and settings.port_allowed(443)
    assert not any(settings.port_allowed(p) for p in (22, 25, 6379, 8080, 8443))
    before = loopback.unlisted.connections
    with pytest.raises(Refused) as e:
        SafeFetcher(settings).fetch(f"http://{HOST}:{loopback.unlisted.port}/x.png")
    assert e.value.code == "port_not_allowed" and "80, 443" in e.value.message
    assert loopback.unlisted.connections == before


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80,443", ((80, 80), (443, 443))),
        (" 8080 , 8000-8100 ", ((8080, 8080), (8000, 8100))),
        ("any", ((1, 65535),)),
    ],
)
def test_the_ports_setting(text: str, expected: tuple) -> None:
    assert parse_ports(text) == expected
    assert Settings.from_env({"ITSACAT_FETCH_PORTS": text}).fetch_ports == expected


@pytest.mark.parametrize("bad", ["0", "70000", "http", "90-80", ",", "80;443"])
def test_the_ports_setting_refuses_nonsense(bad: str) -> None:
    with pytest.raises(ValueError, match="ITSACAT_FETCH_PORTS"):
        Settings.from_env({"ITSACAT_FETCH_PORTS": bad})


def test_the_deadline_setting() -> None:
    assert Settings.from_env({}).fetch_deadline == 15.0
    assert Settings.from_env({"ITSACAT_FETCH_DEADLINE_SECONDS": "2"}).fetch_deadline == 2.0
    for bad in ("0", "x", "600"):
        with pytest.raises(ValueError, match="ITSACAT_FETCH_DEADLINE_SECONDS"):
            Settings.from_env({"ITSACAT_FETCH_DEADLINE_SECONDS": bad})
