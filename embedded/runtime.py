"""The local Lambda runtime's daemon: what `itsacat up` starts beside the emulator.

It reads the deployed stacks from `$ITSACAT_HOME/runtime.json`, asks the emulator for each
function's configuration, unpacks each function's deployed code package and layers, and then
runs, until SIGTERM: the invocation engine (`embedded.invocations`) with its warm workers, the
Invoke API on loopback (`embedded.invoke_api`), the SQS relay, the schedules and the log sink.
Each function's workers get its execution role's credentials (STS `AssumeRole` in the
emulator), never the user's.

Run as `python -m embedded.runtime --home DIR` (what `itsacat up` starts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from embedded.functions import FunctionSpec
from embedded.invocations import ConcurrencyConfigError, Runtime, RuntimeConfig
from embedded.invoke_api import make_server
from embedded.logsink import LogSink
from embedded.workers import Filesystem

__all__ = ["RuntimeConfig", "main", "run_daemon"]


def function_files(clients: Any, spec: FunctionSpec) -> Filesystem:
    """A function's code package and layers as deployed (unpacked from the emulator's S3),
    and the Lambda runtime's own packages."""
    from embedded import lambda_files

    s3 = clients.client("s3")
    if spec.code is None:
        raise RuntimeError(f"function {spec.name} has no deployed code package in S3")
    return Filesystem(
        task_root=str(lambda_files.unpacked(s3, spec.code["bucket"], spec.code["key"])),
        layer_roots=tuple(
            str(lambda_files.unpacked(s3, layer["bucket"], layer["key"])) for layer in spec.layers
        ),
        runtime_root=str(lambda_files.runtime_packages()),
    )


class ExecutionRoles:
    """Each function's execution-role credentials, from the emulator's STS, as Lambda gets
    them: a session named after the function, renewed well before it expires. Its workers
    get them, and so do the calls Lambda makes on the function's behalf: the SQS event
    source mapping's polls, on-failure destinations, and the shipping of its logs."""

    RENEW_AFTER_S = 45 * 60

    def __init__(self, sts: Any, endpoint_url: str, functions: dict[str, FunctionSpec]) -> None:
        self.sts = sts
        self.endpoint_url = endpoint_url
        self.functions = functions
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._clients: dict[tuple[str, str], tuple[dict[str, str], Any]] = {}

    def credentials(self, spec: FunctionSpec) -> dict[str, str]:
        """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN of its role."""
        with self._lock:
            cached = self._cache.get(spec.name)
            if cached and time.monotonic() - cached[0] < self.RENEW_AFTER_S:
                return cached[1]
            if not spec.role:
                raise RuntimeError(f"function {spec.name} has no execution role")
            answer = self.sts.assume_role(
                RoleArn=spec.role, RoleSessionName=spec.name, DurationSeconds=3600
            )["Credentials"]
            credentials = {
                "AWS_ACCESS_KEY_ID": answer["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": answer["SecretAccessKey"],
                "AWS_SESSION_TOKEN": answer["SessionToken"],
            }
            self._cache[spec.name] = (time.monotonic(), credentials)
            return credentials

    def client(self, function: str, service: str) -> Any:
        """A boto3 client for `service` with the role of `function`."""
        import boto3
        from botocore.config import Config

        credentials = self.credentials(self.functions[function])
        with self._lock:
            cached = self._clients.get((function, service))
            if cached is not None and cached[0] is credentials:
                return cached[1]
            client = boto3.client(
                service,
                endpoint_url=self.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=credentials["AWS_SESSION_TOKEN"],
                config=Config(retries={"max_attempts": 2, "mode": "standard"}),
            )
            self._clients[(function, service)] = (credentials, client)
            return client

    def logs_for_group(self, group: str) -> Any | None:
        """The logs client of the function whose log group this is (None: not a function's)."""
        name = group.removeprefix("/aws/lambda/")
        return self.client(name, "logs") if name in self.functions else None


def run_daemon(home: Path, port: int) -> None:
    """Load the stack from `home`; run runtime, relay, schedule and log sink until SIGTERM."""
    from embedded.cfn_backfill import Clients
    from embedded.deploy import DeployedStack
    from embedded.functions import load_topology
    from embedded.relay import Relay
    from embedded.schedule import Scheduler

    settings = json.loads((home / "runtime.json").read_text())
    emulator_url = settings["emulator_url"]
    config = RuntimeConfig.from_json(settings["config"])
    clients = Clients(emulator_url)
    stacks = [DeployedStack.from_json(s) for s in settings["stacks"]]
    topology = load_topology(clients, stacks)
    roles = ExecutionRoles(
        Clients(emulator_url).client("sts"), emulator_url, dict(topology.functions)
    )
    sink = LogSink(Clients(emulator_url).client("logs"), roles.logs_for_group)
    files = {name: function_files(clients, spec) for name, spec in topology.functions.items()}
    extra: dict[str, Any] = {}
    server, handler = make_server("127.0.0.1", port, emulator_url, extra)
    runtime_url = f"http://127.0.0.1:{server.server_port}"
    endpoints = {"AWS_ENDPOINT_URL": emulator_url, "AWS_ENDPOINT_URL_LAMBDA": runtime_url}
    try:
        runtime = Runtime(
            topology, config, endpoints, sink, clients, files, roles.credentials, roles.client
        )
    except ConcurrencyConfigError as e:
        print(f"the functions' concurrency does not fit the account: {e}", flush=True)
        server.server_close()
        raise SystemExit(1) from None
    handler.runtime = runtime
    relay = Relay(runtime, Clients(emulator_url), roles.client, topology.queue_sources, config)
    scheduler = Scheduler(runtime, topology.schedules, config.schedule_scale)
    extra["relay"] = relay.snapshot
    extra["schedules"] = scheduler.snapshot

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.start()
    relay.start()
    scheduler.start()
    ready = home / "runtime.ready"
    ready.with_suffix(".tmp").write_text(
        json.dumps({"port": server.server_port, "pid": os.getpid()})
    )
    ready.with_suffix(".tmp").replace(ready)
    print(
        f"runtime listening on {runtime_url}; functions: {', '.join(topology.functions)}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        scheduler.stop()
        relay.stop()
        runtime.close()
        server.server_close()
        sink.close()
        print("runtime stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The embedded stack's local Lambda runtime.")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    run_daemon(args.home, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
