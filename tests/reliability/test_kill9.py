"""`kill -9` of the trainer, the runtime and the emulator at random moments: every run ends
SUCCEEDED with the reference's costs and parameters (`itsacat.bench.chaos`, its own stack).

Also the relay's part of it: a batch whose invocation's fate is unknown (the runtime died
under it) must not come back before that invocation's deadline, or the launch function's
idempotency record, still "in progress", fails every redelivery until the message goes to
the dead-letter queue and the run stays PREPARING for ever (found by the chaos script).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from embedded.functions import QueueSource
from embedded.relay import Relay
from itsacat.bench import chaos

SEED = 1  # kills the runtime, the emulator and a trainer, at 23%, 45% and 40% of a run


def _report(outcomes: list[chaos.Outcome]) -> str:
    return "\n".join(o.line(len(outcomes) - 1) for o in outcomes)


# `make slow`: each kind of kill is in `make test` already (tests/e2e/test_recovery.py,
# tests/reliability/test_recovery.py, tests/e2e/test_persistence.py); these add the random
# moments, at two minutes and more.
@pytest.mark.slow
def test_three_kills_one_of_each_kind_end_with_the_references_numbers(tmp_path: Path) -> None:
    lines: list[str] = []
    outcomes = chaos.run_chaos(tmp_path / "home", rounds=3, seed=SEED, log=lines.append)
    assert [o.kind for o in outcomes[1:]] == ["runtime", "emulator", "trainer"]
    assert all(o.ok for o in outcomes), "\n".join(lines)
    assert all("TRAINING" in o.at_kill for o in outcomes[1:]), _report(outcomes)


@pytest.mark.slow
def test_ten_kills_at_random_moments_end_with_the_references_numbers(tmp_path: Path) -> None:
    lines: list[str] = []
    outcomes = chaos.run_chaos(tmp_path / "home", rounds=10, seed=7, log=lines.append)
    assert {o.kind for o in outcomes[1:]} == set(chaos.KINDS)
    assert len(outcomes) == 11 and all(o.ok for o in outcomes), "\n".join(lines)


class _Sqs:
    """An SQS queue holding one message, recording what the relay asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages = [{"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}]

    def get_queue_attributes(self, **kw: Any) -> dict[str, Any]:
        return {"Attributes": {"VisibilityTimeout": "360"}}

    def receive_message(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("receive", kw))
        time.sleep(0.01)
        messages, self.messages = self.messages, []
        return {"Messages": messages}

    def change_message_visibility_batch(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("change", kw))
        return {"Successful": [], "Failed": []}

    def delete_message_batch(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("delete", kw))
        return {"Successful": [], "Failed": []}


def _relay(sqs: _Sqs, failed: bool) -> Relay:
    runtime = SimpleNamespace(
        function=lambda name: SimpleNamespace(timeout_s=60),
        faults=SimpleNamespace(chance=lambda kind: False),
        invoke=lambda name, payload: SimpleNamespace(failed=failed, payload=b"{}"),
    )
    source = QueueSource("launch", "arn:aws:sqs:us-east-1:123456789012:q", "http://q", 10)
    clients = SimpleNamespace(client=lambda service: sqs)
    return Relay(runtime, clients, lambda f, s: sqs, [source], SimpleNamespace(time_scale=1 / 30))


@pytest.mark.parametrize("failed", [True, False])
def test_the_relay_receives_for_as_long_as_an_invocation_may_run(failed: bool) -> None:
    sqs = _Sqs()
    relay = _relay(sqs, failed)
    relay.start()
    try:
        deadline = time.monotonic() + 5
        while not [c for c in sqs.calls if c[0] != "receive"] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        relay.stop()
    receive = next(kw for op, kw in sqs.calls if op == "receive")
    # The queue's 360 s on a 1/30 clock is 12 s, shorter than the launch's 60 s timeout
    # (plus the init phase): were the runtime killed under it, the message would come back
    # while the interrupted invocation's idempotency record still says "in progress".
    assert receive["VisibilityTimeout"] >= 70
    ops = [op for op, _ in sqs.calls if op != "receive"]
    if failed:
        # Its invocation ended in failure: it comes back on the stack's clock, as before.
        assert ops == ["change"]
        entry = next(kw for op, kw in sqs.calls if op == "change")["Entries"][0]
        assert entry["ReceiptHandle"] == "r1" and 11 <= entry["VisibilityTimeout"] <= 12
    else:
        assert ops == ["delete"]
