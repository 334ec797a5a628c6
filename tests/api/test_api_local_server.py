"""A real `itsacat serve` (`chalice local`) process answering HTTP, against moto S3.

Pictures come from a real HTTP server on 127.0.0.2, which the server is started to allow
(`--allow-hosts 127.0.0.2`); the same pictures on 127.0.0.1 stay refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from api_support import (
    RED,
    ROOT,
    SAMPLE_PHOTOS,
    PictureServer,
    TinyModel,
    picture,
    store_with_model,
    train_tiny_model,
)
from chalicelib import images

from state.models import ModelStore
from tests.support import data as test_data
from trainer_lambdas.nn.network import predict_proba


@dataclass
class Api:
    base: str
    store: ModelStore
    log: Any

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.request(urllib.request.Request(self.base + path, headers=headers or {}))

    def request(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def image(self, url: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/image?" + urlencode({"image": url}))
        return status, json.loads(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api(
    moto_endpoint: str, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    store = store_with_model(
        moto_endpoint, "itsacat-serve", "run-1", tiny_model.weights, tiny_model.metadata
    )
    bucket = store.bucket
    creds = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    env.update(creds, ITSACAT_BUCKET=bucket, ITSACAT_MODEL_CHECK_SECONDS="0.2")
    env["ITSACAT_FETCH_PORTS"] = "any"  # the picture servers listen on random ports
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "itsacat.cli",
            "serve",
            "--port",
            str(port),
            "--allow-hosts",
            "127.0.0.2",
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = Api(f"http://127.0.0.1:{port}", store, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"itsacat serve exited {process.returncode}:\n{log_path.read_text()}")
            try:
                if api.get("/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"itsacat serve did not answer:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield api
    finally:
        # `itsacat serve` became `chalice local` (exec): this pid is the server.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_ping(api: Api) -> None:
    status, body = api.get("/")
    assert status == 200
    answer = json.loads(body)
    assert answer["message"] == "Ping Successful!" and answer["model"]["run_id"] == "run-1"


def test_sample_photo_from_the_allowed_address(
    api: Api, pictures: PictureServer, forbidden_pictures: PictureServer, tiny_model: TinyModel
) -> None:
    test_data.require()
    photo = SAMPLE_PHOTOS / "grumpy_cat.jpeg"
    status, answer = api.image(pictures.url("/photos/grumpy_cat.jpeg"))
    assert status == 200, answer
    rgb = images.oriented_rgb(images.open_image(photo.read_bytes(), 10**8))
    x = images.to_input(rgb, (16, 16, 3))
    expected = float(predict_proba(tiny_model.weights, tiny_model.parameters.activations, x)[0, 0])
    assert answer["probability"] == pytest.approx(expected, abs=1e-12)
    assert answer["label"] == ("cat" if expected > 0.5 else "non-cat")

    before = forbidden_pictures.hits()
    status, answer = api.image(forbidden_pictures.url("/photos/grumpy_cat.jpeg"))
    assert status == 400 and answer["code"] == "address_refused"
    assert forbidden_pictures.hits() == before


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://[::1]/",
        "http://localhost/",
        "file:///etc/passwd",
    ],
)
def test_refusals(api: Api, url: str) -> None:
    status, answer = api.image(url)
    assert status == 400 and set(answer) == {"error", "code"}


def test_posted_picture_and_html(api: Api) -> None:
    request = urllib.request.Request(
        api.base + "/image",
        data=picture(RED),
        headers={"Content-Type": "image/png"},
        method="POST",
    )
    status, body = api.request(request)
    assert status == 200 and json.loads(body)["label"] == "cat"
    status, body = api.get("/", headers={"Accept": "text/html"})
    assert status == 200 and b"<form" in body
    request = urllib.request.Request(
        api.base + "/image", data=b"plain text", headers={"Content-Type": "image/jpeg"}
    )
    status, body = api.request(request)
    assert status == 422 and json.loads(body)["code"] == "not_an_image"


def test_a_new_model_is_picked_up(api: Api) -> None:
    flipped = train_tiny_model(seed=7)
    w, b = flipped.weights[-1]
    flipped.weights[-1] = (-w, -b)
    api.store.publish("run-2", flipped.weights, flipped.metadata)
    deadline = time.monotonic() + 10
    while json.loads(api.get("/model")[1])["run_id"] != "run-2":
        assert time.monotonic() < deadline, "the server kept the old model"
        time.sleep(0.1)
    request = urllib.request.Request(
        api.base + "/image", data=picture(RED), headers={"Content-Type": "image/png"}
    )
    status, body = api.request(request)
    assert status == 200 and json.loads(body)["label"] == "non-cat"
