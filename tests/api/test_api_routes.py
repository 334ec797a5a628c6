"""Every route, status and error of the API, through `chalice.test.Client` (moto as S3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import (
    BLUE,
    CHALICE_DIR,
    MB,
    RED,
    PictureServer,
    TinyModel,
    picture,
    png_declaring,
    train_tiny_model,
    truncated_jpeg,
)
from app import app
from chalice.test import Client
from chalicelib import images, service
from PIL import Image

from state.models import ModelStore
from tests.support import data as test_data
from trainer_lambdas.nn.network import predict_proba

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def client(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setenv("ITSACAT_ALLOW_HOSTS", "127.0.0.2")
    with Client(app, stage_name="local", project_dir=str(CHALICE_DIR)) as c:
        yield c


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.body)


def expected_probability(model: TinyModel, data: bytes) -> float:
    """The oracle: the training code's forward pass on the picture, computed here."""
    rgb = images.oriented_rgb(images.open_image(data, 10**8))
    x = images.to_input(rgb, (16, 16, 3))
    return float(predict_proba(model.weights, model.parameters.activations, x)[0, 0])


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    answer = body(response)
    assert answer["code"] == code and answer["error"], answer
    assert set(answer) == {"error", "code"}
    assert "Traceback" not in answer["error"]
    return answer


# -- GET / and GET /model


def test_ping_with_a_model(client: Client, published: ModelStore, tiny_model: TinyModel) -> None:
    response = client.http.get("/")
    assert response.status_code == 200
    answer = body(response)
    assert answer["message"] == "Ping Successful!"
    assert answer["model"]["run_id"] == "run-1"
    assert answer["model"]["test_accuracy"] == tiny_model.metadata["test_accuracy"]


def test_ping_without_a_model(client: Client, store: ModelStore) -> None:
    response = client.http.get("/")
    assert response.status_code == 200
    assert body(response) == {"message": "Ping Successful!", "model": None}


def test_index_page_for_browsers(client: Client, published: ModelStore) -> None:
    response = client.http.get("/", headers=HTML)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert '<form id="url-form" method="get" action="image">' in page and 'name="image"' in page
    assert 'type="file"' in page and "Model run-1 (production)" in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


# -- the staging stage: /staging routes, and an API run for staging (ITSACAT_STAGE)


@pytest.fixture
def candidate(published: ModelStore, tiny_model: TinyModel) -> TinyModel:
    """run-1 in production, a different model (run-2) the staging candidate."""
    flipped = train_tiny_model(seed=3, epochs=20)
    published.store("run-2", flipped.weights, {**flipped.metadata, "test_accuracy": 0.1})
    assert not published.offer("run-2").promoted
    return flipped


def test_staging_routes_answer_with_the_candidate(
    client: Client, candidate: TinyModel, pictures: PictureServer
) -> None:
    assert body(client.http.get("/model"))["stage"] == "production"
    staged = body(client.http.get("/staging/model"))
    assert (staged["run_id"], staged["stage"]) == ("run-2", "staging")
    pictures.files["red.png"] = ("image/png", picture(RED))
    url = pictures.url("/gen/red.png")
    prod = body(client.http.get(f"/image?image={url}"))
    stag = body(client.http.get(f"/staging/image?image={url}"))
    assert prod["model"]["run_id"] == "run-1" and prod["model"]["stage"] == "production"
    assert stag["model"]["run_id"] == "run-2" and stag["model"]["stage"] == "staging"
    data = picture(RED)
    assert stag["probability"] == pytest.approx(expected_probability(candidate, data))
    posted = client.http.post("/staging/image", body=data, headers={"Content-Type": "image/png"})
    assert body(posted)["model"]["run_id"] == "run-2"


def test_the_staging_page_sends_its_forms_to_staging(client: Client, candidate: TinyModel) -> None:
    page = client.http.get("/staging", headers=HTML).body.decode()
    assert "Model run-2 (staging)" in page and "Is it a cat? (staging)" in page
    assert 'action="/staging/image"' in page  # absolute: /staging and /staging/ are one route


def test_no_staging_candidate_is_503_no_model(client: Client, store: ModelStore) -> None:
    answer = assert_error(client.http.get("/staging/model"), 503, "no_candidate")
    assert "no candidate model is in staging yet" in answer["error"]


def test_an_api_run_for_staging_serves_the_candidate_at_its_root(
    aws_env: dict[str, str], candidate: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITSACAT_STAGE", "staging")
    with Client(app, stage_name="local", project_dir=str(CHALICE_DIR)) as c:
        assert body(c.http.get("/model"))["run_id"] == "run-2"
        assert "Model run-2 (staging)" in c.http.get("/", headers=HTML).body.decode()
    service.reset()
    monkeypatch.setenv("ITSACAT_STAGE", "blue")
    with Client(app, stage_name="local", project_dir=str(CHALICE_DIR)) as c:
        answer = assert_error(c.http.get("/model"), 500, "internal_error")
    assert answer["error"] == "internal error"


def test_model_metadata(client: Client, published: ModelStore, tiny_model: TinyModel) -> None:
    response = client.http.get("/model")
    assert response.status_code == 200
    answer = body(response)
    assert answer["run_id"] == "run-1"
    assert answer["input_shape"] == [16, 16, 3]
    assert answer["parameters"] == tiny_model.parameters.to_json()
    assert "uri" not in answer and published.bucket not in response.body.decode()


def test_no_model_is_503(client: Client, store: ModelStore, pictures: PictureServer) -> None:
    assert_error(client.http.get("/model"), 503, "no_model")
    pictures.files["red.png"] = ("image/png", picture(RED))
    url = pictures.url("/gen/red.png")
    assert_error(client.http.get(f"/image?image={url}"), 503, "no_model")
    response = client.http.post("/image", headers={"Content-Type": "image/png"}, body=picture(RED))
    answer = assert_error(response, 503, "no_model")
    assert answer["error"] == "no model has been trained yet"  # where it looked: in the log


def test_no_bucket_configured_is_503(
    client: Client, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ITSACAT_BUCKET")
    assert_error(client.http.get("/model"), 503, "no_model_store")
    assert body(client.http.get("/"))["model"] is None


# -- GET /image?image=URL


@pytest.mark.parametrize("colour, label", [(RED, "cat"), (BLUE, "non-cat")])
def test_verdict_on_a_url(
    client: Client,
    published: ModelStore,
    tiny_model: TinyModel,
    pictures: PictureServer,
    colour: tuple[int, int, int],
    label: str,
) -> None:
    data = picture(colour, "JPEG", size=(64, 48))
    pictures.files[f"{label}.jpeg"] = ("image/jpeg", data)
    response = client.http.get(f"/image?image={pictures.url(f'/gen/{label}.jpeg')}")
    assert response.status_code == 200, response.body
    answer = body(response)
    assert answer["label"] == label
    assert answer["probability"] == pytest.approx(expected_probability(tiny_model, data), abs=1e-12)
    assert answer["model"] == {
        "run_id": "run-1",
        "stage": "production",
        "trained_at": answer["model"]["trained_at"],
        "test_accuracy": tiny_model.metadata["test_accuracy"],
    }


def test_verdict_page_for_browsers(
    client: Client, published: ModelStore, pictures: PictureServer
) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    response = client.http.get(f"/image?image={pictures.url('/gen/red.png')}", headers=HTML)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert '<p class="verdict">cat</p>' in page
    assert 'src="data:image/jpeg;base64,' in page


def test_the_url_is_escaped_in_the_page(
    client: Client, published: ModelStore, pictures: PictureServer
) -> None:
    pictures.files["x.png"] = ("image/png", picture(RED))
    url = pictures.url("/gen/x.png?<script>alert(1)</script>")
    response = client.http.get(f"/image?image={url}", headers=HTML)
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.body.decode()


REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "address_refused"),
    ("http://127.0.0.1:{forbidden}/gen/red.png", "address_refused"),
    ("http://2130706433/", "address_refused"),
    ("http://0x7f.1/", "address_refused"),
    ("http://0x7f.0.0.2/", None),  # 127.0.0.2 in hex notation: allowed, like its dotted form
    ("http://[::1]/", "address_refused"),
    ("http://[::ffff:127.0.0.1]/", "address_refused"),
    ("http://[::ffff:169.254.169.254]/", "address_refused"),
    ("http://localhost:{forbidden}/gen/red.png", "address_refused"),
    ("http://10.0.0.1/", "address_refused"),
    ("http://[fe80::1]/", "address_refused"),
    ("http://0.0.0.0/", "address_refused"),
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("ftp://127.0.0.2/red.png", "scheme_not_allowed"),
    ("gopher://127.0.0.2/", "scheme_not_allowed"),
    ("http://[::1", "bad_url"),
    ("not a url", "bad_url"),
]


@pytest.mark.parametrize("template, code", REFUSED)
def test_refusals(
    client: Client,
    published: ModelStore,
    pictures: PictureServer,
    forbidden_pictures: PictureServer,
    template: str,
    code: str | None,
) -> None:
    forbidden_pictures.files["red.png"] = ("image/png", picture(RED))
    before = forbidden_pictures.hits()
    url = template.format(forbidden=forbidden_pictures.port)
    response = client.http.get(f"/image?image={url}")
    if code is None:  # allowed: it gets as far as connecting (port 80: nothing listens)
        assert response.status_code == 502, response.body
    else:
        assert_error(response, 400, code)
    assert forbidden_pictures.hits() == before


def test_the_same_picture_from_the_allowed_address_passes(
    client: Client,
    published: ModelStore,
    pictures: PictureServer,
    forbidden_pictures: PictureServer,
) -> None:
    for server in (pictures, forbidden_pictures):
        server.files["red.png"] = ("image/png", picture(RED))
    assert client.http.get(f"/image?image={pictures.url('/gen/red.png')}").status_code == 200
    response = client.http.get(f"/image?image={forbidden_pictures.url('/gen/red.png')}")
    assert_error(response, 400, "address_refused")


def test_a_redirect_to_a_refused_address(
    client: Client,
    published: ModelStore,
    pictures: PictureServer,
    forbidden_pictures: PictureServer,
) -> None:
    forbidden_pictures.files["red.png"] = ("image/png", picture(RED))
    before = forbidden_pictures.hits()
    hop = pictures.url(f"/redirect?to={forbidden_pictures.url('/gen/red.png')}")
    response = client.http.get(f"/image?{_query(hop)}")
    assert_error(response, 400, "address_refused")
    assert forbidden_pictures.hits() == before


def _query(url: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"image": url})


def test_missing_image_parameter_is_400(client: Client, published: ModelStore) -> None:
    assert_error(client.http.get("/image"), 400, "missing_image")
    assert_error(client.http.get("/image?image="), 400, "missing_image")
    assert_error(client.http.get("/image?picture=http://127.0.0.2/"), 400, "missing_image")


@pytest.mark.parametrize(
    "name, kind, data, status, code",
    [
        ("text.jpeg", "image/jpeg", b"this is not a picture", 422, "not_an_image"),
        ("truncated.jpeg", "image/jpeg", truncated_jpeg(), 422, "not_an_image"),
        ("bomb.png", "image/png", png_declaring(100_000, 100_000), 413, "too_many_pixels"),
    ],
)
def test_bad_pictures_at_a_url(
    client: Client,
    published: ModelStore,
    pictures: PictureServer,
    name: str,
    kind: str,
    data: bytes,
    status: int,
    code: str,
) -> None:
    pictures.files[name] = (kind, data)
    assert_error(client.http.get(f"/image?image={pictures.url('/gen/' + name)}"), status, code)


def test_a_20_mb_picture_at_a_url_is_413(
    client: Client, published: ModelStore, pictures: PictureServer
) -> None:
    response = client.http.get(f"/image?image={pictures.url(f'/stream/{20 * MB}')}")
    assert_error(response, 413, "too_large")


def test_an_upstream_404_is_502(
    client: Client, published: ModelStore, pictures: PictureServer
) -> None:
    assert_error(client.http.get(f"/image?image={pictures.url('/missing')}"), 502, "upstream_error")


# -- POST /image


@pytest.mark.parametrize(
    "fmt, kind",
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_verdict_on_a_posted_picture(
    client: Client, published: ModelStore, tiny_model: TinyModel, fmt: str, kind: str
) -> None:
    data = picture(BLUE, fmt)
    response = client.http.post("/image", headers={"Content-Type": kind}, body=data)
    assert response.status_code == 200, response.body
    answer = body(response)
    assert answer["label"] == "non-cat"
    assert answer["probability"] == pytest.approx(expected_probability(tiny_model, data), abs=1e-12)


def test_posted_picture_as_octet_stream_and_html(client: Client, published: ModelStore) -> None:
    response = client.http.post(
        "/image",
        headers={"Content-Type": "application/octet-stream", **HTML},
        body=picture(RED),
    )
    assert response.status_code == 200
    assert '<p class="verdict">cat</p>' in response.body.decode()


@pytest.mark.parametrize(
    "kind, data, status, code",
    [
        ("image/jpeg", b"hello, this is text", 422, "not_an_image"),
        ("image/jpeg", truncated_jpeg(), 422, "not_an_image"),
        ("image/png", png_declaring(100_000, 100_000), 413, "too_many_pixels"),
        ("image/png", png_declaring(8000, 8000), 413, "too_many_pixels"),
        ("image/jpeg", b"\xff" * (20 * MB), 413, "image_too_large"),
        ("image/png", b"", 400, "missing_image"),
        ("text/plain", b"hello", 415, "unsupported_media_type"),
        ("application/json", b"{}", 415, "unsupported_media_type"),
    ],
    ids=["text", "truncated", "bomb", "bomb-over-our-limit", "20MB", "empty", "text-type", "json"],
)
def test_bad_posted_bodies(
    client: Client, published: ModelStore, kind: str, data: bytes, status: int, code: str
) -> None:
    response = client.http.post("/image", headers={"Content-Type": kind}, body=data)
    assert_error(response, status, code)


def test_unexpected_errors_are_json_500_without_traceback(
    client: Client, published: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "ping", broken)
    answer = assert_error(client.http.get("/"), 500, "internal_error")
    assert "secret" not in answer["error"]


# -- a new model is picked up by the warm app


def test_a_new_model_is_picked_up_without_restarting(
    client: Client, published: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITSACAT_MODEL_CHECK_SECONDS", "0")
    service.reset()
    red = picture(RED)
    first = body(client.http.post("/image", headers={"Content-Type": "image/png"}, body=red))
    assert first["model"]["run_id"] == "run-1" and first["label"] == "cat"
    # The next model thinks the other way round: red pictures are not cats.
    flipped = train_tiny_model(seed=5)
    last_w, last_b = flipped.weights[-1]
    flipped.weights[-1] = (-last_w, -last_b)
    published.publish("run-2", flipped.weights, flipped.metadata)
    second = body(client.http.post("/image", headers={"Content-Type": "image/png"}, body=red))
    assert second["model"]["run_id"] == "run-2" and second["label"] == "non-cat"
    assert body(client.http.get("/model"))["run_id"] == "run-2"


def test_the_model_is_cached_between_checks(
    client: Client, published: ModelStore, tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ITSACAT_MODEL_CHECK_SECONDS", "3600")
    service.reset()
    assert body(client.http.get("/model"))["run_id"] == "run-1"
    published.publish("run-2", tiny_model.weights, tiny_model.metadata)
    assert body(client.http.get("/model"))["run_id"] == "run-1"
    service.model_cache().check_seconds = 0
    assert body(client.http.get("/model"))["run_id"] == "run-2"


def test_sample_photo_of_the_shared_data(
    client: Client, published: ModelStore, tiny_model: TinyModel, pictures: PictureServer
) -> None:
    test_data.require()
    response = client.http.get(f"/image?image={pictures.url('/photos/grumpy_cat.jpeg')}")
    assert response.status_code == 200, response.body
    answer = body(response)
    from api_support import SAMPLE_PHOTOS

    data = (SAMPLE_PHOTOS / "grumpy_cat.jpeg").read_bytes()
    assert answer["probability"] == pytest.approx(expected_probability(tiny_model, data), abs=1e-12)
    assert isinstance(Image.open(SAMPLE_PHOTOS / "grumpy_cat.jpeg"), Image.Image)
