"""The watchdog's re-drives, over moto's in-process DynamoDB.

On AWS an asynchronous retry of a crashed trainer comes a minute or two after the crash,
after its lease has expired and the watchdog has re-driven the run: nearly every trainer
crash also costs a re-drive. A run is therefore failed only when its trainer stops
`MAX_STALLS` times in a row at the same committed step; progress resets the count.
"""

from __future__ import annotations

import pytest

from state.errors import Conflict
from state.runs import FAILED, PREPARING, TRAINING
from tests.functional.conftest import World
from tests.support.runs import progress, started_run
from trainer_lambdas import services, watchdog


@pytest.fixture
def sweep(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr(services, "stores", lambda: world.stores)
    monkeypatch.setattr(services, "config", lambda: world.cfg)
    return world


def _stalled_run(world: World, run_id: str) -> None:
    started_run(world.stores.runs, run_id)  # no lease, no heartbeat: its trainer is gone


def test_a_long_run_with_many_crashes_between_commits_is_not_failed(sweep: World) -> None:
    _stalled_run(sweep, "r-long")
    runs = sweep.stores.runs
    for step in range(1, 3 * watchdog.MAX_STALLS):
        assert watchdog.sweep() == {"redriven": ["r-long"], "failed": []}
        # The re-driven trainer commits a step, then crashes: progress, then a stall again.
        runs._update("r-long", "test: a commit", set_={"cursor": step, "lease_until": 0})
    run = runs.get("r-long")
    assert run.status == TRAINING
    assert int(run.redrives) == 3 * watchdog.MAX_STALLS - 1  # all of them, counted


def test_a_run_stalled_at_one_step_is_failed_after_max_stalls(sweep: World) -> None:
    _stalled_run(sweep, "r-stuck")
    for _ in range(watchdog.MAX_STALLS):
        assert watchdog.sweep()["redriven"] == ["r-stuck"]
    assert watchdog.sweep() == {"redriven": [], "failed": ["r-stuck"]}
    run = sweep.stores.runs.get("r-stuck")
    assert run.status == FAILED
    assert f"stopped {watchdog.MAX_STALLS} times in a row at step 0" in run.error
    assert len(sweep.functions.started) == watchdog.MAX_STALLS


def test_two_sweeps_that_saw_the_same_stall_re_drive_it_once(sweep: World) -> None:
    """A schedule tick delivered twice (same request id or not) sees the same run."""
    _stalled_run(sweep, "r-dup")
    runs = sweep.stores.runs
    runs.redrive("r-dup", 0, 0, 1, now=10**10)
    with pytest.raises(Conflict):
        runs.redrive("r-dup", 0, 0, 1, now=10**10)  # the twin: it saw stalls=0 as well
    assert int(runs.get("r-dup").redrives) == 1


def test_two_deliveries_of_one_event_hold_different_lease_tokens(sweep: World) -> None:
    """Lambda keeps the request id on a duplicate delivery. The twin
    must neither pass for the lease holder nor give the holder's lease back."""
    from trainer_lambdas.trainer import lease_token

    _stalled_run(sweep, "r-twins")
    runs = sweep.stores.runs
    first, twin = lease_token("req-1"), lease_token("req-1")
    assert first != twin and first.startswith("req-1/") and twin.startswith("req-1/")
    runs.acquire("r-twins", first, 30)
    with pytest.raises(Conflict):
        runs.acquire("r-twins", twin, 30)
    runs.release("r-twins", twin, "the twin failed")  # a no-op: not its lease
    assert runs.get("r-twins").lease_owner == first
    run = runs.commit("r-twins", first, 0, progress(1), {}, lease_seconds=30)
    assert run.cursor == 1


def test_a_run_whose_preparation_never_finished_is_failed_with_the_reason(sweep: World) -> None:
    """A launch that failed on every delivery of its upload (the upload
    went to the dead-letter queue) must not leave its run PREPARING for ever (`resume` refuses
    PREPARING runs): the watchdog fails it with the reason."""
    runs = sweep.stores.runs
    runs.create("r-stuck-prep", {"key": "training_input/x.h5"}, started_at=1000.0)
    runs.create("r-preparing", {"key": "training_input/y.h5"}, started_at=2000.0)
    now = 2000.0 + watchdog.PREPARE_LIMIT_SECONDS - 1
    assert watchdog.sweep(now=now) == {"redriven": [], "failed": ["r-stuck-prep"]}
    run = runs.get("r-stuck-prep")
    assert run.status == FAILED and "dead-letter queue" in (run.error or "")
    assert "upload the dataset again" in (run.error or "")
    assert runs.get("r-preparing").status == PREPARING  # still within its retries
    assert [(n["status"], n["run_id"]) for n in sweep.notifications()] == [(FAILED, "r-stuck-prep")]
    assert sweep.functions.started == []
