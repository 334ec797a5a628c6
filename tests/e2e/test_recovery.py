"""Handover before the time limit, and the watchdog re-driving a killed trainer.

A stack of its own for this module: a 6-second trainer timeout,
a 1-second lease and a watchdog that fires every second.
"""

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo
from state import clients
from state.runs import SUCCEEDED
from tests.e2e.conftest import SMALL, Stack, assert_equals_reference, use_stack, worker_pids
from tests.support.stack import running_stack, wait_for

PARAMETERS = {"TrainerTimeout": "6", "CommitSeconds": "0.2"}
# AWS's clocks, a minute lasting 1 s: lease 1 s, the watchdog every second, retries after 1
# and 2 s.
CONFIG = RuntimeConfig(workers=3, time_scale=1 / 60)


@pytest.fixture(scope="module")
def short_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home: Path = tmp_path_factory.mktemp("itsacat-short")
    with running_stack(home, parameters=PARAMETERS, config=CONFIG) as info:
        yield info


@pytest.fixture
def stack(short_stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    yield use_stack(short_stack, monkeypatch)
    clients.client.cache_clear()


def test_trainer_hands_over_before_its_time_limit(stack: Stack) -> None:
    params = {**SMALL, "epochs": 60, "batch_size": 16}
    run_id = stack.run_for(stack.upload(params))
    run = stack.wait(run_id, timeout_s=240)
    assert run.status == SUCCEEDED, run.error
    assert run.handovers >= 1
    assert stack.stats()["functions"][stack.env["TRAINER_FUNCTION"]]["timeouts"] == 0
    assert_equals_reference(stack, run_id, params)


def test_watchdog_redrives_a_killed_trainer(stack: Stack) -> None:
    params = {**SMALL, "epochs": 80}
    run_id = stack.run_for(stack.upload(params))
    wait_for(lambda: stack.runs().get(run_id).epochs_done >= 3, timeout_s=120)
    trainer = stack.env["TRAINER_FUNCTION"]
    crashes = stack.stats()["functions"][trainer]["crashes"]

    def kill_trainers() -> bool:
        # Kill the trainer, and Lambda's two retries of its invocation, as they come up.
        for pid in worker_pids(stack.info, trainer):
            os.kill(pid, signal.SIGKILL)
        return stack.stats()["functions"][trainer]["crashes"] >= crashes + 3

    wait_for(kill_trainers, timeout_s=120, interval_s=0.02)
    killed_at = stack.runs().get(run_id).cursor
    run = stack.wait(run_id, timeout_s=240)
    assert run.status == SUCCEEDED, run.error
    assert run.redrives >= 1  # only the watchdog could start it again
    assert killed_at < run.cursor
    assert_equals_reference(stack, run_id, params)
