"""The fault-injection hook: which faults to inject into one invocation.

AWS delivers events at least once, retries, throttles and kills functions at their time
limit; the trainer must come out of all of it with the numbers of a clean run. The local
runtime consults a `FaultPlan` once per invocation (and the relay once per S3 message) and
applies what it answers:

  throttle      answer `TooManyRequestsException` (429) instead of running the handler
  delay_s       wait this long before running it
  duplicate     run the invocation a second time (the caller sees one result)
  crash_before  the worker dies before the handler runs (no side effects)
  crash_after   the worker dies after the handler returned, before replying
  timeout       the handler overruns the function's timeout and the worker is killed
  redeliver     an asynchronous event (or a schedule's tick) is delivered twice with the
                same request id, as Lambda's at-least-once event queue may

and, in the emulator (`embedded.storage_faults`), per request a function makes:

  ambiguous     a DynamoDB write or S3 put is applied, but the client gets a 5xx (or the
                connection drops) instead of the answer, and retries it
  unprocessed   `BatchWriteItem` returns part of its items as `UnprocessedItems`

and for the whole stack:

  hosts=mixed   workers differ as Lambda hosts do: each gets its own OpenBLAS kernel
                (`OPENBLAS_CORETYPE`) and, on a machine with the cores, thread count, so a
                recomputed step may differ from the first computation in its last bits

The default plan injects nothing. A plan is built from a spec such as
`duplicate=0.1,crash_before=0.1,throttle=0.1,delay_ms=0-200,s3_duplicate=0.5,seed=7`
(probabilities per invocation, a delay range, a seed for reproducible choices).
"""

from __future__ import annotations

import functools
import os
import random
import threading
from dataclasses import dataclass

_PROBABILITIES = (
    "duplicate",
    "crash_before",
    "crash_after",
    "timeout",
    "throttle",
    "s3_duplicate",
    "redeliver",
    "ambiguous",
    "unprocessed",
)
HOSTS = ("same", "mixed")


# OpenBLAS kernels (`OPENBLAS_CORETYPE`) that x86-64 Lambda hosts may get, each with the CPU
# feature it needs: OpenBLAS picks one per CPU, and Lambda promises no CPU model.
_X86_KERNELS = (("Haswell", "avx2"), ("SandyBridge", "avx"), ("Nehalem", "sse4_2"))
_ARM_KERNELS = (("NEOVERSEN1", "asimd"), ("ARMV8", "fp"))


@functools.cache
def host_kernels() -> tuple[str, ...]:
    """The kernels from the lists above that this machine's CPU can run."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    kernels = _ARM_KERNELS if "asimd" in flags else _X86_KERNELS
    usable = tuple(name for name, flag in kernels if flag in flags)
    return usable or (kernels[-1][0],)


def host_max_threads() -> int:
    """The most BLAS threads a mixed host gets: 2 where the machine has the cores for it
    (8 or more), else 1. The thread count changes bits too (a probe: W·X on the Nehalem
    kernel), but OpenBLAS threads spin while they wait, and several workers with two
    threads each on a 2-core machine made a 12 ms product take 200-450 ms and neuron
    invocations run into their timeout: the kernels alone already vary the bits."""
    return 2 if (os.cpu_count() or 1) >= 8 else 1


@dataclass(frozen=True)
class Faults:
    """The faults to inject into one invocation; all off by default."""

    throttle: bool = False
    delay_s: float = 0.0
    duplicate: bool = False
    crash_before: bool = False
    crash_after: bool = False
    timeout: bool = False

    @property
    def worker_fault(self) -> str | None:
        """The fault the worker process itself acts out, if any."""
        for name in ("crash_before", "crash_after", "timeout"):
            if getattr(self, name):
                return name
        return None


NO_FAULTS = Faults()


class FaultPlan:
    """Decides per invocation which faults to inject; injects none unless given a spec."""

    def __init__(
        self,
        probabilities: dict[str, float] | None = None,
        delay_ms: tuple[int, int] = (0, 0),
        seed: int | None = None,
        functions: frozenset[str] | None = None,
        hosts: str = "same",
    ) -> None:
        self.probabilities = dict(probabilities or {})
        self.delay_ms = delay_ms
        self.hosts = hosts
        self.functions = functions  # None: every function
        self.seed = seed
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return any(self.probabilities.values()) or self.delay_ms[1] > 0 or self.hosts != "same"

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        """Build a plan from `name=value,...`; raises ValueError naming what is wrong."""
        probabilities: dict[str, float] = {}
        delay_ms = (0, 0)
        seed: int | None = None
        hosts = "same"
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault {item!r}: expected name=value")
            try:
                if name in _PROBABILITIES:
                    probability = float(value)
                    if not 0.0 <= probability <= 1.0:
                        raise ValueError
                    probabilities[name] = probability
                elif name == "delay_ms":
                    low, _, high = value.partition("-")
                    delay_ms = (int(low), int(high or low))
                    if not 0 <= delay_ms[0] <= delay_ms[1]:
                        raise ValueError
                elif name == "seed":
                    seed = int(value)
                elif name == "hosts":
                    if value not in HOSTS:
                        raise ValueError
                    hosts = value
                else:
                    known = ", ".join((*_PROBABILITIES, "delay_ms", "hosts", "seed"))
                    raise KeyError(f"unknown fault {name!r} (known: {known})")
            except ValueError:
                raise ValueError(f"fault {item!r}: bad value") from None
            except KeyError as e:
                raise ValueError(e.args[0]) from None
        return cls(probabilities, delay_ms, seed, hosts=hosts)

    def _chance(self, name: str) -> bool:
        probability = self.probabilities.get(name, 0.0)
        return probability > 0 and self._random.random() < probability

    def chance(self, name: str) -> bool:
        """Whether to inject the fault `name` (one of the probabilities) this time."""
        if not self.probabilities.get(name):
            return False
        with self._lock:
            return self._chance(name)

    def host_environment(self) -> dict[str, str]:
        """The environment of a new worker's "host": nothing special unless `hosts=mixed`,
        then an OpenBLAS kernel and a thread count of its own (see `HOST_KERNELS`)."""
        if self.hosts != "mixed":
            return {}
        with self._lock:
            kernel = self._random.choice(host_kernels())
            threads = self._random.randint(1, host_max_threads())
        return {"OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": str(threads)}

    def decide(self, function: str, invocation_type: str) -> Faults:
        """The faults for one invocation of `function` (`RequestResponse` or `Event`)."""
        if not self.enabled or (self.functions is not None and function not in self.functions):
            return NO_FAULTS
        with self._lock:
            throttle = self._chance("throttle")
            low, high = self.delay_ms
            delay_s = self._random.uniform(low, high) / 1000 if high else 0.0
            duplicate = self._chance("duplicate")
            # At most one fault inside the worker per invocation.
            worker = [n for n in ("crash_before", "crash_after", "timeout") if self._chance(n)][:1]
        return Faults(
            throttle=throttle,
            delay_s=delay_s,
            duplicate=duplicate,
            crash_before=worker == ["crash_before"],
            crash_after=worker == ["crash_after"],
            timeout=worker == ["timeout"],
        )
