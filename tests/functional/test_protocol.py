"""The training protocol under what AWS can do to it, over moto in-process.

Each test drives the real coordinator, stores and neuron code against moto's DynamoDB, S3
and SNS, and makes happen what AWS can make happen: a trainer superseded while it works, a
writer on another host writing a version again, a function whose time limit leaves no time
for a step, a finish that loses its lease, a trainer that dies between the end of its run
and the announcement, a warm function that carries counts from an earlier invocation.
"""

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from state.models import POINTER_KEYS, PRODUCTION
from state.runs import FAILED, SUCCEEDED, TRAINING
from tests.functional.conftest import BUCKET, InProcessInvoker, World
from tests.functional.test_training_flow import (
    FOREVER,
    PARAMS,
    assert_equal_to_reference,
    drive,
    launch,
)
from trainer_lambdas import coordinator, watchdog
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.payloads import TrainerEvent


def _weight_keys(world: World, run_id: str) -> list[str]:
    ddb = world.stores.weights.client
    items = ddb.scan(TableName=world.cfg.weights_table)["Items"]
    return [i["sk"]["S"] for i in items if i["pk"]["S"].startswith(f"{run_id}#")]


def test_a_superseded_trainer_stops_fanning_out_and_writes_nothing(world: World) -> None:
    """Finding 4: the heartbeat finds the lease taken; before the fix nothing told the main
    loop, and the stale trainer went on invoking neurons and wrote a weights version and
    cost rows before its commit was refused."""
    world.cfg = replace(world.cfg, lease_seconds=0.3)  # a beat every 0.1 s
    run_id = launch(world, {**PARAMS, "epochs": 40, "batch_size": 16})
    rounds = {"n": 0, "after_theft": 0}

    class TakenOverMidStep(InProcessInvoker):
        def __call__(self, requests: Any) -> Any:
            rounds["n"] += 1
            if rounds["n"] > 5:
                rounds["after_theft"] += 1
            if rounds["n"] == 5:  # mid-step: the watchdog's re-driven trainer takes the run
                world.stores.runs._update(
                    run_id, "test: taken over", set_={"lease_owner": "thief", "lease_until": 1e12}
                )
                assert self.halt.wait(5), "the heartbeat never noticed"
                return super().__call__(requests)  # the round in flight: refused at once
            return super().__call__(requests)

    invoker = TakenOverMidStep(world.stores.objects)
    c = Coordinator(world.cfg, world.stores, invoker)  # type: ignore[arg-type]
    out = c.drive(TrainerEvent(run_id), "stale", FOREVER)
    assert out["outcome"] == "lost-lease"
    assert rounds["n"] == 5 and rounds["after_theft"] == 0  # no round after it
    assert world.stores.costs.list(run_id) == []
    assert not [k for k in _weight_keys(world, run_id) if "stale" in k]
    assert world.stores.runs.get(run_id).lease_owner == "thief"


def test_a_version_is_written_once_per_writer_and_a_commit_names_its_writer(
    world: World,
) -> None:
    """Finding 5: a stale or duplicate writer on another host (whose BLAS may round the
    last bit differently) writes version v again after v was committed. Before the fix it
    overwrote the committed rows; now it writes its own keys, and the commit names whose
    version it points to."""
    run_id = launch(world, PARAMS)
    assert drive(world, run_id, owner="a/1")["outcome"] == "succeeded"
    weights = world.stores.weights
    sizes = (4, 3, 1)
    committed = [(np.full((n, w), 1.0), np.full((n, 1), 2.0)) for n, w in [(4, 40), (3, 4), (1, 3)]]
    weights.write("r", 7, committed, "writer-a")
    late = [(w + 1e-16 * 3, b) for w, b in committed]
    weights.write("r", 7, late, "writer-b")  # the late copy, on another host
    back = weights.read("r", 7, 40, sizes, "writer-a")
    for (w, b), (rw, rb) in zip(back, committed, strict=True):
        assert np.array_equal(w, rw) and np.array_equal(b, rb)
    run = world.stores.runs.get(run_id)
    assert run.status == SUCCEEDED and run.weights_writer == "a/1"


def test_no_stored_weights_expire(world: World) -> None:
    """Finding 6: every version had a 7-day TTL, the committed one included: a FAILED or
    CANCELLED run resumed after a week had lost its state."""
    run_id = launch(world, {**PARAMS, "epochs": 6, "commit_every": 2})
    ddb = world.stores.weights.client
    items = ddb.scan(TableName=world.cfg.weights_table)["Items"]
    assert items and all(set(i) == {"pk", "sk", "w", "b"} for i in items)
    world.stores.runs.cancel(run_id)
    assert world.stores.runs.get(run_id).status != TRAINING


def test_a_time_limit_that_leaves_no_time_for_a_step_fails_the_run(world: World) -> None:
    """Finding 10: with less time than the hand-over margin a trainer handed over at once,
    and its successor did the same, forever."""
    run_id = launch(world, PARAMS)
    outcomes = [
        drive(world, run_id, owner=f"t{i}", remaining=lambda: 100)["outcome"]
        for i in range(coordinator.MAX_IDLE_HANDOVERS + 1)
    ]
    assert outcomes == ["handover"] * coordinator.MAX_IDLE_HANDOVERS + ["handover-loop"]
    run = world.stores.runs.get(run_id)
    assert run.status == FAILED
    assert "without doing a step" in (run.error or "") and "TrainerTimeout" in (run.error or "")
    assert [n["status"] for n in world.notifications()] == ["FAILED"]


def test_a_hand_over_after_progress_resets_the_loop_count(world: World) -> None:
    run_id = launch(world, {**PARAMS, "epochs": 8})
    drive(world, run_id, owner="t0", remaining=lambda: 100)  # idle: 1
    calls = {"n": 0}

    def two_steps() -> int:
        calls["n"] += 1
        return 10**9 if calls["n"] <= 2 else 100

    assert drive(world, run_id, owner="t1", remaining=two_steps)["outcome"] == "handover"
    assert world.stores.runs.get(run_id).idle_handovers == 0
    assert drive(world, run_id, owner="t2")["outcome"] == "succeeded"


def test_the_model_is_offered_only_after_the_run_succeeded(world: World) -> None:
    """Finding 10: `publish` wrote the latest-model pointer before the conditional finish, so a
    trainer whose finish was refused had already replaced the production model."""
    run_id = launch(world, PARAMS)
    store = world.stores.models.store

    def stolen_while_storing(*args: Any) -> str:
        uri = store(*args)
        world.stores.runs._update(
            run_id, "test: taken over", set_={"lease_owner": "thief", "lease_until": 1e12}
        )
        return uri

    world.stores.models.store = stolen_while_storing  # type: ignore[method-assign]
    assert drive(world, run_id, owner="a")["outcome"] == "lost-lease"
    with pytest.raises(ClientError):
        world.s3.head_object(Bucket=BUCKET, Key=POINTER_KEYS[PRODUCTION])


def test_a_trainer_that_dies_after_the_end_is_followed_by_one_that_announces_it(
    world: World,
) -> None:
    """The end of a run and its announcement are two writes: a trainer that stops between
    them (a crash, a timeout) leaves a SUCCEEDED run nobody was told of and a model that
    is not the latest. Lambda's retry (or any trainer of the run) finds it ended and not
    announced, and finishes the job."""
    run_id = launch(world, PARAMS)
    notifier = world.stores.notifier
    real = notifier.run_succeeded

    def dies(run: Any, offer: Any) -> None:
        raise RuntimeError("Runtime exited with error: signal: killed")

    notifier.run_succeeded = dies  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        drive(world, run_id, owner="a")
    run = world.stores.runs.get(run_id)
    assert run.status == SUCCEEDED and not run.notified
    assert world.notifications() == []
    notifier.run_succeeded = real  # type: ignore[method-assign]
    assert drive(world, run_id, owner="a-retry")["outcome"] == "not-ours"
    assert [n["status"] for n in world.notifications()] == ["SUCCEEDED"]
    assert world.stores.runs.get(run_id).notified
    assert world.stores.models.production().run_id == run_id  # type: ignore[union-attr]
    assert _weight_keys(world, run_id) == []  # the run's versions went with its success
    assert drive(world, run_id, owner="a-dup")["outcome"] == "not-ours"
    assert world.notifications() == []  # announced once it is noted


def test_a_warm_trainer_does_not_carry_counts_from_an_earlier_invocation(world: World) -> None:
    """Finding 10: the invoker is cached per warm function, and its counters carried what
    an invocation that never committed had counted into the next run's record."""
    run_id = launch(world, PARAMS)
    invoker = InProcessInvoker(world.stores.objects)
    invoker.counters.add("invocations", 1000)  # left by an invocation that lost its lease
    Coordinator(world.cfg, world.stores, invoker).drive(  # type: ignore[arg-type]
        TrainerEvent(run_id), "a", FOREVER
    )
    run = world.stores.runs.get(run_id)
    assert run.status == SUCCEEDED
    assert run.invocations == len(invoker.requests) < 1000
    assert_equal_to_reference(world, run_id, PARAMS)


def test_resume_resets_the_stall_count_and_refreshes_the_heartbeat(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: `resume` kept the stalls and the old heartbeat; the watchdog re-drove the
    resumed run at once, counting on from the stalls before the failure."""
    from trainer_lambdas import services

    monkeypatch.setattr(services, "stores", lambda: world.stores)
    monkeypatch.setattr(services, "config", lambda: world.cfg)
    run_id = launch(world, PARAMS)
    runs = world.stores.runs
    runs._update(run_id, "test: stalled", set_={"heartbeat": 0, "stall_cursor": 0, "stalls": 9})
    runs.fail(run_id, "the trainer stopped")
    run = runs.resume(run_id)
    assert run.stalls == 0 and run.stall_cursor is None
    assert run.heartbeat > time.time() - 5
    assert watchdog.sweep() == {"redriven": [], "failed": []}  # its trainer gets a lease's time
