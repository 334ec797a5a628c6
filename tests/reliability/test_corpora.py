"""Every item of tests/corpora/manifest.json gets its expected, specific outcome.

Training inputs are uploaded to the embedded stack as a user would upload them: each must
end as a FAILED run whose error names the problem, at the first attempt (the launch function
reports no error, so nothing retries), with no prepared data and no model written.
Prediction requests go to the API (`chalice.test.Client`, serving a model published into
the same stack's bucket): each must get its status and error code, and the API must go on
answering a good picture after all of them.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from PIL import Image

from embedded.stack import StackInfo
from tests.corpora import make_corpora
from tests.reliability.support import DATA, DATA_BYTES, PARAMS, Client, reference_result

CORPORA = Path(__file__).resolve().parents[1] / "corpora"
MANIFEST = json.loads((CORPORA / "manifest.json").read_text())
CHALICE_DIR = Path(__file__).resolve().parents[2] / "chalice_app"


def test_the_corpus_is_what_its_script_writes() -> None:
    assert make_corpora.main(["--check"]) == 0
    assert len(MANIFEST["training"]) >= 20 and len(MANIFEST["prediction"]) >= 15
    names = [item["name"] for item in MANIFEST["training"] + MANIFEST["prediction"]]
    assert len(names) == len(set(names))
    files = {p.relative_to(CORPORA).as_posix() for p in CORPORA.glob("*/*") if p.is_file()}
    used = {i[k] for i in MANIFEST["training"] for k in ("dataset", "parameters") if i[k]}
    generated = {f"parameters/{n}" for n in make_corpora.AT_TEST_TIME}
    assert used - generated == files  # each file is in the manifest, each item has its file


def _body(path: str | None, default: bytes) -> bytes:
    if path is None:
        return default
    name = path.split("/", 1)[1]
    if name in make_corpora.AT_TEST_TIME:
        return make_corpora.PARAMETERS[name]()
    return (CORPORA / path).read_bytes()


def test_every_malformed_training_input_fails_its_run_with_the_reason(
    steady_stack: StackInfo, steady: Client
) -> None:
    before = steady_stack.stats()["functions"].get("itsacat-launch", {})
    good_params = json.dumps(PARAMS).encode()
    keys = {
        item["name"]: steady.upload(
            _body(item["dataset"], DATA_BYTES),
            _body(item["parameters"], good_params),
            name=f"corpus-{item['name']}",
        )
        for item in MANIFEST["training"]
    }
    problems = []
    for item in MANIFEST["training"]:
        run_id = steady.run_for(keys[item["name"]], timeout_s=90)
        run = steady.wait(run_id, timeout_s=60)
        expected = item["expect"]
        if run.status != expected["status"] or expected["reason"] not in (run.error or ""):
            problems.append((item["name"], run.status, run.error))
        for prefix in (f"models/{run_id}/", f"runs/{run_id}/"):
            listed = steady.s3.list_objects_v2(Bucket=steady.bucket, Prefix=prefix)
            if listed.get("KeyCount", 0):
                problems.append((item["name"], "wrote", prefix))
        if run.cursor is not None:
            problems.append((item["name"], "trained", run.cursor))
    assert problems == []
    after = steady_stack.stats()["functions"]["itsacat-launch"]
    # One launch per upload, each returning normally: no error, so no retry.
    assert after["errors"] == before.get("errors", 0)
    assert after["retries"] == before.get("retries", 0)
    assert after["executions"] - before.get("executions", 0) == len(MANIFEST["training"])


# -- the API ----------------------------------------------------------------------------


class _Redirector(BaseHTTPRequestHandler):
    """An allowed server whose pictures redirect to places that must never be fetched."""

    targets: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.targets.get(urlsplit(self.path).path, "/"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector(steady_stack: StackInfo) -> Iterator[str]:
    port = steady_stack.emulator_url.rsplit(":", 1)[1]
    _Redirector.targets = {
        "/to-loopback": f"http://127.0.0.1:{port}/",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    }
    server = ThreadingHTTPServer(("127.0.0.2", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(steady_stack: StackInfo, steady: Client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The API in process, serving a model published into the stack's bucket."""
    for path in (str(CHALICE_DIR.parent), str(CHALICE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    from app import app  # type: ignore[import-not-found]
    from chalice.test import Client as ChaliceClient
    from chalicelib import service  # type: ignore[import-not-found]

    ref = reference_result(PARAMS)
    steady.models.publish(
        "corpus-model",
        ref.weights,
        {"parameters": PARAMS, "input_shape": [8, 8, 3], "final_cost": ref.costs[-1]},
    )
    # the hostile servers listen on loopback's random ports (the default allows 80 and 443)
    allow = {"ITSACAT_ALLOW_HOSTS": "127.0.0.2", "ITSACAT_FETCH_PORTS": "any"}
    for name, value in {**steady_stack.env(), **allow}.items():
        monkeypatch.setenv(name, value)
    service.reset()
    with ChaliceClient(app, stage_name="local", project_dir=str(CHALICE_DIR)) as client:
        yield client
    service.reset()


def _request(api: Any, item: dict[str, Any], stack_port: str, redirector: str) -> Any:
    if item["method"] == "GET":
        query = item["query"]
        if query is None:
            return api.http.get(item["path"])
        url = query.format(stack_port=stack_port, redirector=redirector, long="a" * 3000)
        return api.http.get(f"{item['path']}?image={quote(url, safe='')}")
    body = b"\0" * item["body_bytes"] if "body_bytes" in item else item["body"].encode("latin-1")
    return api.http.post(item["path"], headers={"Content-Type": item["content_type"]}, body=body)


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_every_hostile_prediction_request_gets_its_4xx_and_the_api_keeps_serving(
    api: Any, steady_stack: StackInfo, redirector: str
) -> None:
    stack_port = steady_stack.emulator_url.rsplit(":", 1)[1]
    picture = _png(DATA.require_train().x[0])
    problems = []
    for item in MANIFEST["prediction"]:
        response = _request(api, item, stack_port, redirector)
        expected = item["expect"]
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = {}
        if response.status_code != expected["status"] or answer.get("code") != expected["code"]:
            problems.append((item["name"], response.status_code, response.body[:200]))
        elif set(answer) != {"error", "code"} or "Traceback" in answer["error"]:
            problems.append((item["name"], "answer", answer))
        # ... and it keeps serving: a good picture still gets its verdict.
        good = api.http.post("/image", headers={"Content-Type": "image/png"}, body=picture)
        if good.status_code != 200 or json.loads(good.body).get("label") not in ("cat", "non-cat"):
            problems.append((item["name"], "then", good.status_code, good.body[:200]))
    assert problems == []
