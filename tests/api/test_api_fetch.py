"""The safe fetcher against real HTTP(S) servers on loopback (no internet, no DNS)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from api_support import MB, RED, PictureServer, picture
from chalicelib.config import Settings, parse_allow_hosts, parse_ports
from chalicelib.errors import (
    ApiError,
    PayloadTooLarge,
    Refused,
    UpstreamError,
    UpstreamTimeout,
)
from chalicelib.fetch import UPSTREAM_FAILED, SafeFetcher, parse_target

ALLOW = parse_allow_hosts("127.0.0.2")
SETTINGS = Settings(
    allow=ALLOW,
    connect_timeout=1.0,
    read_timeout=1.0,
    fetch_deadline=5.0,
    fetch_ports=parse_ports("any"),  # the test servers listen on random ports
)


class Resolver:
    """A resolver table that counts its calls (to prove one resolution per hop)."""

    def __init__(self, entries: dict[str, str]) -> None:
        self.entries = entries
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[ipaddress.IPv4Address]:
        self.calls.append(host)
        return [ipaddress.IPv4Address(self.entries[host])]


def fetcher(settings: Settings = SETTINGS, **names: str) -> SafeFetcher:
    return SafeFetcher(
        settings, resolver=Resolver({k.replace("_", "."): v for k, v in names.items()})
    )


def test_fetches_from_an_allowed_address(pictures: PictureServer) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    got = fetcher().fetch(pictures.url("/gen/red.png"))
    assert got.body == picture(RED)
    assert got.content_type == "image/png"


def test_connects_to_the_checked_address_with_the_name_as_host(pictures: PictureServer) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    resolver = Resolver({"pictures.invalid": "127.0.0.2"})
    got = SafeFetcher(SETTINGS, resolver=resolver).fetch(
        f"http://pictures.invalid:{pictures.port}/gen/red.png?x=1"
    )
    assert got.body == picture(RED)
    assert pictures.requests[-1] == ("/gen/red.png?x=1", f"pictures.invalid:{pictures.port}")
    assert resolver.calls == ["pictures.invalid"]  # resolved once, then pinned


def test_a_redirect_to_a_refused_address_is_not_followed(
    pictures: PictureServer, forbidden_pictures: PictureServer
) -> None:
    forbidden_pictures.files["red.png"] = ("image/png", picture(RED))
    target = forbidden_pictures.url("/gen/red.png")
    before = forbidden_pictures.hits()
    with pytest.raises(Refused, match="loopback") as e:
        fetcher().fetch(pictures.url(f"/redirect?to={target}"))
    assert e.value.code == "address_refused"
    assert forbidden_pictures.hits() == before  # never connected


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.2/x", "gopher://a/"])
def test_a_redirect_to_another_scheme_is_refused(pictures: PictureServer, location: str) -> None:
    with pytest.raises(Refused) as e:
        fetcher().fetch(pictures.url(f"/redirect?to={location}"))
    assert e.value.code == "scheme_not_allowed"


def test_redirects_are_followed_at_most_three_times(pictures: PictureServer) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    url = pictures.url("/gen/red.png")
    for _ in range(3):
        url = pictures.url(f"/redirect?to={url}")
    assert fetcher().fetch(url).redirects == 3
    with pytest.raises(Refused) as e:
        fetcher().fetch(pictures.url(f"/redirect?to={url}"))
    assert e.value.code == "too_many_redirects"


def test_relative_redirects_resolve_against_the_hop(pictures: PictureServer) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    assert fetcher().fetch(pictures.url("/redirect?to=/gen/red.png")).body == picture(RED)


def test_a_streamed_body_is_cut_at_the_limit(pictures: PictureServer) -> None:
    with pytest.raises(PayloadTooLarge) as e:
        fetcher().fetch(pictures.url(f"/stream/{20 * MB}"))
    assert e.value.status == 413


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    pictures: PictureServer,
) -> None:
    with pytest.raises(PayloadTooLarge):
        fetcher().fetch(pictures.url(f"/declared/{20 * MB}"))


def test_a_body_at_the_limit_is_read(pictures: PictureServer) -> None:
    small = replace(SETTINGS, max_bytes=1000)
    assert len(fetcher(small).fetch(pictures.url("/stream/1000")).body) == 1000
    with pytest.raises(PayloadTooLarge):
        fetcher(small).fetch(pictures.url("/stream/1001"))


def test_slow_servers_time_out(pictures: PictureServer) -> None:
    with pytest.raises(UpstreamTimeout) as e:
        fetcher(replace(SETTINGS, read_timeout=0.3)).fetch(pictures.url("/slow"))
    assert e.value.status == 504


def test_a_missing_picture_is_an_upstream_error(
    pictures: PictureServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(UpstreamError) as e:
        fetcher().fetch(pictures.url("/nothing-here"))
    assert e.value.code == "upstream_error" and e.value.message == UPSTREAM_FAILED
    assert "HTTP 404" in caplog.text  # the detail goes to the log, not to the client


def test_a_closed_port_is_the_same_upstream_error(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UpstreamError) as e:
        fetcher().fetch("http://127.0.0.2:9/")
    assert e.value.code == "upstream_error" and e.value.message == UPSTREAM_FAILED
    assert "ConnectionRefusedError" in caplog.text


@pytest.mark.parametrize(
    "url, code",
    [
        ("", "scheme_not_allowed"),
        ("no-scheme", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("ftp://127.0.0.2/x", "scheme_not_allowed"),
        ("http://", "bad_url"),
        ("http://[::1/", "bad_url"),
        ("http://127.0.0.2:99999/", "bad_url"),
        ("http://user:secret@127.0.0.2/", "bad_url"),
        ("http://127.0.0.2/a b", "bad_url"),
        ("http://127.0.0.2/" + "a" * 3000, "bad_url"),
    ],
)
def test_malformed_urls(url: str, code: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_target(url)
    assert e.value.status == 400 and e.value.code == code


# -- https: SNI and certificate checks against the name, connection to the checked address


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list]]:
    cert, key = _certificate(tmp_path_factory.mktemp("tls"), "pictures.invalid")
    server_names: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = picture(RED)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment,misc,return-value]
    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1]), cert, server_names
    server.shutdown()
    server.server_close()


def test_https_sends_the_name_and_verifies_the_certificate(tls_server: tuple) -> None:
    port, cert, server_names = tls_server
    trusted = ssl.create_default_context(cafile=str(cert))
    resolver = Resolver({"pictures.invalid": "127.0.0.2", "impostor.invalid": "127.0.0.2"})
    got = SafeFetcher(SETTINGS, resolver=resolver, ssl_context=trusted).fetch(
        f"https://pictures.invalid:{port}/red.png"
    )
    assert got.body == picture(RED)
    assert server_names[-1] == "pictures.invalid"
    # Same address, a name the certificate does not cover: refused by verification.
    with pytest.raises(UpstreamError) as e:
        SafeFetcher(SETTINGS, resolver=resolver, ssl_context=trusted).fetch(
            f"https://impostor.invalid:{port}/red.png"
        )
    assert e.value.code == "upstream_error"  # as uniform as any other failure
    # An untrusted certificate is refused too.
    with pytest.raises(UpstreamError):
        SafeFetcher(SETTINGS, resolver=resolver).fetch(f"https://pictures.invalid:{port}/x")
