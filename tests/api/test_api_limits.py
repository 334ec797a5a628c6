"""The API's limits fit Lambda's and API Gateway's, and `itsacat serve` applies
the deployed stack's concurrency and rate limits (429), tested on a real local server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from api_support import CHALICE_DIR, RED, ROOT, PictureServer, TinyModel, picture
from chalicelib import config

from itsacat.commands import serve
from itsacat.deploy.package import API_LIMITS, ApiLimits
from state.models import ModelStore

# -- the numbers


def test_any_body_we_accept_fits_lambdas_payload_after_base64() -> None:
    limit = config.Settings().max_body_bytes
    assert limit == config.DEFAULT_MAX_IMAGE_BYTES == 4 * config.MB
    base64_len = 4 * -(-limit // 3)
    assert base64_len + config.EVENT_OVERHEAD_BYTES < config.LAMBDA_PAYLOAD_BYTES
    # Even a larger ITSACAT_MAX_IMAGE_BYTES cannot let a body through that AWS would drop.
    wide = config.Settings.from_env({"ITSACAT_MAX_IMAGE_BYTES": str(10 * config.MB)})
    assert wide.max_bytes == 10 * config.MB
    assert 4 * -(-wide.max_body_bytes // 3) + config.EVENT_OVERHEAD_BYTES <= (
        config.LAMBDA_PAYLOAD_BYTES
    )


def test_the_function_timeout_is_under_the_gateways_and_holds_fetch_and_decode() -> None:
    chalice = json.loads((CHALICE_DIR / ".chalice" / "config.json").read_text())
    timeout = chalice["lambda_timeout"]
    assert timeout == config.LAMBDA_TIMEOUT_SECONDS
    assert timeout < config.GATEWAY_TIMEOUT_SECONDS  # else the gateway 504s a live function
    settings = config.Settings()
    assert settings.fetch_deadline + config.DECODE_SECONDS <= timeout
    assert settings.connect_timeout + settings.read_timeout <= settings.fetch_deadline


# -- the limiter


def test_the_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [100.0]
    limiter = serve.Limiter(ApiLimits(concurrency=0, rate=2, burst=3), clock=lambda: now[0])
    answers = [limiter.admit() for _ in range(4)]
    assert answers == [None, None, None, "THROTTLED"]
    now[0] += 0.5  # one token back
    assert limiter.admit() is None and limiter.admit() == "THROTTLED"
    now[0] += 100  # never more than the burst
    assert [limiter.admit() for _ in range(4)] == [None, None, None, "THROTTLED"]


def test_concurrency_is_held_until_release() -> None:
    limiter = serve.Limiter(ApiLimits(concurrency=2, rate=0, burst=1))
    assert limiter.admit() is None and limiter.admit() is None
    assert limiter.admit() == "INTEGRATION_FAILURE"
    limiter.release()
    assert limiter.admit() is None


def test_serve_defaults_are_the_deployed_defaults() -> None:
    argv, _ = serve.server_command(8000, "127.0.0.1", None, {}, {})
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags["--concurrency"] == str(API_LIMITS.concurrency) == "20"
    assert float(flags["--rate"]) == API_LIMITS.rate == 20
    assert flags["--burst"] == str(API_LIMITS.burst) == "40"


# -- a real `itsacat serve`


@dataclass
class Served:
    base: str
    log: Path

    def request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(moto_endpoint: str, tiny_model: TinyModel, tmp: Path, *flags: str) -> Iterator[Served]:
    bucket = f"itsacat-limits-{uuid.uuid4().hex[:12]}"
    creds = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client("s3", region_name="us-east-1", **_boto_args(creds))
    s3.create_bucket(Bucket=bucket)
    ModelStore(bucket, s3_client=s3).publish("run-1", tiny_model.weights, tiny_model.metadata)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    env.update(creds, ITSACAT_BUCKET=bucket, ITSACAT_FETCH_PORTS="any")  # random ports
    log_path = tmp / f"serve-{port}.log"
    argv = [sys.executable, "-m", "itsacat.cli", "serve", "--port", str(port)]
    argv += ["--allow-hosts", "127.0.0.2", *flags]
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    api = Served(f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"itsacat serve exited {process.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError):
                if api.request("/")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"itsacat serve did not answer:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield api
    finally:
        process.send_signal(signal.SIGTERM)  # the exec'd server itself
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _boto_args(creds: dict[str, str]) -> dict[str, Any]:
    return {
        "endpoint_url": creds["AWS_ENDPOINT_URL"],
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
    }


def test_a_body_just_over_the_limit_gets_our_413_and_json_is_nosniff(
    moto_endpoint: str, tiny_model: TinyModel, tmp_path: Path
) -> None:
    limit = config.Settings().max_body_bytes
    with served(moto_endpoint, tiny_model, tmp_path) as api:
        status, headers, body = api.request(
            "/image", data=b"\xff" * (limit + 1), headers={"Content-Type": "image/jpeg"}
        )
        assert status == 413, body
        assert json.loads(body)["code"] == "image_too_large"
        assert headers["X-Content-Type-Options"] == "nosniff"
        # At the limit the body is read (and found not to be a picture), not refused for size.
        status, _, body = api.request(
            "/image", data=b"\xff" * limit, headers={"Content-Type": "image/jpeg"}
        )
        assert status == 422 and json.loads(body)["code"] == "not_an_image"
        status, headers, _ = api.request("/", headers={"Accept": "text/html"})
        assert status == 200 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_requests_beyond_the_concurrency_limit_get_429(
    moto_endpoint: str, tiny_model: TinyModel, tmp_path: Path, pictures: PictureServer
) -> None:
    slow = "/image?" + urlencode({"image": pictures.url("/slow")})  # headers after 2 s
    flags = ("--concurrency", "2", "--rate", "0")
    with served(moto_endpoint, tiny_model, tmp_path, *flags) as api:
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda: answers.append(api.request(slow)[0])) for _ in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(0.8)  # both are in the app, waiting for the picture
        status, headers, body = api.request("/")
        assert status == 429, body
        assert json.loads(body) == {"error": "the API is busy: retry in a moment", "code": "busy"}
        assert headers["Retry-After"] == "1"
        for t in threads:
            t.join()
        assert answers == [200, 200]
        assert api.request("/")[0] == 200  # the places are given back


def test_requests_beyond_the_rate_get_429(
    moto_endpoint: str, tiny_model: TinyModel, tmp_path: Path
) -> None:
    flags = ("--rate", "0.5", "--burst", "3")
    with served(moto_endpoint, tiny_model, tmp_path, *flags) as api:
        # The readiness probe took one token (or two): the rest of the burst, then 429.
        statuses = [api.request("/")[0] for _ in range(4)]
        assert statuses.count(429) >= 2 and statuses[-1] == 429, statuses
        status, _, body = api.request(
            "/image", data=picture(RED), headers={"Content-Type": "image/png"}
        )
        assert status == 429 and json.loads(body)["code"] == "throttled"
