"""`itsacat predict`, `itsacat serve`'s command line, and the Chalice project configuration."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from api_support import BLUE, CHALICE_DIR, RED, ROOT, PictureServer, TinyModel, picture

from itsacat.cli import main
from itsacat.commands import serve
from state.models import ModelStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_a_file_prints_the_api_json(
    capsys: pytest.CaptureFixture[str], published: ModelStore, tmp_path: Path
) -> None:
    path = tmp_path / "blue.png"
    path.write_bytes(picture(BLUE))
    code, out, _ = run(capsys, "predict", str(path), "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["label"] == "non-cat" and answer["model"]["run_id"] == "run-1"
    assert 0 <= answer["probability"] < 0.5


def test_predict_a_url_through_the_safe_fetcher(
    capsys: pytest.CaptureFixture[str], published: ModelStore, pictures: PictureServer
) -> None:
    pictures.files["red.png"] = ("image/png", picture(RED))
    url = pictures.url("/gen/red.png")
    code, out, _ = run(capsys, "predict", url, "--allow-hosts", "127.0.0.2")
    assert code == 0 and out.startswith("cat  (probability of cat 0.")
    code, out, err = run(capsys, "predict", url, "--json")  # not allowed this time
    assert code == 2
    assert json.loads(out)["code"] == "address_refused" and "refused" in err


def test_predict_without_a_model(
    capsys: pytest.CaptureFixture[str], store: ModelStore, tmp_path: Path
) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(picture(RED))
    code, _, err = run(capsys, "predict", str(path))
    assert code == 1 and "no model" in err


def test_predict_bad_input(capsys: pytest.CaptureFixture[str], published: ModelStore) -> None:
    code, _, err = run(capsys, "predict", "/no/such/picture.jpeg")
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "predict", "ftp://127.0.0.2/x.png")
    assert code == 2 and "scheme_not_allowed" in err
    code, _, err = run(capsys, "predict", "x.png", "--allow-hosts", "localhost")
    assert code == 2 and "not an IP address" in err


def test_serve_command_line_and_environment(tiny_model: TinyModel) -> None:
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere", "ITSACAT_BUCKET": "old"}
    target = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5555", "ITSACAT_BUCKET": "itsacat-local"}
    argv, env = serve.server_command(8123, "127.0.0.1", "127.0.0.2/32", base, target)
    # The local server: Chalice's, with API Gateway's and Lambda's limits in front of it.
    assert argv[:3] == [sys.executable, "-m", "itsacat.commands.serve"]
    assert argv[3:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--stage",
        "local",
        "--concurrency",
        "20",
        "--rate",
        "20",
        "--burst",
        "40",
    ]
    assert env["ITSACAT_BUCKET"] == "itsacat-local"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5555"
    assert env["ITSACAT_ALLOW_HOSTS"] == "127.0.0.2/32"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    _, env = serve.server_command(8123, "127.0.0.1", None, base, {})
    assert "ITSACAT_ALLOW_HOSTS" not in env and env["ITSACAT_BUCKET"] == "old"


def test_serve_rejects_names_in_allow_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "--allow-hosts", "pictures.example")
    assert code == 2 and "not an IP address" in err


def test_chalice_config() -> None:
    config = json.loads((CHALICE_DIR / ".chalice" / "config.json").read_text())
    stages = config["stages"]
    assert {"local", "dev", "prod"} <= set(stages)
    # Stage variables override the process environment: the local stage must set none.
    assert "environment_variables" not in config and "environment_variables" not in stages["local"]
    assert (CHALICE_DIR / "requirements.txt").read_text().strip() == ""
    for name in ("dev", "prod"):
        stage = stages[name]
        bucket = stage["environment_variables"]["ITSACAT_BUCKET"]
        assert stage["layers"], "numpy/pillow/h5py come from a layer"
        policy = json.loads((CHALICE_DIR / ".chalice" / stage["iam_policy_file"]).read_text())
        s3 = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
        actions = {a for s in s3 for a in s["Action"]}
        assert actions == {"s3:GetObject", "s3:ListBucket"}, "read-only"
        for statement in s3:
            if statement["Action"] == ["s3:GetObject"]:
                assert statement["Resource"] == f"arn:aws:s3:::{bucket}/models/*"
            else:
                # Unconditioned: a HEAD of a missing key carries no s3:prefix, so a
                # prefix condition would make it 403 instead of 404.
                assert statement["Resource"] == f"arn:aws:s3:::{bucket}"
                assert "Condition" not in statement
