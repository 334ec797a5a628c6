"""API tier: the prediction API (chalice_app/) over real servers on loopback.

What these tests may use: the API's code called in process (its routes through Chalice's
test client, `chalicelib` directly) or served by `itsacat serve` (the `chalice local`
server, a subprocess); S3 as a moto server on 127.0.0.1 in a thread (`moto_endpoint`),
holding models published as training publishes them; picture servers of their own; and,
where a test says so, the session's embedded stack (`embedded_stack`, tests/conftest.py).
Nothing here reaches the internet: S3 is a moto server on 127.0.0.1, pictures are served
from 127.0.0.2 (allowed in tests that say so) and 127.0.0.1 (always refused).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from api_support import CHALICE_DIR, ROOT, PictureServer, TinyModel, train_tiny_model

# chalicelib (and app.py) import as in `chalice local`: from chalice_app/, project root beside.
for _path in (str(ROOT), str(CHALICE_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from chalicelib import service  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from state.models import ModelStore  # noqa: E402


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a target gives the API (moto as S3), with a fresh bucket name."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ITSACAT_BUCKET": f"itsacat-test-{uuid.uuid4().hex[:12]}",
    }
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "ITSACAT_ALLOW_HOSTS",
        "ITSACAT_FETCH_DEADLINE_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    # The picture servers listen on random ports (the API fetches from 80 and 443 only
    # unless told otherwise; tests/api/test_api_fetch_deadline.py checks that default).
    env["ITSACAT_FETCH_PORTS"] = "any"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3(aws_env: dict[str, str]) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=aws_env["ITSACAT_BUCKET"])
    return client


@pytest.fixture
def store(s3: Any, aws_env: dict[str, str]) -> ModelStore:
    return ModelStore(aws_env["ITSACAT_BUCKET"], s3_client=s3)


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    return train_tiny_model(seed=1)


@pytest.fixture
def published(store: ModelStore, tiny_model: TinyModel) -> ModelStore:
    """The store, holding `tiny_model` as run `run-1`."""
    store.publish("run-1", tiny_model.weights, tiny_model.metadata)
    return store


@pytest.fixture(autouse=True)
def fresh_service() -> Iterator[None]:
    """Each test sees the API as a cold function: settings and model re-read."""
    service.reset()
    yield
    service.reset()


@pytest.fixture(scope="session")
def pictures() -> Iterator[PictureServer]:
    """The picture server the tests allow (127.0.0.2)."""
    server = PictureServer("127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def forbidden_pictures() -> Iterator[PictureServer]:
    """The same pictures on 127.0.0.1, which stays refused: it must never be asked."""
    server = PictureServer("127.0.0.1").start()
    yield server
    server.stop()
