"""Load on the prediction API: many concurrent clients against `itsacat serve` on loopback.

What it does, all on 127.0.0.x and bounded in time:
  1. starts an embedded stack in a temporary ITSACAT_HOME and publishes a model into its
     bucket (the reference trainer on the generated stand-in, 64x64 pictures);
  2. starts `itsacat serve` against it, allowing one extra loopback address (127.0.0.2),
     where a small picture server runs;
  3. drives the API with N concurrent clients (keep-alive connections) for R requests in
     all: half `POST /image` with a PNG body, half `GET /image?image=<URL on 127.0.0.2>`,
     plus a sprinkling of hostile URLs (which must get a 4xx, never a 5xx);
  4. reports throughput, p50/p90/p99/max latency, and the count of each status class;
  5. then a mixed run: `--clients` clients of the same ordinary requests while
     `--hostile-clients` (10) send hostile ones in a loop: URL fetches from a loopback server
     that trickles its body a few bytes at a time (held until the fetch deadline: 504),
     bodies one byte over the upload limit (413) and decompression-bomb PNGs (413); it
     reports the ordinary requests' p50/p99 and status counts, and the hostile ones'.

`itsacat serve` runs here without its 429 limits (`--concurrency 0 --rate 0`): this measures
the API's code, not the throttle (tests/api/test_api_limits.py tests that).

    python -m itsacat.bench.api_load [--clients 50] [--requests 2000] [--hostile-clients 10]
                                     [--out bench/results] [--json]

Exits 1 if any ordinary request got a 5xx or failed to connect, or a hostile one got a 500;
everything it started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from embedded.invocations import RuntimeConfig
from embedded.stack import start, stop
from itsacat.commands.serve import chalicelib
from state.models import ModelStore
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference

PICTURE_HOST = "127.0.0.2"
HOSTILE = (
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:22/",
    "file:///etc/passwd",
    "http://0x7f.1/",
)
MODEL_PARAMS = {
    "epochs": 60,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "relu", "layer3": "sigmoid"},
    "neurons": {"layer1": 8, "layer2": 4, "layer3": 1},
    "learning_rate": 0.01,
}


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def publish_model(env: dict[str, str]) -> datasets.Dataset:
    """Train a small model on the stand-in data and publish it into the stack's bucket."""
    import boto3

    data = datasets.synthesize(m_train=60, m_test=20, side=64, seed=3)
    x, y = data.require_train().columns()
    result = reference.train(params_mod.parse(MODEL_PARAMS), x, y)
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ModelStore(env["ITSACAT_BUCKET"], s3).publish(
        "bench-model",
        result.weights,
        {"parameters": MODEL_PARAMS, "input_shape": [64, 64, 3], "final_cost": result.costs[-1]},
    )
    return data


@contextlib.contextmanager
def picture_server(pictures: list[bytes]) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            try:
                body = pictures[int(self.path.strip("/").split(".")[0]) % len(pictures)]
            except ValueError:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Handler) as port:
        yield port


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """`handler` on PICTURE_HOST in a background thread; its port."""
    server = ThreadingHTTPServer((PICTURE_HOST, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def trickle_server() -> Iterator[int]:
    """A picture server on PICTURE_HOST that sends its headers, then 16 bytes every 0.25 s
    of a body it never finishes: a fetch of it lasts until the API's fetch deadline."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            deadline = time.monotonic() + 60
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline:
                    self.wfile.write(b"\0" * 16)
                    self.wfile.flush()
                    time.sleep(0.25)

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Handler) as port:
        yield port


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that declares width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_server(
    home: Path, port: int, log: Path, flags: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("ITSACAT_BUCKET", None)
    env["ITSACAT_HOME"] = str(home)
    env["ITSACAT_FETCH_PORTS"] = "any"  # the picture servers listen on random ports
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "itsacat.cli",
                "serve",
                "--port",
                str(port),
                "--allow-hosts",
                PICTURE_HOST,
                *flags,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"itsacat serve exited: {log.read_text()[-500:]}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("itsacat serve did not answer within 60 s")
            time.sleep(0.2)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def drive(
    port: int,
    picture_port: int,
    pictures: list[bytes],
    clients: int,
    total: int,
    limit_s: float,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """`total` requests from `clients` threads; latencies in ms and status counts."""
    lock = threading.Lock()
    counter = iter(range(total))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + limit_s

    def request(i: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        if i % 50 == 7:  # hostile: must be refused (4xx), never fetched
            url = HOSTILE[(i // 50) % len(HOSTILE)]
            return "GET", f"/image?image={quote(url, safe='')}", None, {}
        if i % 2:
            url = f"http://{PICTURE_HOST}:{picture_port}/{i}.png"
            return "GET", f"/image?image={quote(url, safe='')}", None, {}
        body = pictures[i % len(pictures)]
        return "POST", "/image", body, {"Content-Type": "image/png"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            method, path, body, headers = request(i)
            began = time.perf_counter()
            for attempt in range(2):  # a reset connection is retried once, on a new one
                try:
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = f"{response.status // 100}xx"
                    if response.getheader("Connection", "").lower() == "close":
                        conn.close()
                    break
                except (OSError, http.client.HTTPException) as e:
                    status = f"failed: {type(e).__name__}"
                    conn.close()
                    if attempt == 0:
                        with lock:
                            statuses["reconnects"] += 1
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] += 1
        conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
        time.sleep(ramp_s)  # clients arrive over a short ramp, not in one SYN burst
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    lat = np.array(latencies) if latencies else np.zeros(1)
    reconnects = statuses.pop("reconnects", 0)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "status": dict(sorted(statuses.items())),
        "5xx": statuses["5xx"],
        "reconnects": reconnects,
        "failed": sum(n for s, n in statuses.items() if s.startswith("failed")),
    }


Request = tuple[str, str, bytes | None, dict[str, str]]


def _client_loop(
    port: int, next_request: Callable[[], Request | None], record: Callable[[float, str], None]
) -> None:
    """Send requests on one keep-alive connection until `next_request` gives None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while (item := next_request()) is not None:
        method, path, body, headers = item
        began = time.perf_counter()
        status = "failed"
        for _attempt in range(2):  # a reset connection is retried once, on a new one
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                break
            except (OSError, http.client.HTTPException) as e:
                status = f"failed: {type(e).__name__}"
                conn.close()
        record((time.perf_counter() - began) * 1000, status)
    conn.close()


def _summary(latencies: list[float], statuses: Counter[str]) -> dict[str, Any]:
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "status": dict(sorted(statuses.items())),
        "5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "500": statuses.get("500", 0),
        "failed": sum(n for s, n in statuses.items() if s.startswith("failed")),
    }


def drive_mixed(
    port: int,
    picture_port: int,
    trickle_port: int,
    pictures: list[bytes],
    clients: int,
    hostile_clients: int,
    total: int,
    limit_s: float,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """`total` ordinary requests from `clients` threads while `hostile_clients` threads send
    hostile requests until the ordinary ones are done; each side's latencies and statuses."""
    lock = threading.Lock()
    counter = iter(range(total))
    done = threading.Event()
    deadline = time.monotonic() + limit_s
    ordinary: tuple[list[float], Counter[str]] = ([], Counter())
    hostile: tuple[list[float], Counter[str]] = ([], Counter())
    hostile_kinds: Counter[str] = Counter()
    config = chalicelib("config")  # the API's own limits
    oversized = b"\xff" * (min(config.Settings().max_bytes, config.MAX_BODY_BYTES) + 1)
    bomb = bomb_png()
    trickle = quote(f"http://{PICTURE_HOST}:{trickle_port}/slow.png", safe="")

    def ordinary_request() -> Request | None:
        with lock:
            i = next(counter, None) if time.monotonic() < deadline else None
        if i is None:
            done.set()
            return None
        if i % 2:
            url = f"http://{PICTURE_HOST}:{picture_port}/{i}.png"
            return "GET", f"/image?image={quote(url, safe='')}", None, {}
        return "POST", "/image", pictures[i % len(pictures)], {"Content-Type": "image/png"}

    hostile_counter = iter(range(10**9))

    def hostile_request() -> Request | None:
        if done.is_set():
            return None
        with lock:
            i = next(hostile_counter)
            kind = ("trickle", "oversized", "bomb")[i % 3]
            hostile_kinds[kind] += 1
        if kind == "trickle":
            return "GET", f"/image?image={trickle}", None, {}
        if kind == "oversized":
            return "POST", "/image", oversized, {"Content-Type": "image/jpeg"}
        return "POST", "/image", bomb, {"Content-Type": "image/png"}

    def recorder(side: tuple[list[float], Counter[str]]) -> Callable[[float, str], None]:
        def record(ms: float, status: str) -> None:
            with lock:
                side[0].append(ms)
                side[1][status] += 1

        return record

    began = time.perf_counter()
    threads = [
        threading.Thread(target=_client_loop, args=(port, hostile_request, recorder(hostile)))
        for _ in range(hostile_clients)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the hostile requests are under way before the ordinary ones start
    for _ in range(clients):
        t = threading.Thread(target=_client_loop, args=(port, ordinary_request, recorder(ordinary)))
        threads.append(t)
        t.start()
        time.sleep(ramp_s)
    for t in threads[hostile_clients:]:
        t.join()
    ordinary_seconds = time.perf_counter() - began - 1.0
    for t in threads[:hostile_clients]:
        t.join()
    summary = _summary(*ordinary)
    summary["throughput_rps"] = round(len(ordinary[0]) / ordinary_seconds, 1)
    return {
        "clients": clients,
        "hostile_clients": hostile_clients,
        "seconds": round(ordinary_seconds, 3),
        "ordinary": summary,
        "hostile": {**_summary(*hostile), "kinds": dict(sorted(hostile_kinds.items()))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--limit-s", type=float, default=300, help="stop sending after this")
    parser.add_argument(
        "--ramp-ms", type=float, default=5.0, help="delay between client starts (default 5)"
    )
    parser.add_argument(
        "--hostile-clients",
        type=int,
        default=10,
        help="clients sending hostile requests in the mixed run (0: no mixed run)",
    )
    parser.add_argument("--out", type=Path, help="also write api-load.json into this directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 500 and 1 <= args.requests <= 100_000):
        parser.error("--clients 1..500, --requests 1..100000")
    with tempfile.TemporaryDirectory(prefix="itsacat-bench-api-") as tmp:
        home = Path(tmp)
        info = start(home, config=RuntimeConfig(workers=1, schedules=False))
        try:
            data = publish_model(info.env())
            x = data.require_train().x
            pictures = [png(x[i]) for i in range(16)]
            port = free_port()
            with (
                picture_server(pictures) as picture_port,
                trickle_server() as trickle_port,
                api_server(home, port, home / "serve.log", ("--concurrency", "0", "--rate", "0")),
            ):
                # one request first, so that the model is loaded and cached before timing
                warm = drive(port, picture_port, pictures, 1, 4, 60)
                report = drive(
                    port,
                    picture_port,
                    pictures,
                    args.clients,
                    args.requests,
                    args.limit_s,
                    args.ramp_ms / 1000,
                )
                report["warm_up"] = warm["status"]
                if args.hostile_clients > 0:
                    report["mixed"] = drive_mixed(
                        port,
                        picture_port,
                        trickle_port,
                        pictures,
                        args.clients,
                        args.hostile_clients,
                        args.requests,
                        args.limit_s,
                        args.ramp_ms / 1000,
                    )
        finally:
            stop(home)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "api-load.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['requests']} requests from {report['clients']} clients in "
            f"{report['seconds']:.1f} s: {report['throughput_rps']} req/s, "
            f"p50 {report['p50_ms']} ms, p90 {report['p90_ms']} ms, p99 {report['p99_ms']} ms, "
            f"max {report['max_ms']} ms; status {report['status']}"
        )
        mixed = report.get("mixed")
        if mixed:
            o, h = mixed["ordinary"], mixed["hostile"]
            print(
                f"mixed: {o['requests']} ordinary requests from {mixed['clients']} clients "
                f"while {mixed['hostile_clients']} clients sent {h['requests']} hostile ones "
                f"{h['kinds']}: ordinary {o['throughput_rps']} req/s, p50 {o['p50_ms']} ms, "
                f"p99 {o['p99_ms']} ms, status {o['status']}, 5xx {o['5xx']}; "
                f"hostile status {h['status']}"
            )
    mixed = report.get("mixed")
    bad_mixed = mixed is not None and bool(
        mixed["ordinary"]["5xx"] or mixed["ordinary"]["failed"] or mixed["hostile"]["500"]
    )
    return 1 if report["5xx"] or report["failed"] or bad_mixed else 0


if __name__ == "__main__":
    sys.exit(main())
