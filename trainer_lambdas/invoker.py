"""Runs a layer's neuron requests in parallel through the Lambda Invoke API, with retries.

Neuron invocations are pure, so a failed, throttled or timed-out one is simply sent again
(up to `MAX_ATTEMPTS`; throttles back off and do not use up attempts so fast). What was
absorbed is counted, and the trainer adds the counts to the run record at its next commit.
"""

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from state.errors import StateError, Throttled
from state.functions import Functions
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse, PayloadError

MAX_ATTEMPTS = 8
MAX_THROTTLES = 20


class NeuronFailed(RuntimeError):
    """A neuron request failed every attempt."""


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
        self.counters = Counters()
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="neuron")

    def __call__(self, requests: Sequence[NeuronRequest]) -> list[NeuronResponse]:
        if len(requests) == 1:  # no thread hop for a single block
            return [self._one(requests[0])]
        return list(self.pool.map(self._one, requests))

    def _one(self, req: NeuronRequest) -> NeuronResponse:
        payload = req.to_json()
        attempts = throttles = 0
        while True:
            self.counters.add("invocations")
            try:
                return NeuronResponse.from_json(self.functions.call(self.function, payload))
            except Throttled as e:
                throttles += 1
                self.counters.add("throttles")
                if throttles > MAX_THROTTLES:
                    raise NeuronFailed(f"layer {req.layer} neurons {req.lo}:{req.hi}: {e}") from e
                time.sleep(min(1.0, 0.01 * 2**throttles) * random.uniform(0.5, 1.0))
            except (StateError, PayloadError) as e:
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    raise NeuronFailed(
                        f"layer {req.layer} neurons {req.lo}:{req.hi} failed {attempts} times: {e}"
                    ) from e
                self.counters.add("retries")
