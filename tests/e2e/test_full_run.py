"""The default network on the real data, through the embedded stack: `make accuracy`
(CI runs it after `make test`).

The default parameters (2,500 epochs, one neuron per invocation) trained through the
embedded stack reach at least 80% test accuracy, with the same per-epoch costs as the
reference trainer. About three minutes on this 2-core machine.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.accuracy
@pytest.mark.timeout(1200)  # about 3 minutes on 2 cores
def test_default_training_on_the_cat_data_equals_reference(stack: Stack, shared_data: Path) -> None:
    data = str(shared_data / "datasets.h5")
    ref = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "reference", data, "--json"],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
        check=True,
    )
    trained = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", "train", data, "--wait", "--json"],
        capture_output=True,
        text=True,
        timeout=7200,
        cwd=ROOT,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    expected, got = json.loads(ref.stdout), json.loads(trained.stdout)
    print(json.dumps({k: v for k, v in got.items() if k != "costs"}))
    assert got["epochs"] == expected["epochs"] == 2500
    np.testing.assert_allclose(got["costs"], expected["costs"], rtol=1e-9)
    assert got["test_accuracy"] >= 0.80
    assert got["test_accuracy"] == expected["test_accuracy"]
