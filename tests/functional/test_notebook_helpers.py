"""itsacat.notebook's helpers without a stack: the staging comparison against a fake API,
the request timing, the dataset's order of preference, and stopping servers by name."""

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from itsacat import background, dataset_fetch, notebook
from itsacat.errors import UserError
from trainer_lambdas import datasets

PRODUCTION = {"run_id": "run-a", "stage": "production", "test_accuracy": 0.7, "epochs": 10}
STAGING = {"run_id": "run-b", "stage": "staging", "test_accuracy": 0.8, "epochs": 20}


class FakeApi:
    """/model, /image and their /staging twins; `staging` None: no candidate (503)."""

    def __init__(self) -> None:
        self.staging: dict[str, Any] | None = STAGING
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests += 1
                url = urlsplit(self.path)
                stage = "staging" if url.path.startswith("/staging") else "production"
                model = PRODUCTION if stage == "production" else api.staging
                if model is None:
                    self.answer(503, {"error": "no candidate", "code": "no_model"})
                elif url.path.endswith("/model"):
                    self.answer(200, model)
                elif url.path.endswith("/image"):
                    picture = parse_qs(url.query)["image"][0]
                    # production says cat to everything, staging only to cat pictures
                    p = 0.9 if stage == "production" or "cat" in picture else 0.1
                    label = "cat" if p > 0.5 else "non-cat"
                    self.answer(200, {"label": label, "probability": p, "model": model})
                else:
                    self.answer(404, {"message": "Missing Authentication Token"})

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def servers(api: FakeApi, tmp_path: Path) -> notebook.Servers:
    names = ("cat.png", "tower.png")
    for i, name in enumerate(names):
        Image.new("RGB", (8 + 8 * i, 8), (200, 100, 50)).save(tmp_path / name)
    return notebook.Servers(api.url, "http://127.0.0.2:8", tmp_path, names)


def test_compare_stages_shows_both_models_and_where_they_disagree(
    servers: notebook.Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    assert notebook.compare_stages(servers) == STAGING
    out = capsys.readouterr().out
    assert "run-a" in out and "run-b" in out
    assert "test_accuracy    0.7000" in out
    assert "agree on 1 of 2 pictures" in out
    tower = next(line for line in out.splitlines() if line.startswith("tower.png"))
    assert "cat (p(cat) 0.900)" in tower and "non-cat (p(cat) 0.100)" in tower
    assert tower.endswith("NO")


def test_compare_stages_without_a_candidate_says_so(
    api: FakeApi, servers: notebook.Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    api.staging = None
    assert notebook.compare_stages(servers) is None
    out = capsys.readouterr().out
    assert "No staging candidate yet: GET /staging/model answered HTTP 503 no_model." in out


def test_image_urls_name_the_stage_and_quote_the_picture(servers: notebook.Servers) -> None:
    assert servers.image_url("cat.png") == (
        f"{servers.api}/image?image=http%3A%2F%2F127.0.0.2%3A8%2Fcat.png"
    )
    assert servers.image_url("a b.png", "staging").startswith(f"{servers.api}/staging/image?")
    assert "a%2520b.png" in servers.image_url("a b.png")
    assert servers.smallest() == "cat.png"


def test_time_requests_counts_answers_and_codes(api: FakeApi, servers: notebook.Servers) -> None:
    one = notebook.time_requests(servers.image_url("cat.png"), 6)
    many = notebook.time_requests(f"{api.url}/nowhere", 8, threads=3)
    assert len(one.seconds) == 6 and one.codes == {200: 6} and one.threads == 1
    assert many.codes == {404: 8} and many.threads == 3
    assert api.requests == 14
    assert "6 requests, 1 at a time" in str(one) and "(status 200: 6)" in str(one)
    assert one.throughput > 0 and one.percentile(50) <= one.percentile(95)
    fig = notebook.latency_figure(("one", one), ("many", many))
    assert len(fig.axes) == 1


def test_a_verdict_that_failed_shows_its_status_and_code() -> None:
    assert notebook._verdict(503, {"code": "no_model"}) == "HTTP 503 no_model"
    assert notebook._verdict(200, {"label": "cat", "probability": 0.25}) == "cat (p(cat) 0.250)"


def test_default_dataset_is_the_cache_else_a_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    small = datasets.synthesize(m_train=6, m_test=2, side=4, seed=1)
    monkeypatch.setattr(datasets, "synthesize", lambda: small)  # the stand-in, made quickly
    stand_in = notebook.default_dataset(home)
    assert datasets.load(stand_in).require_train().m == 6
    assert "GENERATED stand-in" in capsys.readouterr().out
    cached = home / "datasets" / "datasets.h5"
    monkeypatch.setattr(dataset_fetch, "cached", lambda h: cached if h == home else None)
    assert notebook.default_dataset(home) == cached


def test_pictures_from_the_test_set_or_a_folder_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITSACAT_HOME", str(tmp_path / "home"))
    data = tmp_path / "d.h5"
    datasets.save(datasets.synthesize(m_train=3, m_test=3, side=4, seed=2), data)
    folder, names = notebook.pictures(data)
    assert folder == tmp_path / "home" / "notebook-pictures"
    assert len(names) == 3 and all(n.startswith("sample") for n in names)
    assert Image.open(folder / names[0]).size == (256, 256)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("b.JPG", "a.png", "notes.txt"):
        (mine / name).write_bytes(b"")
    assert notebook.pictures(data, images=mine) == (mine, ["a.png", "b.JPG"])
    with pytest.raises(UserError, match="no such folder"):
        notebook.pictures(data, images=tmp_path / "nothing")


def test_parameters_take_the_plan_and_its_fanout() -> None:
    p = notebook.parameters(7, "hybrid")
    assert (p.epochs, p.distribution, p.neurons_per_invocation) == (7, "hybrid", 4096)
    d = notebook.parameters(None, "fanout")
    assert d.distribution == "fanout" and d.neurons_per_invocation == 1 and d.epochs == 2500


def test_stop_all_with_names_stops_only_those(tmp_path: Path) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        for name in ("api", *notebook.SERVERS):
            background.start(name, [*sleep, name], {}, tmp_path, home=tmp_path)
        assert set(background.running(tmp_path)) == {"api", *notebook.SERVERS}
        stopped = background.stop_all(tmp_path, names=notebook.SERVERS)
        assert sorted(stopped) == sorted(notebook.SERVERS)
        assert set(background.running(tmp_path)) == {"api"}
    finally:
        assert background.stop_all(tmp_path) in ([], ["api"])
    assert not (tmp_path / "background.json").exists()
