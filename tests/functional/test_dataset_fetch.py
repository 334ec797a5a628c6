"""`itsacat dataset fetch` and the demo's choice of dataset, against a local HTTP server.

A real `http.server` on 127.0.0.1 (in a thread) serves the shared cat data and its
variations; nothing here reaches the internet (ITSACAT_DATASET_URL points at a closed
port in every test, so a forgotten `--url` fails instead of downloading).
"""

import contextlib
import hashlib
import http.server
import io
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from itsacat import dataset_fetch, dataset_source
from itsacat.cli import main
from itsacat.errors import UserError
from tests.support import data as test_data
from trainer_lambdas import datasets

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """Routes: path -> (status, body, send Content-Length); counts the requests."""

    def __init__(self, routes: dict[str, tuple[int, bytes, bool]]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        self.delay = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                time.sleep(outer.delay)
                status, body, length = outer.routes.get(self.path, (404, b"not found", True))
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # a client that refused the file hangs up before the end of it
                with contextlib.suppress(ConnectionError):
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def real() -> bytes:
    test_data.require()
    return test_data.DATASET.read_bytes()


@pytest.fixture
def server(real: bytes) -> Iterator[Server]:
    other = bytearray(real)
    other[len(other) // 2] ^= 0xFF  # one byte changed: same size, another checksum
    s = Server(
        {
            "/datasets.h5": (200, real, True),
            "/other.h5": (200, bytes(other), True),
            "/no-length.h5": (200, real, False),
            "/short.h5": (200, real[:1000], False),
        }
    )
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """ITSACAT_DATASET_URL at a closed port; ITSACAT_HOME in tmp_path; returns the home."""
    monkeypatch.setenv(dataset_fetch.URL_VARIABLE, f"http://127.0.0.1:{closed_port()}/none.h5")
    home = tmp_path / "home"
    monkeypatch.setenv("ITSACAT_HOME", str(home))
    return home


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def one_line(e: pytest.ExceptionInfo[UserError]) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


# fetch ----------------------------------------------------------------------------------


def test_fetch_downloads_checks_and_caches(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bar = io.StringIO()
    path = dataset_fetch.fetch(server.url("/datasets.h5"), cache, progress=bar)
    assert path == cache / "datasets.h5"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == dataset_fetch.SHA256
    assert leftovers(cache) == ["datasets.h5"]  # no temporary file left
    assert server.requests == ["/datasets.h5"]
    assert "KB 3116/3116" in bar.getvalue()  # the progress bar ran to the end
    assert datasets.load(path).train is not None


def test_second_fetch_uses_the_cache_without_a_request(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "h"
    cache = dataset_fetch.cache_dir(home)
    assert dataset_fetch.cached(home) is None
    dataset_fetch.fetch(server.url("/datasets.h5"), cache, progress=io.StringIO())
    said: list[str] = []
    path = dataset_fetch.fetch(server.url("/datasets.h5"), cache, say=said.append)
    assert len(server.requests) == 1
    assert dataset_fetch.cached(home) == path
    assert len(said) == 1 and "not downloading" in said[0]


def test_a_damaged_cache_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "h"
    cache = dataset_fetch.cache_dir(home)
    cache.mkdir(parents=True)
    (cache / "datasets.h5").write_bytes(b"not the file")
    assert dataset_fetch.cached(home) is None
    dataset_fetch.fetch(server.url("/datasets.h5"), cache, progress=io.StringIO())
    assert server.requests == ["/datasets.h5"]
    assert dataset_fetch.cached(home) == cache / "datasets.h5"


def test_another_file_is_refused_and_nothing_is_cached(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(server.url("/other.h5"), cache, progress=io.StringIO())
    text = one_line(e)
    got = hashlib.sha256(server.routes["/other.h5"][1]).hexdigest()
    assert got in text and dataset_fetch.SHA256 in text  # both checksums named
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    ("path", "limit", "expected"),
    [
        ("/datasets.h5", 1000, "over the limit of 1000"),  # refused from Content-Length
        ("/no-length.h5", 1000, "more than 1000 bytes"),  # refused while streaming
    ],
)
def test_a_file_over_the_size_limit_is_refused(
    server: Server, tmp_path: Path, path: str, limit: int, expected: str
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(server.url(path), cache, max_bytes=limit, progress=io.StringIO())
    assert expected in one_line(e)
    assert leftovers(cache) == []


def test_a_file_without_length_is_read_to_its_end(server: Server, tmp_path: Path) -> None:
    path = dataset_fetch.fetch(server.url("/no-length.h5"), tmp_path, progress=io.StringIO())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == dataset_fetch.SHA256


def test_a_closed_port_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/datasets.h5"
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(url, tmp_path / "cache")
    assert one_line(e) == f"cannot download {url}: Connection refused"
    assert leftovers(tmp_path / "cache") == []


def test_http_404_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(server.url("/missing.h5"), tmp_path / "cache")
    assert "HTTP 404" in one_line(e) and "/missing.h5" in str(e.value)
    assert leftovers(tmp_path / "cache") == []


def test_a_silent_server_times_out(server: Server, tmp_path: Path) -> None:
    server.delay = 1.0
    start = time.monotonic()
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(server.url("/datasets.h5"), tmp_path / "cache", timeout=0.2)
    assert time.monotonic() - start < 0.9
    assert "timed out" in one_line(e) or "no answer within 0.2 s" in str(e.value)
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/datasets.h5", "x"])
def test_only_http_urls_are_fetched(url: str, tmp_path: Path) -> None:
    with pytest.raises(dataset_fetch.FetchError) as e:
        dataset_fetch.fetch(url, tmp_path / "cache")
    assert "only http:// and https://" in one_line(e)


def test_the_url_comes_from_the_argument_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert dataset_fetch.resolve_url("http://a/x") == "http://a/x"
    monkeypatch.setenv(dataset_fetch.URL_VARIABLE, "http://b/y")
    assert dataset_fetch.resolve_url(None) == "http://b/y"
    monkeypatch.delenv(dataset_fetch.URL_VARIABLE)
    assert dataset_fetch.resolve_url(None) == dataset_fetch.DEFAULT_URL


# the command ----------------------------------------------------------------------------


def test_cli_fetch_caches_then_uses_the_cache_and_copies_to_out(
    server: Server, no_internet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataset", "fetch", "--url", server.url("/datasets.h5")]) == 0
    out = capsys.readouterr().out
    cached = no_internet / "datasets" / "datasets.h5"
    assert f"downloaded {server.url('/datasets.h5')} to {cached}" in out
    copy = tmp_path / "copy"
    copy.mkdir()
    assert main(["dataset", "fetch", "--url", server.url("/datasets.h5"), "--out", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "not downloading" in out and f"copied to {copy / 'datasets.h5'}" in out
    assert (copy / "datasets.h5").read_bytes() == cached.read_bytes()
    assert len(server.requests) == 1


def test_cli_fetch_takes_the_url_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(dataset_fetch.URL_VARIABLE, server.url("/datasets.h5"))
    assert main(["dataset", "fetch"]) == 0
    assert server.requests == ["/datasets.h5"]


def test_cli_fetch_errors_are_one_line(
    server: Server, no_internet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url, expected in (
        (server.url("/other.h5"), "is not the expected dataset"),
        (server.url("/missing.h5"), "HTTP 404"),
        (f"http://127.0.0.1:{closed_port()}/d.h5", "Connection refused"),
    ):
        assert main(["dataset", "fetch", "--url", url]) == 2
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if not line.startswith("[")]
        assert len(errors) == 1 and errors[0].startswith("itsacat: error: ")
        assert expected in errors[0] and captured.out == ""
        assert leftovers(no_internet / "datasets") == []


def test_cli_fetch_error_as_a_user_sees_it(server: Server, no_internet: Path) -> None:
    """The real command: exit code 2, one line on stderr besides the progress bar."""
    done = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "dataset", "fetch", "--url", server.url("/other.h5")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith("itsacat: error: http://127.0.0.1:")
    assert "Traceback" not in done.stderr
    assert leftovers(no_internet / "datasets") == []


# choose ---------------------------------------------------------------------------------


def test_choose_the_given_file_first(server: Server, tmp_path: Path, real: bytes) -> None:
    given = tmp_path / "mine.h5"
    given.write_bytes(real)
    said: list[str] = []
    src = dataset_source.choose(str(given), tmp_path / "home", server.url("/x"), said.append)
    assert src == (given, "the file you gave") and not src.synthetic
    assert said == [f"dataset: {given} (the file you gave)"]
    assert server.requests == []


def test_choose_a_missing_given_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        dataset_source.choose(str(tmp_path / "nope.h5"), tmp_path, None, print)


def test_choose_the_cache_before_a_download(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    dataset_fetch.fetch(server.url("/datasets.h5"), dataset_fetch.cache_dir(home))
    said: list[str] = []
    for _ in range(2):
        path, where = dataset_source.choose(None, home, server.url("/datasets.h5"), said.append)
        assert path == dataset_fetch.cache_dir(home) / "datasets.h5" and where == "the cache"
    assert len(server.requests) == 1
    assert len(said) == 2 and all("cached" in line for line in said)


def test_required_is_the_given_file_else_the_cache_else_one_line_saying_what_to_do(
    server: Server, tmp_path: Path, real: bytes
) -> None:
    """What the benchmarks train on: nothing is downloaded, nothing beside the checkout."""
    home = tmp_path / "home"
    with pytest.raises(UserError) as e:
        dataset_source.required(None, home)
    assert "itsacat dataset fetch" in str(e.value) and "--dataset" in str(e.value)
    assert "\n" not in str(e.value) and server.requests == []
    with pytest.raises(UserError, match="no such file"):
        dataset_source.required(str(tmp_path / "nope.h5"), home)
    given = tmp_path / "mine.h5"
    given.write_bytes(real)
    assert dataset_source.required(str(given), home) == given
    dataset_fetch.fetch(server.url("/datasets.h5"), dataset_fetch.cache_dir(home))
    assert dataset_source.required(None, home) == dataset_fetch.cache_dir(home) / "datasets.h5"


def test_choose_downloads_when_nothing_is_here(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    said: list[str] = []
    url = server.url("/datasets.h5")
    path, where = dataset_source.choose(None, home, url, said.append)
    assert path == dataset_fetch.cache_dir(home) / "datasets.h5"
    assert where == f"downloaded from {url}"
    assert server.requests == ["/datasets.h5"]
    assert f"downloading {url}" in said[0] and "downloaded" in said[-1]
    # ... and the environment's URL when none is given
    shutil.rmtree(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dataset_fetch.URL_VARIABLE, server.url("/no-length.h5"))
        path, where = dataset_source.choose(None, home, None, said.append)
    assert where == f"downloaded from {server.url('/no-length.h5')}"
    assert server.requests == ["/datasets.h5", "/no-length.h5"]


def test_choose_the_stand_in_only_when_the_download_fails(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    said: list[str] = []
    src = dataset_source.choose(None, home, server.url("/other.h5"), said.append)
    assert src.synthetic
    assert src.path == home / "demo-data" / "synthetic.h5"
    assert src.description.startswith("a generated stand-in (")
    assert "is not the expected dataset" in src.description
    assert said[-1].startswith("WARNING: could not get the cat data (")
    assert "GENERATED stand-in" in said[-1] and "\n" not in said[-1]
    assert datasets.load(src.path).classes == datasets.DEFAULT_CLASSES
    assert leftovers(dataset_fetch.cache_dir(home)) == []
    assert leftovers(home / "demo-data") == ["synthetic.h5"]


def test_choose_without_a_network_says_why(tmp_path: Path) -> None:
    """No --url: the environment's URL (a closed port here) is tried, then the stand-in."""
    said: list[str] = []
    src = dataset_source.choose(None, tmp_path / "home", None, said.append)
    assert src.synthetic and "Connection refused" in said[-1]
