"""The benchmark's machinery, without a stack: counting, per-epoch arithmetic, the AWS
projection and the shape of the JSON and tables it prints."""

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest

from embedded.emulator import RequestCounter, operation
from itsacat.bench import plans as bench
from itsacat.bench import projection
from itsacat.deploy.package import load_template
from tests.support.template import template
from trainer_lambdas.nn import params as params_mod

LAMBDA_UA = "Boto3/1.40 md/Botocore#1.40 exec-env/AWS_Lambda_python3.11"


def environ(**kw: str) -> dict:
    scope = kw.pop("service", "dynamodb")
    return {
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{scope}/"
        "aws4_request, SignedHeaders=host, Signature=abc",
        "HTTP_USER_AGENT": LAMBDA_UA,
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "CONTENT_LENGTH": "10",
        "wsgi.input": io.BytesIO(b""),
        **kw,
    }


def test_operations_are_named_from_the_request() -> None:
    assert operation(environ(HTTP_X_AMZ_TARGET="DynamoDB_20120810.BatchWriteItem"), None) == (
        "dynamodb",
        "BatchWriteItem",
    )
    s3 = environ(service="s3", REQUEST_METHOD="GET", PATH_INFO="/bucket/runs/a/data.npz")
    assert operation(s3, None) == ("s3", "GetObject")
    assert operation({**s3, "REQUEST_METHOD": "PUT"}, None) == ("s3", "PutObject")
    assert operation({**s3, "PATH_INFO": "/bucket"}, None) == ("s3", "ListObjects")
    sns = environ(service="sns")
    assert operation(sns, b"Action=Publish&Version=2010-03-31") == ("sns", "Publish")


def test_only_requests_from_functions_are_counted() -> None:
    c = RequestCounter()
    c.add(environ(HTTP_X_AMZ_TARGET="DynamoDB_20120810.PutItem"), None, 5)
    c.add(environ(HTTP_X_AMZ_TARGET="DynamoDB_20120810.PutItem"), None, 5)
    c.add(environ(HTTP_X_AMZ_TARGET="DynamoDB_20120810.Query", HTTP_USER_AGENT="Boto3/1"), None, 5)
    snap = c.snapshot()
    assert snap == {"requests": {"dynamodb:PutItem": 2}, "bytes": {"dynamodb:PutItem": 30}}


def test_per_epoch_counts_are_window_deltas() -> None:
    a = bench.Snapshot(10, 100, 1000.0, 5_000, {"dynamodb:PutItem": 10, "lambda:Invoke": 101}, 70)
    b = bench.Snapshot(20, 760, 8000.0, 25_000, {"dynamodb:PutItem": 20, "lambda:Invoke": 761}, 170)
    got = bench.per_epoch(a, b)
    assert got["epochs_counted"] == 10 and got["invocations_per_epoch"] == 66
    assert got["requests_per_epoch"] == {"dynamodb:PutItem": 1.0, "lambda:Invoke": 66.0}
    assert got["payload_bytes_per_epoch"] == 2000 and got["storage_bytes_per_epoch"] == 10
    assert got["execution_ms"] == pytest.approx(7000 / 660)
    assert bench.median_epoch_s([0.0, 1.0, 3.0, 4.0]) == 1.0
    # rows written together with one commit: 3 epochs in 3 s, then 2 in 4 s, then 2 in 2 s
    assert bench.median_epoch_s([0.0, 0.0, 3.0, 3.0, 3.0, 7.0, 7.0, 9.0, 9.0]) == 1.0


def unrounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """`projection.project` without its rounding to 4 decimals (for printing), so that a
    test can compare its figures exactly: one Lambda request is 2e-7 USD, below that rounding."""
    monkeypatch.setattr(projection, "round", lambda value, digits=None: value, raising=False)


def test_projection_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert projection.waves([20, 7, 5, 1]) == 2 * (1 + 1 + 1 + 1)
    assert projection.waves([20, 7, 5, 1], concurrency=8) == 2 * (3 + 1 + 1 + 1)
    assert projection.waves([1, 0, 0, 0]) == 2
    assert projection.waves([20, 7, 5, 1], backward_per_layer=[0, 7, 5, 1]) == 4 + 3
    # a layer-1 row is 12,289 float64 values plus keys: 97 KB, 97 WRUs
    assert projection.weight_wru(12288, (20, 7, 5, 1)) == 20 * 97 + 7 + 5 + 1
    c = projection.PlanCounts(
        invocations=66,
        waves=12,
        payload_bytes=1e6,
        execution_s=0.01,
        requests={"dynamodb:BatchWriteItem": 6, "dynamodb:UpdateItem": 1, "dynamodb:PutItem": 1},
        storage_bytes=5e6,
        weight_wru_per_commit=1953,
        commits_per_epoch=1,
    )
    printed = projection.project(c, 2500)
    unrounded(monkeypatch)
    p = projection.project(c, 2500)
    assert printed.usd_breakdown == {k: round(v, 4) for k, v in p.usd_breakdown.items()}
    assert (printed.epoch_s, printed.usd) == (round(p.epoch_s, 4), round(p.usd, 4))
    a = projection
    epoch = (
        12 * (a.INVOKE_OVERHEAD_S + 0.01)
        + 1e6 / a.PAYLOAD_BYTES_PER_S
        + 8 * a.DYNAMODB_REQUEST_S
        + 5e6 / a.DYNAMODB_BYTES_PER_S
    )
    assert p.epoch_s == pytest.approx(epoch, rel=1e-9)
    assert p.run_s == pytest.approx(2500 * epoch, rel=1e-9)
    wru = 2500 * (2 * 1953 + 2)
    assert p.usd_breakdown["dynamodb_writes"] == pytest.approx(wru * a.DYNAMODB_WRU_USD, rel=1e-9)
    # the neurons' invocations and the trainer's: one per TrainerTimeout of the run (2 here)
    trainer = math.ceil(p.run_s / template()["Parameters"]["TrainerTimeout"]["Default"])
    requests = 2500 * 66 + trainer
    assert p.usd_breakdown["lambda_requests"] == pytest.approx(requests * 0.2e-6, rel=1e-9)
    assert p.usd == pytest.approx(sum(p.usd_breakdown.values()), rel=1e-9)
    assert {"prices_as_of", "sources", "model"} <= set(projection.assumptions())


def fake_result() -> dict:
    plan = {
        "epoch_s": 0.5,
        "ratio": 50.0,
        "invocations_per_epoch": 66.0,
        "requests_per_epoch": {"dynamodb:BatchWriteItem": 6.0, "lambda:Invoke": 66.0},
        "payload_bytes_per_epoch": 6_700_000,
        "storage_bytes_per_epoch": 2_600_000,
    }
    proj = {"epoch_s": 0.6, "run_s": 1500.0, "run_minutes": 25.0, "usd": 6.3, "usd_breakdown": {}}
    return {
        "reference_epoch_s": 0.01,
        "plans": {"neuron": plan},
        "aws_projection": {"epochs": 2500, "plans": {"neuron": proj}, "assumptions": {}},
    }


def test_json_shape_and_tables() -> None:
    r = json.loads(json.dumps(fake_result()))
    assert set(r) >= {"reference_epoch_s", "plans", "aws_projection"}
    need = {"epoch_s", "ratio", "invocations_per_epoch", "requests_per_epoch"}
    assert need | {"payload_bytes_per_epoch"} <= set(r["plans"]["neuron"])
    text = bench.table(r)
    assert (
        "| neuron | 0.5000 | 50.0 | 66.0 |" in text and "| neuron | 0.600 | 25.0 | 6.30 |" in text
    )
    rows = [
        {"width": w, "examples": m, "reference": 0.01 * w, "neuron": 0.5 * w}
        for w, m in ((20, 209), (80, 209), (20, 2090))
    ]
    assert bench.scaling_table(rows).count("\n") == 4


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = [
        {"width": w, "examples": m, "reference": 0.01 * w, "layer": 0.1 + 0.001 * m}
        for w, m in ((20, 209), (80, 209), (320, 209), (20, 2090))
    ]
    out = bench.plot(rows, tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_named_plans() -> None:
    base = params_mod.default()
    neuron = bench.PLANS["neuron"].apply(base)
    assert (neuron.neurons_per_invocation, neuron.distribution, neuron.commit_every) == (
        1,
        "fanout",
        50,
    )
    hybrid = bench.PLANS["hybrid"].apply(base, commit_every=7)
    assert (hybrid.distribution, hybrid.neurons_per_invocation, hybrid.commit_every) == (
        "hybrid",
        4096,
        7,
    )
    assert hybrid.epochs == base.epochs and hybrid.neurons == base.neurons
    assert not math.isnan(bench.median_epoch_s([1.0, 2.0]))


def test_the_projection_reads_the_functions_from_the_template() -> None:
    got = projection.template_settings()
    resources = template()["Resources"]  # the tests' own reading of the same file
    assert got.neuron_memory_mb == resources["NeuronFunction"]["Properties"]["MemorySize"]
    assert got.trainer_memory_mb == resources["TrainerFunction"]["Properties"]["MemorySize"]
    parameters = template()["Parameters"]
    variables = template()["Globals"]["Function"]["Environment"]["Variables"]
    concurrency = variables[projection.CONCURRENCY_VARIABLE]["Ref"]
    assert got.neuron_concurrency == parameters[concurrency]["Default"]
    assert got.trainer_timeout_s == parameters["TrainerTimeout"]["Default"]
    assert got.neuron_timeout_s == parameters["NeuronTimeout"]["Default"]
    assert projection.assumptions()["neuron_memory_mb"] == got.neuron_memory_mb


def test_a_changed_template_changes_the_projection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projection follows the template: a copy with half the neuron memory, a quarter
    of the concurrency and a shorter trainer timeout projects accordingly."""
    t = load_template(projection.TEMPLATE)
    variables = t["Globals"]["Function"]["Environment"]["Variables"]
    concurrency = variables[projection.CONCURRENCY_VARIABLE]["Ref"]
    t["Resources"]["NeuronFunction"]["Properties"]["MemorySize"] = 1024
    t["Parameters"][concurrency]["Default"] = 8
    t["Parameters"]["TrainerTimeout"]["Default"] = 60
    changed = tmp_path / "template.json"  # JSON is YAML: the same loader reads it
    changed.write_text(json.dumps(t))
    ours, theirs = projection.template_settings(), projection.template_settings(changed)
    assert theirs == dataclasses.replace(
        ours, neuron_memory_mb=1024, neuron_concurrency=8, trainer_timeout_s=60.0
    )
    assert projection.waves([20, 7, 5, 1]) == 8
    assert projection.waves([20, 7, 5, 1], concurrency=theirs.neuron_concurrency) == 2 * (
        3 + 1 + 1 + 1
    )
    c = projection.PlanCounts(
        invocations=66,
        waves=12,
        payload_bytes=1e6,
        execution_s=0.5,
        requests={},
        storage_bytes=0,
    )
    unrounded(monkeypatch)
    a, b = projection.project(c, 2500, ours), projection.project(c, 2500, theirs)
    assert a.epoch_s == b.epoch_s  # the counts' waves are given: the same time
    neuron_gb_s = 2500 * 66 * (0.5 + 0.001) * (2048 - 1024) / 1024
    saved = a.usd_breakdown["lambda_compute"] - b.usd_breakdown["lambda_compute"]
    assert saved == pytest.approx(neuron_gb_s * projection.LAMBDA_GB_SECOND_USD, rel=1e-9)
    handovers = math.ceil(a.run_s / 60) - math.ceil(a.run_s / 900)
    more = b.usd_breakdown["lambda_requests"] - a.usd_breakdown["lambda_requests"]
    assert handovers > 0  # 240 here, 4.8e-5 USD: below the printed figures' 4 decimals
    assert more == pytest.approx(handovers * projection.LAMBDA_REQUEST_USD, rel=1e-9)
    assert projection.assumptions(theirs)["neuron_concurrency"] == 8
