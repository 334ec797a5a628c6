"""Under injected faults, a run equals the fault-free reference and counts what it absorbed.

The stack is started as a user would start it, `itsacat up --faults ...`, with every
invocation of every function (launch, trainer, neuron, watchdog) subject to duplicate
delivery, a crash before or after the handler, a timeout and a throttle at 0.1 each. The
timeouts are short (neuron 2 s, trainer 10 s) so that an injected timeout costs seconds:
the timeout fault holds the worker until the runtime kills it at the function's limit.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedded.stack import StackInfo, info, stop
from tests.reliability.support import DATA_BYTES, PARAMS, Client, assert_equals_reference
from tests.support.stack import itsacat

# Minutes on a stack of its own: `make long` (CI runs it after `make test`).
pytestmark = pytest.mark.long

# Every kind of fault at once, on an account whose concurrency limit (10) is below the
# first layer's fan-out (12), with AWS's clocks a twelfth as long (lease 5 s, retries after
# 5 and 10 s, the watchdog every 5 s).
FAULTS = (
    "duplicate=0.1,crash_before=0.1,crash_after=0.1,timeout=0.05,throttle=0.1,"
    "ambiguous=0.1,unprocessed=0.1,redeliver=0.1,hosts=mixed,seed=7"
)
INJECTED = ("duplicates", "crashes", "timeouts", "throttles")
# Momentum with L2: the optimiser's state (and the dual form's scale) must survive every
# fault, committed with the weights, exactly once.
FAULT_PARAMS = {
    **PARAMS,
    "neurons": {"layer1": 12, "layer2": 3, "layer3": 1},
    "optimizer": "momentum",
    "lambda": 0.7,
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home = tmp_path_factory.mktemp("faulty-home")
    up = itsacat(
        home,
        "up",
        "--faults",
        FAULTS,
        "--time-scale",
        "1/12",
        "--account-concurrency",
        "10",
        "--parameter",
        "TrainerTimeout=10",
        "--parameter",
        "NeuronTimeout=2",
    )
    try:
        assert up.returncode == 0, up.stderr
        assert f"faults     {FAULTS}" in up.stdout
        stack = info(home)
        assert stack is not None and stack.config["faults"] == FAULTS
        yield stack
    finally:
        down = itsacat(home, "down")
        assert down.returncode == 0, down.stderr
        stop(home)  # a no-op after `down`; covers a failed `up`


def test_a_run_under_faults_equals_the_reference_and_counts_them(
    faulty: StackInfo, tmp_path: Path
) -> None:
    dataset, params = tmp_path / "datasets.h5", tmp_path / "parameters.json"
    dataset.write_bytes(DATA_BYTES)
    params.write_text(json.dumps(FAULT_PARAMS))
    home = Path(faulty.home)

    trained = itsacat(
        home, "train", str(dataset), "--params", str(params), "--wait", "--json", timeout_s=500
    )
    assert trained.returncode == 0, trained.stdout
    outcome = json.loads(trained.stdout)
    ref = itsacat(home, "reference", str(dataset), "--params", str(params), "--json")
    assert ref.returncode == 0, ref.stderr
    np.testing.assert_allclose(outcome["costs"], json.loads(ref.stdout)["costs"], rtol=1e-9)

    client = Client(faulty)
    assert_equals_reference(client, outcome["run_id"], FAULT_PARAMS)  # final parameters too

    shown = itsacat(home, "runs", "show", outcome["run_id"], "--json")
    counters = json.loads(shown.stdout)["counters"]
    assert counters["retries"] > 0 and counters["throttles"] > 0, counters
    # 3 epochs x 16 forward planned invocations (12 + 3 + 1 neurons; layer 1 is in the dual
    # form, the output neuron's backward pass rides on its forward one and layer 2's on its
    # next forward one), 3 more before each commit (at least one) for layer 2's pending
    # update, and one more for each retry and each throttled attempt
    planned = 3 * 16 + 3
    assert counters["invocations"] >= planned + counters["retries"] + counters["throttles"]

    # Every kind of fault was injected into the functions the run used, and absorbed.
    stats = faulty.stats()["functions"]
    neuron = stats["itsacat-neuron"]
    for name in INJECTED:
        assert neuron[name] > 0, (name, neuron)
    # (The trainer, launch and watchdog draw from the same plan; with a handful of
    # invocations each, whether one of theirs is hit varies with thread timing.)
    runtime = faulty.stats()
    assert sum(f.get("redeliveries", 0) for f in runtime["functions"].values()) > 0
    assert 0 < runtime["concurrency"]["peak"] <= 10
    assert len(runtime["hosts"]) > 1, runtime["hosts"]
    storage = json.load(urllib.request.urlopen(f"{faulty.emulator_url}/_itsacat/faults"))
    assert sum(storage["ambiguous"].values()) > 0 and storage["unprocessed_items"] > 0, storage
    status = itsacat(home, "status")
    assert "storage faults injected: ambiguous" in status.stdout, status.stdout
    assert "redelivered" in status.stdout and "worker hosts" in status.stdout, status.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--faults", "explode=0.5"], "--faults: unknown fault 'explode' (known: duplicate,"),
        (["--faults", "crash_before=1.5"], "--faults: fault 'crash_before=1.5': bad value"),
        (["--faults", "delay_ms=200-100"], "--faults: fault 'delay_ms=200-100': bad value"),
        (["--parameter", "TrainerTimeout"], "--parameter 'TrainerTimeout': expected KEY=VALUE"),
        (["--parameter", "Nope=1"], "--parameter 'Nope': the template has no such parameter"),
    ],
)
def test_up_refuses_a_bad_fault_spec_or_parameter(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = itsacat(tmp_path / "home", "up", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert info(tmp_path / "home") is None  # nothing was started
