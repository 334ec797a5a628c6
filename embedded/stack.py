"""Start, inspect and stop the embedded stack; its state lives in a directory on disk.

`start()` launches two background processes, the emulator (`embedded.emulator`) and the
local Lambda runtime (`embedded.runtime`, which owns the worker processes, the relay, the
schedule and the log sink), creates the template in the emulator between the two, and
records ports, process ids and resource names in `$ITSACAT_HOME/stack.json` (default
`~/.itsacat`). `stop()` stops exactly those processes, by the ids recorded there, after
checking that each id still belongs to the process it started. `StackInfo.env()` gives the
environment that points boto3 and the AWS CLI at the stack.

The emulator keeps its data (objects, items, log events, queued messages) in
`$ITSACAT_HOME/state` (`embedded.persistence`): `start()` creates the stacks, then has the
emulator put the saved data back into them before the runtime starts, so runs, models and
logs survive `stop()`, a reboot and a crash. `wipe_data()` deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedded import lambda_files, persistence
from embedded.cfn_backfill import Clients
from embedded.deploy import REGION, DeployedStack, DeployError, api_role_template, create_stack
from embedded.invocations import RuntimeConfig
from itsacat.deploy.package import PackageError, stage_template

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = PROJECT_ROOT / "templates" / "template.yaml"
STACK_NAME = "itsacat"
_STATE = "stack.json"
DATA_DIR = "state"  # the emulator's saved data, under the home
_READY_TIMEOUT_S = 60.0

# Template output -> environment variable of `itsacat env` (and the functions' own names).
_OUTPUT_ENV = {
    "BucketName": "ITSACAT_BUCKET",
    "RunsTableName": "RUNS_TABLE",
    "WeightsTableName": "WEIGHTS_TABLE",
    "CostsTableName": "COSTS_TABLE",
    "IdempotencyTableName": "IDEMPOTENCY_TABLE",
    "TopicArn": "TOPIC_ARN",
    "LaunchFunctionName": "LAUNCH_FUNCTION",
    "TrainerFunctionName": "TRAINER_FUNCTION",
    "NeuronFunctionName": "NEURON_FUNCTION",
    "WatchdogFunctionName": "WATCHDOG_FUNCTION",
}


class StackError(Exception):
    """The stack could not be started or stopped; the message says why in one line."""


class AlreadyRunning(StackError):
    def __init__(self, info: StackInfo) -> None:
        super().__init__(f"the embedded stack is already running (emulator {info.emulator_url})")
        self.info = info


@dataclass
class StackInfo:
    """A running (or recorded) embedded stack."""

    home: str
    stack_name: str
    emulator_url: str
    lambda_url: str
    emulator_pid: int
    runtime_pid: int
    started_at: float
    config: dict[str, Any]
    outputs: dict[str, str]
    stacks: list[dict[str, Any]] = field(default_factory=list)
    api_role_arn: str = ""  # the prediction API's role (`itsacat serve` takes it)
    restored: dict[str, Any] | None = None  # what start() put back (`persistence.Restored`)

    @property
    def bucket(self) -> str:
        return self.outputs["BucketName"]

    def env(self) -> dict[str, str]:
        """The environment that points boto3 and the AWS CLI at this stack."""
        env = {
            "AWS_ENDPOINT_URL": self.emulator_url,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        for output, name in _OUTPUT_ENV.items():
            if output in self.outputs:
                env[name] = self.outputs[output]
        if self.api_role_arn:
            env["ITSACAT_API_ROLE_ARN"] = self.api_role_arn
        return env

    def processes(self) -> dict[str, bool]:
        """Which of the stack's processes are alive."""
        return {
            "emulator": _is_ours(self.emulator_pid, "embedded.emulator", self.home),
            "runtime": _is_ours(self.runtime_pid, "embedded.runtime", self.home),
        }

    @property
    def running(self) -> bool:
        return all(self.processes().values())

    def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The runtime's counters (`GET /itsacat/stats`)."""
        with urllib.request.urlopen(f"{self.lambda_url}/itsacat/stats", timeout=timeout_s) as r:
            data: dict[str, Any] = json.load(r)
            return data


def local_arch() -> str:
    """This machine's architecture, as Lambda names it."""
    return {"aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "x86_64")


def default_home() -> Path:
    return Path(os.environ.get("ITSACAT_HOME") or Path.home() / ".itsacat")


def info(home: Path | None = None) -> StackInfo | None:
    """The recorded stack in `home`, or None when none was started there."""
    path = (home or default_home()) / _STATE
    try:
        return StackInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise StackError(f"{path} is damaged ({e}); remove it after checking nothing runs") from e


def _is_ours(pid: int, module: str, home: str) -> bool:
    """Is `pid` alive and still the process we started (not a recycled id)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False
    if b"-m" not in cmdline or module.encode() not in cmdline:
        return False
    if not any(home.encode() in arg for arg in cmdline):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    except OSError:
        return False


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _api_template() -> dict[str, Any]:
    """The API's template as `itsacat deploy` writes it (`chalice package` and all), cached
    under the content of what it is made from: building it takes seconds."""
    from itsacat.deploy import package

    sources = [
        p
        for p in sorted((PROJECT_ROOT / "chalice_app").rglob("*"))
        if p.is_file() and not {"__pycache__", "vendor", "deployed"} & set(p.parts)
    ]
    sources += [Path(package.__file__)]
    for rel in package.API_VENDOR:
        path = PROJECT_ROOT / rel
        sources += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    cached = lambda_files.cache_dir() / f"api-template-{digest.hexdigest()[:16]}.json"
    if not cached.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            built = package.stage_api_template(Path(tmp) / "api-template.json", REGION, "x86_64")
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.with_suffix(".tmp").write_text(built.read_text())
            cached.with_suffix(".tmp").replace(cached)
    result: dict[str, Any] = json.loads(cached.read_text())
    return result


def _create_api_role(
    clients: Clients, build: Path, stack_name: str, main: DeployedStack
) -> DeployedStack:
    """The `<stack>-api` stack's role (see `embedded.deploy.api_role_template`)."""
    name = f"{stack_name}-api"
    work = build / name
    work.mkdir(parents=True, exist_ok=True)
    path = work / "template.json"
    path.write_text(json.dumps(api_role_template(_api_template()), indent=1))
    return create_stack(
        clients, name, path, {"DataBucket": main.outputs["BucketName"]}, work_dir=work
    )


# Template parameters that are clocks of the protocol, kept in proportion to AWS's clocks
# (`RuntimeConfig.time_scale`): the trainer's lease is a minute on AWS, as the watchdog's rate
# and the wait before an asynchronous retry are. `CommitSeconds` is not one: it is how much
# work a crash may cost (and each commit writes a weight version), not a race with AWS.
SCALED_PARAMETERS = ("LeaseSeconds",)


def scaled_parameters(template: Path, given: dict[str, str], time_scale: float) -> dict[str, str]:
    """`given`, plus each of SCALED_PARAMETERS the template declares and `given` leaves out,
    at its default times `time_scale`."""
    declared = json.loads(Path(template).read_text()).get("Parameters", {})
    result = dict(given)
    for name in SCALED_PARAMETERS:
        default = declared.get(name, {}).get("Default")
        if name not in result and default is not None and time_scale != 1:
            result[name] = f"{float(default) * time_scale:g}"
    return result


def _spawn(module: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(PROJECT_ROOT),
            env=env,
            start_new_session=True,  # not killed by the terminal's Ctrl-C
        )


def _wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path, what: str) -> int:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise StackError(f"the {what} exited during start-up: {tail[0]} (see {log})")
        if time.monotonic() > deadline:
            raise StackError(
                f"the {what} did not start within {_READY_TIMEOUT_S:.0f} s (see {log})"
            )
        time.sleep(0.05)
    port: int = json.loads(ready.read_text())["port"]
    return port


def start(
    home: Path | None = None,
    *,
    port: int | None = None,
    lambda_port: int | None = None,
    workers: int = 4,
    stack_name: str = STACK_NAME,
    template: Path = TEMPLATE,
    extra_templates: Sequence[tuple[str, Path]] = (),
    parameters: dict[str, str] | None = None,
    config: RuntimeConfig | None = None,
) -> StackInfo:
    """Start the embedded stack in the background and return once it answers.

    `extra_templates` are further (stack name, template) pairs created beside the main one
    and served by the same runtime (tests use it for test-only functions).
    Raises AlreadyRunning if a stack runs in `home`, StackError if anything fails (and then
    leaves nothing running).
    """
    home = (home or default_home()).resolve()
    config = config or RuntimeConfig(workers=workers)
    with _locked(home):
        existing = info(home)
        if existing is not None:
            if existing.running:
                raise AlreadyRunning(existing)
            _stop_processes(existing)  # a stack that half died: clear it away first
        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        for stale in ("emulator.ready", "runtime.ready", "runtime.json", _STATE):
            (home / stale).unlink(missing_ok=True)
        try:  # a damaged snapshot is told before anything starts
            persistence.check(home / DATA_DIR / persistence.SNAPSHOT_FILE)
        except persistence.SnapshotError as e:
            raise StackError(_damaged(str(e))) from e
        started: list[subprocess.Popen[bytes]] = []
        try:
            emulator = _spawn(
                "embedded.emulator",
                [
                    *("--port", str(port or 0), "--ready-file", str(home / "emulator.ready")),
                    *("--state-dir", str(home / DATA_DIR)),
                    *(("--faults", config.faults) if config.faults else ()),
                ],
                logs / "emulator.log",
            )
            started.append(emulator)
            emulator_port = _wait_ready(
                emulator, home / "emulator.ready", logs / "emulator.log", "emulator"
            )
            emulator_url = f"http://127.0.0.1:{emulator_port}"
            clients = Clients(emulator_url)
            stacks: list[DeployedStack] = []
            # The main template is staged as `itsacat deploy` stages it (the functions' code
            # and the layer beside it), then every template is packaged by the AWS CLI.
            build = home / "build"
            staged = stage_template(
                Path(template),
                build / stack_name / "template.json",
                lambda_files.local_layer_zip(),
                local_arch(),
            )
            lambda_files.runtime_packages()  # built now, so that a failure shows here
            parameters = scaled_parameters(staged, parameters or {}, config.time_scale)
            for name, path in [(stack_name, staged), *extra_templates]:
                work = build / name
                work.mkdir(parents=True, exist_ok=True)
                stacks.append(
                    create_stack(
                        clients,
                        name,
                        Path(path),
                        parameters if name == stack_name else None,
                        work_dir=work,
                    )
                )
                if name == stack_name:  # the prediction API's role, from its own template
                    stacks.append(_create_api_role(clients, build, stack_name, stacks[0]))
            restored = _restore(emulator_url)
            (home / "runtime.json").write_text(
                json.dumps(
                    {
                        "emulator_url": emulator_url,
                        "config": config.to_json(),
                        "stacks": [s.to_json() for s in stacks],
                    },
                    indent=1,
                )
            )
            runtime_args = ["--home", str(home), "--port", str(lambda_port or 0)]
            runtime = _spawn("embedded.runtime", runtime_args, logs / "runtime.log")
            started.append(runtime)
            runtime_port = _wait_ready(
                runtime, home / "runtime.ready", logs / "runtime.log", "runtime"
            )
        except (StackError, DeployError, OSError, lambda_files.BuildError, PackageError) as e:
            _kill(started)
            raise StackError(str(e)) from e
        except BaseException:
            _kill(started)
            raise
        result = StackInfo(
            home=str(home),
            stack_name=stack_name,
            emulator_url=emulator_url,
            lambda_url=f"http://127.0.0.1:{runtime_port}",
            emulator_pid=emulator.pid,
            runtime_pid=runtime.pid,
            started_at=time.time(),
            config=config.to_json(),
            outputs=stacks[0].outputs,
            api_role_arn=next(
                (s.outputs["ApiRoleArn"] for s in stacks if "ApiRoleArn" in s.outputs), ""
            ),
            stacks=[
                {"name": s.name, "template": s.template_path, "not_emulated": s.not_emulated}
                for s in stacks
            ],
            restored=restored,
        )
        state = home / _STATE
        state.with_suffix(".tmp").write_text(json.dumps(asdict(result), indent=1))
        state.with_suffix(".tmp").replace(state)
        return result


def _restore(emulator_url: str) -> dict[str, Any] | None:
    """Have the emulator put the saved data into the stacks just created (and start saving);
    what it restored (`persistence.Restored` as JSON), None when nothing was saved yet."""
    request = urllib.request.Request(f"{emulator_url}/_itsacat/restore", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_READY_TIMEOUT_S) as response:
            restored: dict[str, Any] | None = json.load(response)["restored"]
            return restored
    except urllib.error.HTTPError as e:
        try:
            message = json.load(e)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"the emulator could not restore the saved data (HTTP {e.code})"
        raise StackError(_damaged(message)) from e


def _damaged(message: str) -> str:
    return f"{message}; `itsacat down --wipe` deletes the saved data (then `up` starts empty)"


def wipe_data(home: Path | None = None) -> Path | None:
    """Delete the emulator's saved data in `home`; the directory deleted, None if there was
    none. Raises StackError while the emulator runs (it would save again)."""
    home = (home or default_home()).resolve()
    with _locked(home):
        existing = info(home)
        if existing is not None and existing.processes()["emulator"]:
            raise StackError("the emulator is running; stop it first (`itsacat down --wipe`)")
        directory = home / DATA_DIR
        if not directory.exists():
            return None
        shutil.rmtree(directory)
        return directory


def restart_runtime(home: Path | None = None) -> StackInfo:
    """Start the local runtime again beside a live emulator, keeping the emulator's state.

    For a runtime that died (killed, crashed) while the emulator kept running: the new one
    serves the same functions on the same port from the recorded `runtime.json`. In-flight
    invocations and queued retries of the old one are gone, as after a Lambda outage; the
    watchdog's schedule re-drives the runs they were training. Raises StackError when no
    stack is recorded, the emulator is not alive, or the runtime is already running.
    """
    home = (home or default_home()).resolve()
    with _locked(home):
        existing = info(home)
        if existing is None or not (home / "runtime.json").exists():
            raise StackError(f"no embedded stack is recorded in {home}")
        alive = existing.processes()
        if not alive["emulator"]:
            raise StackError(
                "the emulator is not running; `itsacat up` starts the stack again "
                f"from the data saved in {home / DATA_DIR}"
            )
        if alive["runtime"]:
            raise AlreadyRunning(existing)
        # Workers of the dead runtime share its process group: make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(existing.runtime_pid, signal.SIGKILL)
        (home / "runtime.ready").unlink(missing_ok=True)
        port = existing.lambda_url.rsplit(":", 1)[1]
        log = home / "logs" / "runtime.log"
        runtime = _spawn("embedded.runtime", ["--home", str(home), "--port", port], log)
        try:
            _wait_ready(runtime, home / "runtime.ready", log, "runtime")
        except BaseException:
            _kill([runtime])
            raise
        existing.runtime_pid = runtime.pid
        state = home / _STATE
        state.with_suffix(".tmp").write_text(json.dumps(asdict(existing), indent=1))
        state.with_suffix(".tmp").replace(state)
        return existing


def _kill(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _terminate(pid: int, module: str, home: str, timeout_s: float = 10.0) -> None:
    if not _is_ours(pid, module, home):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _is_ours(pid, module, home):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline += timeout_s
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if we are its parent (tests start it in-process)


def _stop_processes(stack: StackInfo) -> None:
    # The runtime first: it stops its workers and flushes the logs into the emulator.
    _terminate(stack.runtime_pid, "embedded.runtime", stack.home)
    # Its workers share its process group (start_new_session made the runtime the leader);
    # any left over, e.g. after the runtime was killed, goes with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(stack.runtime_pid, signal.SIGKILL)
    _terminate(stack.emulator_pid, "embedded.emulator", stack.home)


def stop(home: Path | None = None) -> StackInfo | None:
    """Stop the stack recorded in `home`; returns what was stopped, None if nothing was."""
    home = (home or default_home()).resolve()
    with _locked(home):
        existing = info(home)
        if existing is None:
            return None
        _stop_processes(existing)
        for name in ("emulator.ready", "runtime.ready", "runtime.json", _STATE):
            (home / name).unlink(missing_ok=True)
        return existing
