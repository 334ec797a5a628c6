"""Killed trainers, a killed runtime, cancel and resume, concurrent runs: the same numbers.

Each run is compared with the single-process reference trainer (costs per epoch and final
parameters, relative 1e-9): whatever stopped it, the run resumed from its last committed
step and recomputed exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from embedded.stack import StackInfo
from embedded.stack import info as recorded
from tests.reliability.support import (
    DATA,
    PARAMS,
    Client,
    alive,
    assert_equals_reference,
    descendants,
    kill9,
    workers_of,
)
from tests.support.stack import itsacat, wait_for
from trainer_lambdas import datasets

# long enough to be stopped in the middle, committing every step (the default is every 50)
LONG = {**PARAMS, "epochs": 30, "commit_every": 1}


def test_killing_the_trainer_mid_run_then_lambda_retrying_gives_the_same_numbers(
    steady_stack: StackInfo, steady: Client
) -> None:
    before = steady_stack.stats()["functions"].get("itsacat-trainer", {}).get("crashes", 0)
    run_id = steady.submit(LONG, name="kill-trainer")
    run = steady.wait_cursor(run_id, 3)
    assert run.status == "TRAINING" and int(run.cursor) < 30
    victims = workers_of(steady_stack, "itsacat-trainer")
    assert victims, "the trainer's worker process should be running"
    for pid in victims:
        kill9(pid)
    wait_for(lambda: not any(alive(p) for p in victims), timeout_s=5)
    run = steady.wait(run_id, timeout_s=90)
    assert_equals_reference(steady, run_id, LONG)
    # The runtime saw the worker die; Lambda's retry of the event continued the run.
    stats = steady_stack.stats()["functions"]["itsacat-trainer"]
    assert stats["crashes"] > before and stats["retries"] >= 1


def test_cancel_then_resume_gives_the_same_numbers(steady_stack: StackInfo, steady: Client) -> None:
    home = steady_stack.home
    run_id = steady.submit(LONG, name="cancel-resume")
    steady.wait_cursor(run_id, 2)
    cancel = itsacat(home, "cancel", run_id)
    assert cancel.returncode == 0, cancel.stderr
    assert f"cancelled run {run_id} at epoch" in cancel.stdout and "itsacat resume" in cancel.stdout
    run = steady.runs.get(run_id)
    assert run.status == "CANCELLED"
    # The trainer stops at its next commit: the cursor stays where the cancel found it.
    time.sleep(1.0)
    stopped = steady.runs.get(run_id)
    assert stopped.cursor == run.cursor < 30 and stopped.status == "CANCELLED"
    assert steady.model_objects(run_id) == []

    again = itsacat(home, "cancel", run_id)
    assert again.returncode == 2 and "is CANCELLED, not running" in again.stderr

    resumed = itsacat(home, "resume", run_id, "--wait", "--json", timeout_s=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "SUCCEEDED" and summary["epochs"] == 30
    assert_equals_reference(steady, run_id, LONG)

    done = itsacat(home, "resume", run_id)
    assert done.returncode == 2 and "already succeeded" in done.stderr
    missing = itsacat(home, "resume", "no-such-run")
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr


def test_a_run_that_failed_before_training_cannot_be_resumed(
    steady_stack: StackInfo, steady: Client
) -> None:
    run_id = steady.run_for(steady.upload(b"not hdf5", PARAMS, name="bad"))
    assert steady.wait(run_id).status == "FAILED"
    out = itsacat(steady_stack.home, "resume", run_id)
    assert out.returncode == 2
    assert "failed before training started" in out.stderr and "upload it again" in out.stderr


def test_killing_the_whole_runtime_then_restarting_it_resumes_through_the_watchdog(
    steady_stack: StackInfo, steady: Client
) -> None:
    """The runtime and every worker die; `itsacat up` restarts the runtime beside the live
    emulator (whose state is the stack's state), and the watchdog re-drives the run."""
    home = steady_stack.home
    run_id = steady.submit(LONG, name="kill-runtime")
    steady.wait_cursor(run_id, 3)
    current = recorded(Path(home))
    assert current is not None
    doomed = [current.runtime_pid, *descendants(current.runtime_pid)]
    os.killpg(current.runtime_pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in doomed), timeout_s=10)
    at_kill = steady.runs.get(run_id)
    assert at_kill.status == "TRAINING" and int(at_kill.cursor) < 30

    status = itsacat(home, "status")
    assert status.returncode == 1 and "DEAD" in status.stdout
    up = itsacat(home, "up")
    assert up.returncode == 0, up.stderr
    assert "restarted the local runtime" in up.stdout
    restarted = recorded(Path(home))
    assert restarted is not None and restarted.running
    assert restarted.runtime_pid != current.runtime_pid
    assert restarted.lambda_url == current.lambda_url  # the same endpoint: clients keep working

    run = steady.wait(run_id, timeout_s=90)
    assert int(run.redrives) >= 1
    assert_equals_reference(steady, run_id, LONG)


def test_three_concurrent_runs_each_equal_their_own_reference(steady: Client) -> None:
    variants = [
        {**PARAMS, "seed": 5},
        {**PARAMS, "learning_rate": 0.1, "batch_size": 12, "fanout": 2},
        {
            **PARAMS,
            "layers": 2,
            "activations": {"layer1": "tanh", "layer2": "sigmoid"},
            "neurons": {"layer1": 5, "layer2": 1},
            "commit_every": 2,
            "epochs": 4,
        },
    ]
    other = datasets.synthesize(m_train=24, m_test=0, side=8, seed=99)
    bodies = [datasets.to_bytes(DATA), datasets.to_bytes(DATA), datasets.to_bytes(other)]
    with ThreadPoolExecutor(3) as pool:
        keys = list(
            pool.map(
                lambda i: steady.upload(bodies[i], variants[i], name=f"concurrent{i}"), range(3)
            )
        )
    run_ids = [steady.run_for(k) for k in keys]
    assert len(set(run_ids)) == 3
    for run_id in run_ids:
        steady.wait(run_id, timeout_s=120)
    for run_id, params, data in zip(run_ids, variants, [DATA, DATA, other], strict=True):
        assert_equals_reference(steady, run_id, params, data)
