"""The step-commit protocol under random interleavings of duplicate and late deliveries.

Hypothesis drives `RunStore` (its real conditional writes, against moto's DynamoDB in
process, on a table made from the template's key schema) through random sequences of what
trainer invocations do: take the lease, commit the next step from the cursor they saw, hand
over, give the lease back after an error, and what happens around them: leases expire,
duplicate deliveries share an owner (Lambda reuses the request id of an event it retries or
duplicates, but each delivery holds the lease under a token of its own), late deliveries act
on a stale view, runs are cancelled and resumed. A small
model predicts each write's outcome; the store must agree, and its committed steps must be
exactly 1, 2, 3, ... in order: none twice, none skipped, each from the lease holder that
saw the cursor before it.
"""

from __future__ import annotations

import time
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

import state.runs
from state.errors import Conflict
from state.runs import CANCELLED, TRAINING, RunStore
from tests.support.runs import progress, started_run
from tests.support.template import create_tables
from trainer_lambdas.trainer import lease_token

LEASE = 30.0
OWNERS = ("req-a", "req-b")


@pytest.fixture(scope="module")
def store() -> Iterator[RunStore]:
    with (
        mock.patch.dict(
            "os.environ",
            {
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            },
        ),
        mock_aws(),
    ):
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        names = create_tables(ddb, "prop")
        yield RunStore(names["RunsTable"], ddb)


class Clock:
    """The runs adapter's view of time, moved on by the test (lease expiry)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def module(self) -> Any:
        return types.SimpleNamespace(
            time=lambda: self.now, strftime=time.strftime, gmtime=time.gmtime
        )


@dataclass
class Delivery:
    """One trainer invocation: whose request it is, and the cursor it last saw."""

    owner: str
    seen: int | None = None


@dataclass
class Model:
    status: str = TRAINING
    cursor: int = 0
    owner: str | None = None
    lease_until: float = 0.0
    committed: list[int] = field(default_factory=list)


# (action, delivery index): deliveries 0 and 1 have their own owners; 2 and 3 are duplicate
# deliveries of 0 and 1 (the same request id). Weighted towards what races: takes and commits.
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["acquire"] * 3 + ["commit"] * 4 + ["handover", "release", "expire", "cancel", "resume"]
        ),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(actions=ACTIONS)
def test_random_interleavings_commit_every_step_exactly_once(
    store: RunStore, actions: list[tuple[str, int]]
) -> None:
    clock = Clock()
    run_id = f"prop-{uuid.uuid4().hex[:10]}"
    with mock.patch.object(state.runs, "time", clock.module()):
        started_run(store, run_id, stale=False)
        # Lambda keeps the request id on a retry or a duplicate delivery; each delivery
        # holds the lease under a token of its own (`lease_token`).
        deliveries = [Delivery(lease_token(OWNERS[i % 2])) for i in range(4)]
        m = Model()
        for action, index in actions:
            d = deliveries[index]
            apply(store, run_id, clock, m, action, d)
            run = store.get(run_id)
            assert run.status == m.status
            assert run.cursor == m.cursor
            assert run.lease_owner == m.owner
            assert run.epochs_done == (m.committed[-1] if m.committed else 0)
    # No step twice, none skipped: the successful commits were 1, 2, ..., cursor, in order.
    assert m.committed == list(range(1, m.cursor + 1))


def apply(store: RunStore, run_id: str, clock: Clock, m: Model, action: str, d: Delivery) -> None:
    """Perform one action on the store and on the model; their outcomes must agree."""
    now = clock.now
    if action == "expire":
        clock.now += LEASE + 1
        return
    if action == "acquire":
        expect = m.status == TRAINING and (
            m.owner is None or m.lease_until < now or m.owner == d.owner
        )
        ok = _ok(lambda: store.acquire(run_id, d.owner, LEASE))
        assert ok == expect, (action, d, m)
        if ok:
            m.owner, m.lease_until = d.owner, now + LEASE
            d.seen = m.cursor
        return
    if action in ("commit", "handover"):
        if d.seen is None:  # a delivery that never held the lease has nothing to commit
            return
        expect = m.status == TRAINING and m.owner == d.owner and m.cursor == d.seen
        step = d.seen + 1
        ok = _ok(
            lambda: store.commit(
                run_id,
                d.owner,
                expected_cursor=d.seen,
                progress=progress(step, d.owner),
                counters={},
                lease_seconds=LEASE,
                release=action == "handover",
            )
        )
        assert ok == expect, (action, d, m)
        if ok:
            m.cursor = step
            m.committed.append(step)
            d.seen = step
            if action == "handover":
                m.owner, m.lease_until = None, 0.0
            else:
                m.lease_until = now + LEASE
        return
    if action == "release":
        store.release(run_id, d.owner, "boom")  # a no-op unless the lease is ours
        if m.owner == d.owner:
            m.owner, m.lease_until = None, 0.0
        return
    if action == "cancel":
        expect = m.status == TRAINING
        assert _ok(lambda: store.cancel(run_id)) == expect
        if expect:
            m.status, m.owner = CANCELLED, None
        return
    if action == "resume":
        expect = m.status == CANCELLED
        assert _ok(lambda: store.resume(run_id)) == expect
        if expect:
            m.status, m.owner, m.lease_until = TRAINING, None, 0.0
        return
    raise AssertionError(action)


def _ok(write: Any) -> bool:
    try:
        write()
    except Conflict:
        return False
    return True
