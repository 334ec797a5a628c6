"""The fault kinds that make the embedded stack as unkind as AWS: each happens, and is counted.

`redeliver`: Lambda's event queue may deliver an asynchronous event (and a schedule's tick)
twice with the same request id. `hosts=mixed`: workers compute with different OpenBLAS
kernels and thread counts, as Lambda hosts with different CPUs do, which changes the bits
of a product. (The emulator's storage faults, `ambiguous` and `unprocessed`, have their own
tests in test_storage_faults.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from embedded.faults import FaultPlan, host_kernels, host_max_threads
from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo
from tests.conftest import FIXTURE_STACK, FIXTURE_TEMPLATE
from tests.support.stack import running_stack, wait_for
from tests.support.stack_clients import client

FAULTS = "redeliver=1,hosts=mixed,seed=5"


@pytest.fixture(scope="module")
def unkind_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    home = tmp_path_factory.mktemp("unkind-home")
    # A minute lasts a second: redeliveries come within a second, the watchdog ticks each second.
    config = RuntimeConfig(workers=3, time_scale=1 / 60, faults=FAULTS)
    with running_stack(
        home, extra_templates=[(FIXTURE_STACK, FIXTURE_TEMPLATE)], config=config
    ) as info:
        yield info


def _starts(info: StackInfo, function: str, request_id: str) -> int:
    logs = client(info, "logs")
    try:
        events = logs.filter_log_events(
            logGroupName=f"/aws/lambda/{function}",
            filterPattern=f'"START RequestId: {request_id}"',
        )["events"]
    except logs.exceptions.ResourceNotFoundException:
        return 0  # the group is created with the first lines shipped
    return len(events)


def test_an_event_is_redelivered_with_the_same_request_id(unkind_stack: StackInfo) -> None:
    function = f"{FIXTURE_STACK}-echo"
    response = client(unkind_stack, "lambda").invoke(
        FunctionName=function, InvocationType="Event", Payload=b'{"n": 1}'
    )
    request_id = response["ResponseMetadata"]["RequestId"]
    # The handler runs twice, both times under the request id the caller was given.
    wait_for(lambda: _starts(unkind_stack, function, request_id) == 2, timeout_s=15)
    counters = unkind_stack.stats()["functions"][function]
    assert counters["redeliveries"] >= 1 and counters["executions"] >= 2


def test_a_schedule_tick_is_redelivered_too(unkind_stack: StackInfo) -> None:
    watchdog = f"{unkind_stack.stack_name}-watchdog"
    counters = wait_for(
        lambda: unkind_stack.stats()["functions"].get(watchdog, {}).get("redeliveries"),
        timeout_s=15,
    )
    assert counters >= 1


def test_mixed_hosts_give_workers_different_blas_kernels(unkind_stack: StackInfo) -> None:
    lam = client(unkind_stack, "lambda", max_pool_connections=8)
    function = f"{FIXTURE_STACK}-sleep"

    def call(_: int) -> None:
        lam.invoke(FunctionName=function, Payload=b'{"seconds": 0.5}')

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(call, range(6)))  # three workers, each on a "host" of its own
    hosts = unkind_stack.stats()["hosts"]
    assert sum(hosts.values()) >= 3, hosts
    assert all(h.startswith("OPENBLAS_CORETYPE=") for h in hosts)
    echo = json.loads(
        lam.invoke(FunctionName=f"{FIXTURE_STACK}-echo", Payload=b"{}")["Payload"].read()
    )
    assert echo["env"]["OPENBLAS_CORETYPE"] in host_kernels()
    assert 1 <= int(echo["env"]["OPENBLAS_NUM_THREADS"]) <= host_max_threads()


_PRODUCT = """
import hashlib, numpy as np
rng = np.random.default_rng(0)
W, X = rng.standard_normal((20, 4096)), rng.standard_normal((4096, 64))
print(hashlib.sha256((W @ X).tobytes()).hexdigest())
"""


def test_the_kernels_of_mixed_hosts_change_the_bits_of_a_product(tmp_path: Path) -> None:
    """What `hosts=mixed` is for: the same product, computed on two hosts, differs."""
    digests = set()
    for kernel in host_kernels():
        env = {"OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-c", _PRODUCT], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    if len(host_kernels()) < 2:
        pytest.fail(f"this CPU offers one kernel of the list only: {host_kernels()}")
    assert len(digests) > 1


def test_host_environments_are_drawn_from_the_seed() -> None:
    first = [FaultPlan.parse("hosts=mixed,seed=1").host_environment() for _ in range(1)]
    again = [FaultPlan.parse("hosts=mixed,seed=1").host_environment() for _ in range(1)]
    assert first == again
    assert FaultPlan.parse("").host_environment() == {}
    with pytest.raises(ValueError, match="bad value"):
        FaultPlan.parse("hosts=weird")
