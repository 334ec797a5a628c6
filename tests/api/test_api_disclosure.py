"""What the API tells clients and what it logs instead.

`GET /model` answers an allow-listed set of fields; failures (5xx) answer a generic message
and log the details; refusals (4xx) are logged at WARNING with the client's address and the
host it asked us to fetch; JSON is `nosniff`; the page may not be framed.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import CHALICE_DIR, TinyModel
from app import app
from chalice.test import Client

from state.models import ModelStore

ALLOWED = {
    "run_id",
    "stage",
    "trained_at",
    "input_shape",
    "classes",
    "activations",
    "parameters",
    "final_cost",
    "train_accuracy",
    "test_accuracy",
    "epochs",
}


@pytest.fixture
def client(aws_env: dict[str, str]) -> Iterator[Client]:
    with Client(app, stage_name="local", project_dir=str(CHALICE_DIR)) as c:
        yield c


def _answer(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.body))


def test_model_answers_allow_listed_fields_only(
    client: Client, store: ModelStore, tiny_model: TinyModel
) -> None:
    # As the trainer publishes it: with the dataset it came from.
    metadata = {
        **tiny_model.metadata,
        "dataset": {"bucket": store.bucket, "key": "training_input/datasets.h5", "version": "v7"},
    }
    store.publish("run-1", tiny_model.weights, metadata)
    response = client.http.get("/model")
    assert response.status_code == 200
    answer = _answer(response)
    assert set(answer) <= ALLOWED
    assert {"run_id", "trained_at", "input_shape", "test_accuracy", "epochs"} <= set(answer)
    text = response.body.decode()
    for secret in (store.bucket, "datasets.h5", "params_key", "etag", "s3://"):
        assert secret not in text
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_failures_answer_generically_and_log_the_details(
    client: Client,
    aws_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # S3 cannot be reached (a closed port on loopback): the store is unavailable.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    bucket = aws_env["ITSACAT_BUCKET"]
    with caplog.at_level(logging.INFO):
        response = client.http.get("/model")
    assert response.status_code == 503
    assert _answer(response) == {
        "error": "the model store is unavailable",
        "code": "model_store_unavailable",
    }
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert bucket not in response.body.decode() and closed not in response.body.decode()
    failures = [r.getMessage() for r in caplog.records if r.name == "chalicelib.views"]
    assert any(closed in line and "model_store_unavailable" in line for line in failures)


def test_no_model_names_no_bucket_but_the_log_does(
    client: Client, store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = client.http.get("/model")
    assert response.status_code == 503
    assert _answer(response) == {"error": "no model has been trained yet", "code": "no_model"}
    assert store.bucket in caplog.text


def test_refusals_are_logged_as_warnings_with_address_and_host(
    client: Client, store: ModelStore, tiny_model: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    store.publish("run-1", tiny_model.weights, tiny_model.metadata)
    with caplog.at_level(logging.INFO):
        response = client.http.get("/image?image=http://169.254.169.254/latest/meta-data/")
    assert response.status_code == 400
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert refusals, caplog.text
    line = refusals[-1].getMessage()
    assert "address_refused" in line
    assert "127.0.0.1" in line  # the client's address (chalice's local sourceIp)
    assert "169.254.169.254" in line

    caplog.clear()
    with caplog.at_level(logging.INFO):
        response = client.http.post("/image", headers={"Content-Type": "text/plain"}, body=b"x")
    assert response.status_code == 415
    assert any(
        r.levelno == logging.WARNING and "127.0.0.1" in r.getMessage() for r in caplog.records
    )


def test_the_page_may_not_be_framed(client: Client, store: ModelStore) -> None:
    response = client.http.get("/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
