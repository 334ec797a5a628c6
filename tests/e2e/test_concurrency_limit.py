"""An account with a concurrency limit of 10, as new AWS accounts often have: a layer of 20
neurons fans out 20 invocations at once, Lambda throttles what is beyond the limit, and
the trainer's retries still give the reference's numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo
from state import clients
from state.runs import SUCCEEDED
from tests.e2e.conftest import SMALL, Stack, assert_equals_reference, use_stack
from tests.support.stack import running_stack

CONFIG = RuntimeConfig(workers=4, account_concurrency=10)
PARAMS = {**SMALL, "epochs": 3, "neurons": {"layer1": 20, "layer2": 3, "layer3": 1}}


@pytest.fixture(scope="module")
def small_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("itsacat-small-account")
    with running_stack(home, config=CONFIG) as info:
        yield info


@pytest.fixture
def stack(small_account: StackInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    yield use_stack(small_account, monkeypatch)
    clients.client.cache_clear()


def test_a_fan_out_of_20_on_an_account_limit_of_10_is_throttled_and_still_exact(
    stack: Stack,
) -> None:
    run_id = stack.run_for(stack.upload(PARAMS))
    run = stack.wait(run_id, timeout_s=180)
    assert run.status == SUCCEEDED, run.error
    assert_equals_reference(stack, run_id, PARAMS)
    # Throttled by Lambda, counted by the runtime and by the run.
    stats = stack.stats()
    assert stats["concurrency"]["account_limit"] == 10
    assert 0 < stats["concurrency"]["peak"] <= 10
    assert stats["functions"][stack.env["NEURON_FUNCTION"]]["throttles"] > 0
    assert int(run.throttles) > 0
