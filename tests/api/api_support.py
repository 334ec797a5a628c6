"""Helpers for the API tests: a tiny trained model, pictures made in memory, a picture server,
a running `itsacat serve`.

The model is trained with the reference trainer on generated 16x16 pictures (red ones are
cats, blue ones are not), so a verdict that ignored the picture would fail the tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
from PIL import Image

from state.models import ModelStore
from tests.support import data as test_data
from trainer_lambdas.nn import params as nn_params
from trainer_lambdas.nn import reference
from trainer_lambdas.nn.network import Weights, accuracy
from trainer_lambdas.nn.preprocess import flatten_images

ROOT = Path(__file__).resolve().parents[2]
CHALICE_DIR = ROOT / "chalice_app"
INPUT_SHAPE = (16, 16, 3)
SAMPLE_PHOTOS = test_data.SAMPLE_PHOTOS  # the six photos of the shared data (tests/support/data.py)
MB = 1024 * 1024


@dataclass(frozen=True)
class TinyModel:
    weights: Weights
    parameters: nn_params.Parameters
    metadata: dict


def colour_pictures(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """m noisy 16x16 pictures; label 1 (cat) when red dominates, 0 when blue does."""
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 120, (m, *INPUT_SHAPE)).astype(np.uint8)
    y = (np.arange(m) % 2).reshape(1, m).astype(np.float64)
    images[y[0] == 1, :, :, 0] += 130
    images[y[0] == 0, :, :, 2] += 130
    return images, y


def train_tiny_model(seed: int = 1, epochs: int = 150) -> TinyModel:
    params = nn_params.parse(
        {
            "epochs": epochs,
            "layers": 3,
            "activations": {"layer1": "relu", "layer2": "relu", "layer3": "sigmoid"},
            "neurons": {"layer1": 5, "layer2": 3, "layer3": 1},
            "learning_rate": 0.05,
            "seed": seed,
        }
    )
    train_x, train_y = colour_pictures(40, seed)
    test_x, test_y = colour_pictures(20, seed + 100)
    x = flatten_images(train_x)
    result = reference.train(params, x, train_y)
    metadata = {
        "parameters": params.to_json(),
        "input_shape": list(INPUT_SHAPE),
        "final_cost": result.costs[-1],
        "train_accuracy": accuracy(result.weights, params.activations, x, train_y),
        "test_accuracy": accuracy(
            result.weights, params.activations, flatten_images(test_x), test_y
        ),
        "epochs": result.epochs,
        "seconds": result.seconds,
    }
    return TinyModel(weights=result.weights, parameters=params, metadata=metadata)


def picture(
    colour: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (40, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


RED = (230, 20, 20)
BLUE = (20, 20, 230)


def truncated_jpeg() -> bytes:
    rng = np.random.RandomState(0)
    noisy = Image.fromarray(rng.randint(0, 256, (200, 200, 3)).astype(np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class PictureServer:
    """A real HTTP server on one loopback address, serving generated and sample pictures.

    /photos/<name>        a file of the shared sample photos (read, never copied)
    /gen/<name>           a body from `files` (registered by the test)
    /redirect?to=URL      302 to URL
    /stream/<bytes>       that many bytes, without Content-Length (streamed until close)
    /declared/<bytes>     a Content-Length of that many bytes, then close
    /slow                 headers after 2 s
    """

    host: str
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> PictureServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host", "")))
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")
                if segments[0] == "photos" and len(segments) == 2:
                    names = {p.name for p in SAMPLE_PHOTOS.iterdir()}
                    if segments[1] in names:
                        return self._send(
                            200, "image/jpeg", (SAMPLE_PHOTOS / segments[1]).read_bytes()
                        )
                elif segments[0] == "gen" and segments[1] in owner.files:
                    kind, body = owner.files[segments[1]]
                    return self._send(200, kind, body)
                elif segments[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.end_headers()
                    return None
                elif segments[0] == "stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    left = int(segments[1])
                    try:
                        while left > 0:
                            n = min(left, 256 * 1024)
                            self.wfile.write(b"\xff" * n)
                            left -= n
                    except OSError:
                        pass  # the client stopped reading: that is the point
                    return None
                elif segments[0] == "declared":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", segments[1])
                    self.end_headers()
                    return None
                elif segments[0] == "slow":
                    threading.Event().wait(2)
                    return self._send(200, "image/png", picture(RED))
                return self._send(404, "text/plain", b"not found")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may hang up early
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def hits(self, prefix: str = "/") -> int:
        return sum(1 for path, _ in self.requests if path.startswith(prefix))


# -- a real `itsacat serve` (chalice local) process


@dataclass
class Api:
    """A running `itsacat serve`: GET and POST against it, errors as (status, body)."""

    base: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 20
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        return self.request(request, timeout)

    def request(self, request: urllib.request.Request, timeout: float = 20) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def image(self, url: str, timeout: float = 20) -> tuple[int, dict]:
        status, body = self.get("/image?" + urlencode({"image": url}), timeout=timeout)
        return status, json.loads(body)


def store_with_model(
    moto_endpoint: str, prefix: str, run_id: str, weights: Weights, metadata: dict
) -> ModelStore:
    """A fresh bucket (name `prefix-<random>`) on the moto server, holding one model in
    production and staging; its store (`.bucket`, `.client`)."""
    import boto3

    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=bucket)
    store = ModelStore(bucket, s3_client=s3)
    store.publish(run_id, weights, metadata)
    return store


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_api(
    moto_endpoint: str, bucket: str, log_path: Path, env: dict[str, str], allow: str | None
) -> Iterator[Api]:
    """`itsacat serve [--allow-hosts ALLOW]` with `env` (ITSACAT_* settings) over moto S3."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ITSACAT_"))}
    full.update(
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        ITSACAT_BUCKET=bucket,
    )
    full.update(env)
    argv = [sys.executable, "-m", "itsacat.cli", "serve", "--port", str(port)]
    with log_path.open("w") as log:
        hosts = [] if allow is None else ["--allow-hosts", allow]
        process = subprocess.Popen([*argv, *hosts], env=full, cwd=ROOT, stdout=log, stderr=log)
    api = Api(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"itsacat serve exited:\n{log_path.read_text()}")
            with contextlib.suppress(OSError):
                if api.get("/", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"itsacat serve did not answer:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield api
    finally:
        # `itsacat serve` replaces itself with the server (exec): this pid is the server.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
