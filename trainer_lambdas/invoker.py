"""Runs a layer's neuron requests in parallel through the Lambda Invoke API, with retries.

All of a layer's requests go out at once, `concurrency` at a time, from the trainer's own
thread (`Functions.call_many`: one keep-alive connection per request in flight, no thread
per request). Neuron invocations are pure, so a failed, throttled or timed-out one is
simply sent again (up to `MAX_ATTEMPTS`; a round with throttles backs off, and throttles
do not use up attempts). What was absorbed is counted, and the trainer adds the counts to
the run record at its next commit.
"""

import random
import threading
import time
from collections.abc import Sequence

from state.errors import StateError, Throttled
from state.functions import Functions
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse, PayloadError

MAX_ATTEMPTS = 8
MAX_THROTTLES = 20


class NeuronFailed(RuntimeError):
    """A neuron request failed every attempt."""


class LeaseLost(RuntimeError):
    """The trainer no longer holds its run's lease: it must stop fanning out at once."""


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = {"invocations": 0, "retries": 0, "throttles": 0}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n

    def take(self) -> dict[str, int]:
        """The counts since the last take (what the next commit adds)."""
        with self._lock:
            out, self.values = self.values, dict.fromkeys(self.values, 0)
        return out


class LambdaInvoker:
    def __init__(self, functions: Functions, function: str, concurrency: int) -> None:
        self.functions = functions
        self.function = function
        self.concurrency = concurrency
        self.counters = Counters()
        # Set by the trainer's heartbeat when the lease is lost: no round is sent after it.
        self.halt = threading.Event()

    def __call__(self, requests: Sequence[NeuronRequest]) -> list[NeuronResponse]:
        """Every request's response, in order; failed ones are sent again (all of a round's
        failures together), throttled ones after a backoff."""
        memo: dict[tuple[int, int], bytes] = {}  # what the layer's requests share, encoded once
        payloads = [r.to_parts(memo) for r in requests]
        results: list[NeuronResponse | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        throttles = 0
        pending = list(range(len(requests)))
        while pending:
            if self.halt.is_set():
                raise LeaseLost("the run's lease was lost; no more neuron invocations")
            self.counters.add("invocations", len(pending))
            outs = self.functions.call_many(
                self.function, [payloads[i] for i in pending], self.concurrency
            )
            again, throttled = [], False
            for i, out in zip(pending, outs, strict=True):
                req = requests[i]
                try:
                    if isinstance(out, Exception):
                        raise out
                    results[i] = NeuronResponse.from_json(out)
                except Throttled as e:
                    throttled = True
                    self.counters.add("throttles")
                    if throttles >= MAX_THROTTLES:
                        raise NeuronFailed(
                            f"layer {req.layer} neurons {req.lo}:{req.hi}: {e}"
                        ) from e
                    again.append(i)
                except (StateError, PayloadError) as e:
                    attempts[i] += 1
                    if attempts[i] >= MAX_ATTEMPTS:
                        raise NeuronFailed(
                            f"layer {req.layer} neurons {req.lo}:{req.hi} failed "
                            f"{attempts[i]} times: {e}"
                        ) from e
                    self.counters.add("retries")
                    again.append(i)
            if throttled:
                throttles += 1
                time.sleep(min(1.0, 0.01 * 2**throttles) * random.uniform(0.5, 1.0))
            pending = again
        return [r for r in results if r is not None]
