"""Chaos: `kill -9` the trainer, the runtime or the emulator at a random moment of a run.

Starts an embedded stack (`itsacat up`) in a temporary $ITSACAT_HOME (or `--home`), checks
that an uninterrupted run equals the reference (and measures how long a run takes), then
for each round uploads a small training job (8x8x3 pictures, a 4-3-1 network, one commit
per epoch), waits a random part of that duration and sends SIGKILL to one of:

- `trainer`:  the trainer function's worker process(es), children of the runtime that
  carry `AWS_LAMBDA_FUNCTION_NAME=<trainer>` in their environment;
- `runtime`:  the local Lambda runtime (`python -m embedded.runtime`, its pid recorded in
  `<home>/stack.json`), the process that runs the workers, the relay and the watchdog's
  schedule (its workers are left orphaned, as a `kill -9 PID` leaves them);
- `emulator`: the AWS emulator (`python -m embedded.emulator`, also in `stack.json`).

The kinds are drawn in shuffled blocks of three, so that every kind occurs. Then it does
what docs/reliability.md tells a user to do: nothing for a trainer (Lambda's retry and the watchdog
continue the run); `itsacat up`, with the options of the first `up`, for the runtime (it
restarts the runtime beside the live emulator) and for the emulator (the stack starts again
from the data it saved, and the watchdog re-drives the run once its lease has expired). It
waits for the run to end and compares its per-epoch costs with `itsacat reference --json`
and its final parameters with the same reference trainer's (relative 1e-9). One line per
round; the exit status is 1 if any round did not end SUCCEEDED with the reference's numbers.

    python -m itsacat.bench.chaos [--rounds 10] [--seed 1] [--time-scale 1/30] [--home DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from botocore.config import Config

from embedded.stack import StackInfo
from embedded.stack import info as recorded
from itsacat.bench.processes import alive, descendants, kill9, workers_of
from itsacat.commands.stack import fraction
from itsacat.uploads import run_id_of
from state.costs import CostStore
from state.models import ModelStore
from state.runs import ACTIVE, RunStore
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference

PROJECT_ROOT = Path(__file__).resolve().parents[2]

KINDS = ("trainer", "runtime", "emulator")
RTOL = 1e-9
PARAMS_ATOL = 1e-15  # a parameter that is (nearly) zero is compared absolutely
DATA = datasets.synthesize(m_train=32, m_test=8, side=8, seed=11)
# 30 epochs, a commit each: long enough to be killed in the middle, with committed steps to
# resume from.
PARAMS: dict[str, Any] = {
    "epochs": 30,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
    "neurons": {"layer1": 4, "layer2": 3, "layer3": 1},
    "learning_rate": 0.05,
    "seed": 3,
    "commit_every": 1,
}


def kill_schedule(rounds: int, seed: int) -> list[tuple[str, float]]:
    """(kind, moment as a fraction of an uninterrupted run) per round: the kinds in shuffled
    blocks of three (any three consecutive rounds from the first kill every kind once)."""
    rng = random.Random(seed)
    kinds: list[str] = []
    while len(kinds) < rounds:
        block = list(KINDS)
        rng.shuffle(block)
        kinds += block
    return [(kind, rng.uniform(0.0, 0.9)) for kind in kinds[:rounds]]


# -- processes ----------------------------------------------------------------------------


def wait_dead(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} still alive {timeout_s} s after SIGKILL")
        time.sleep(0.02)


# -- the stack, as a user drives it -----------------------------------------------------


def itsacat(home: Path, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """The `itsacat` command, as a user runs it, against the stack in `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["ITSACAT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "itsacat.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=PROJECT_ROOT,
    )


def field_of(run: Any, name: str, default: Any = None) -> Any:
    """A field of a run record (absent: `default`)."""
    value = getattr(run, name, default)
    return default if value is None else value


def relative_difference(got: Any, want: Any, atol: float = 0.0) -> tuple[float, bool]:
    """(largest |got - want| / |want|, whether every element is within RTOL (+ atol))."""
    a, b = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    if a.shape != b.shape:
        return float("inf"), False
    diff = np.abs(a - b)
    rel = np.where(b != 0, diff / np.where(b != 0, np.abs(b), 1.0), diff)
    worst = float(rel.max()) if rel.size else 0.0
    return worst, bool(np.all(diff <= atol + RTOL * np.abs(b)))


@dataclass
class Outcome:
    """One round: what was killed when, what was done, how the run ended."""

    index: int
    kind: str
    moment_s: float = 0.0  # after the upload
    killed: str = ""
    at_kill: str = ""  # the run's state just before the kill
    recovery: str = "none"
    run_id: str = ""
    status: str = ""
    error: str = ""
    cost_diff: float = float("nan")
    param_diff: float = float("nan")
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    ok: bool = False

    def line(self, rounds: int) -> str:
        counters = " ".join(f"{k} {v}" for k, v in self.counters.items() if v)
        return (
            f"round {self.index:>2}/{rounds}  kill -9 {self.kind:<8} {self.killed} "
            f"at {self.moment_s:5.2f} s ({self.at_kill})  recovery: {self.recovery}  -> "
            f"{self.status or '?'}{' (' + self.error + ')' if self.error else ''} "
            f"in {self.seconds:.1f} s  max rel diff costs {self.cost_diff:.1e} "
            f"params {self.param_diff:.1e}  [{counters or '-'}]  {'OK' if self.ok else 'FAIL'}"
        )


class Chaos:
    """An embedded stack started with `up_args`, and rounds of kill, recover, check."""

    def __init__(
        self,
        home: Path,
        *,
        time_scale: float = 1 / 30,
        workers: int = 3,
        params: dict[str, Any] | None = None,
        round_timeout_s: float = 180.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.home = home
        self.params = dict(params or PARAMS)
        self.round_timeout_s = round_timeout_s
        self.log = log
        self.up_args = [
            *("--home", str(home), "--workers", str(workers)),
            *("--time-scale", repr(time_scale)),
        ]
        self.stack: StackInfo | None = None
        self.duration_s = 0.0
        self.ref_costs: list[float] = []
        self.ref_weights: list[tuple[np.ndarray, np.ndarray]] = []

    # -- the stack --

    def up(self) -> str:
        """`itsacat up` with the first `up`'s options; its output."""
        out = itsacat(self.home, "up", *self.up_args)
        if out.returncode != 0:
            raise RuntimeError(f"itsacat up failed: {out.stderr.strip() or out.stdout.strip()}")
        self.connect()
        return out.stdout

    def down(self) -> None:
        itsacat(self.home, "down", "--home", str(self.home), timeout_s=120)

    def connect(self) -> None:
        stack = recorded(self.home)
        if stack is None or not stack.running:
            raise RuntimeError(f"no running stack in {self.home}")
        self.stack = stack
        env = stack.env()
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        config = Config(retries={"max_attempts": 2}, connect_timeout=5)
        self.s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], config=config)
        self.ddb = session.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"], config=config)
        self.bucket = env["ITSACAT_BUCKET"]
        self.trainer = env["TRAINER_FUNCTION"]
        self.runs = RunStore(env["RUNS_TABLE"], self.ddb)
        self.costs = CostStore(env["COSTS_TABLE"], self.ddb)
        self.models = ModelStore(self.bucket, self.s3)

    @contextlib.contextmanager
    def running(self) -> Iterator[Chaos]:
        """The stack up (refused if one already runs in the home), down on exit."""
        existing = recorded(self.home)
        if existing is not None and existing.running:
            raise RuntimeError(f"a stack already runs in {self.home}; chaos starts its own")
        try:
            self.up()
            yield self
        finally:
            self.down()

    # -- runs --

    def reference(self) -> None:
        """The oracle: `itsacat reference --json` for the costs, the same reference trainer
        in this process for the final parameters (the command prints no parameters)."""
        work = self.home / "chaos"
        work.mkdir(parents=True, exist_ok=True)
        (work / "datasets.h5").write_bytes(datasets.to_bytes(DATA))
        (work / "parameters.json").write_text(json.dumps(self.params))
        out = itsacat(
            self.home,
            *("reference", str(work / "datasets.h5")),
            *("--params", str(work / "parameters.json"), "--json"),
        )
        if out.returncode != 0:
            raise RuntimeError(f"itsacat reference failed: {out.stderr.strip()}")
        self.ref_costs = json.loads(out.stdout)["costs"]
        x, y = DATA.require_train().columns()
        result = reference.train(params_mod.parse(self.params), x, y)
        if list(result.costs) != list(self.ref_costs):
            raise RuntimeError("`itsacat reference` and the reference trainer disagree")
        self.ref_weights = [(np.asarray(w), np.asarray(b)) for w, b in result.weights]

    def upload(self, name: str) -> tuple[str, str]:
        """parameters.json, then datasets.h5, into a fresh folder: the dataset's key, and
        the id the launch function gives its run (from the version S3 gave it)."""
        folder = f"training_input/{name}-{uuid.uuid4().hex[:8]}"
        self.s3.put_object(
            Bucket=self.bucket, Key=f"{folder}/parameters.json", Body=json.dumps(self.params)
        )
        key = f"{folder}/datasets.h5"
        out = self.s3.put_object(Bucket=self.bucket, Key=key, Body=datasets.to_bytes(DATA))
        return key, run_id_of(self.bucket, key, out["VersionId"])

    def appeared(self, run_id: str, timeout_s: float = 60) -> bool:
        """Whether the launch function recorded `run_id` within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exists(run_id):  # (the emulator may be gone for a moment)
                return True
            time.sleep(0.1)
        return False

    def uploaded(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def exists(self, run_id: str) -> bool:
        try:
            self.runs.get(run_id)
        except Exception:
            return False
        return True

    def state_of(self, run_id: str | None) -> str:
        if run_id is None:
            return "no run yet"
        try:
            run = self.runs.get(run_id)
        except Exception as e:
            return f"unreadable: {type(e).__name__}"
        return f"{run.status} at epoch {field_of(run, 'cursor', 0)}/{self.params['epochs']}"

    def wait(self, run_id: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        run = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                run = self.runs.get(run_id)
                if run.status not in ACTIVE:
                    return run
            time.sleep(0.1)
        return run

    def check(self, run_id: str, outcome: Outcome) -> None:
        """Costs and final parameters against the reference's."""
        costs = self.costs.list(run_id)
        outcome.cost_diff, costs_ok = relative_difference(costs, self.ref_costs)
        model = self.models.load(run_id)
        worst, params_ok = 0.0, len(model.weights) == len(self.ref_weights)
        for (w, b), (rw, rb) in zip(model.weights, self.ref_weights, strict=False):
            for got, want in ((w, rw), (b, rb)):
                diff, ok = relative_difference(got, want, PARAMS_ATOL)
                worst, params_ok = max(worst, diff), params_ok and ok
        outcome.param_diff = worst
        outcome.ok = outcome.status == "SUCCEEDED" and costs_ok and params_ok

    def calibrate(self) -> Outcome:
        """An uninterrupted run: it must equal the reference; its duration scales the kills."""
        outcome = Outcome(index=0, kind="nothing")
        began = time.monotonic()
        _, run_id = self.upload("chaos-calibration")
        if not self.appeared(run_id):
            raise RuntimeError("the calibration run did not start")
        run = self.wait(run_id, self.round_timeout_s)
        self.duration_s = outcome.seconds = time.monotonic() - began
        outcome.run_id, outcome.status = run_id, str(run.status)
        outcome.killed, outcome.at_kill = "(nothing)", "uninterrupted"
        self.check(run_id, outcome)
        return outcome

    # -- a round --

    def kill(self, kind: str, run_id: str | None) -> tuple[str, list[int]]:
        """SIGKILL the process(es) of `kind`; what was killed, and their pids."""
        assert self.stack is not None
        if kind == "trainer":
            deadline = time.monotonic() + 30
            pids = workers_of(self.stack, self.trainer)
            while not pids and time.monotonic() < deadline:  # not started yet (or between
                time.sleep(0.02)  # a crash and Lambda's retry): kill it as it comes up
                pids = workers_of(self.stack, self.trainer)
            what = "trainer worker"
        elif kind == "runtime":
            pids, what = [self.stack.runtime_pid], "runtime"
        elif kind == "runtime-group":  # the runtime and its workers at once (`kill -9 -PGID`)
            pids = [self.stack.runtime_pid, *descendants(self.stack.runtime_pid)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.stack.runtime_pid, signal.SIGKILL)
            what = "runtime process group"
        elif kind == "emulator":
            pids, what = [self.stack.emulator_pid], "emulator"
        else:
            raise ValueError(f"unknown kind {kind!r}")
        for pid in pids:
            kill9(pid)
        return f"{what} pid {','.join(map(str, pids)) or 'none alive'}", pids

    def recover(self, kind: str) -> str:
        """What docs/reliability.md says to do after such a kill; what was done."""
        if kind == "trainer":
            return "none (Lambda's retry / the watchdog)"
        began = time.monotonic()
        out = self.up()
        took = f"{time.monotonic() - began:.1f} s"
        if kind.startswith("runtime"):
            if "restarted the local runtime" not in out:
                raise RuntimeError(f"`itsacat up` did not restart just the runtime: {out}")
            return f"itsacat up: restarted the runtime ({took})"
        restored = next((ln for ln in out.splitlines() if ln.startswith("restored ")), "")
        saved = restored.rsplit("(saved ", 1)[-1].rstrip(")") if restored else "nothing"
        return f"itsacat up: stack restarted from the data saved at {saved} ({took})"

    def round(self, index: int, kind: str, moment: float, react_s: float = 0.0) -> Outcome:
        """Upload, wait `moment` x the calibrated duration, kill, recover, wait, check."""
        outcome = Outcome(index=index, kind=kind)
        began = time.monotonic()
        key, run_id = self.upload(f"chaos{index}-{kind}")
        kill_at = began + moment * self.duration_s
        time.sleep(max(0.0, kill_at - time.monotonic()))
        launched = self.exists(run_id)
        outcome.at_kill = self.state_of(run_id if launched else None)
        outcome.moment_s = time.monotonic() - began
        outcome.killed, pids = self.kill(kind, run_id if launched else None)
        wait_dead(pids)
        time.sleep(react_s)
        outcome.recovery = self.recover(kind)
        if kind == "emulator" and launched and not self.exists(run_id):
            # The run was newer than the emulator's last snapshot (the last ~5 s of writes
            # are lost): its upload, if it was saved, launches it again (the same version:
            # the same run id).
            outcome.recovery += "; the run was newer than the saved data"
        found = self.appeared(run_id)
        if not found and kind == "emulator" and not self.uploaded(key):
            # The upload was within the emulator's last ~5 s of unsaved writes: a user
            # uploads it again.
            key, run_id = self.upload(f"chaos{index}-{kind}-again")
            outcome.recovery += "; the upload was lost with the last seconds, uploaded again"
            found = self.appeared(run_id)
        if not found:
            outcome.status, outcome.error = "NO RUN", f"no run {run_id} for {key}"
            outcome.seconds = time.monotonic() - began
            return outcome
        outcome.run_id = run_id
        run = self.wait(run_id, self.round_timeout_s)
        outcome.seconds = time.monotonic() - began
        if run is None:
            outcome.status = "UNREADABLE"
            return outcome
        outcome.status = str(run.status)
        if run.status in ACTIVE:
            outcome.error = f"still {run.status} at epoch {field_of(run, 'cursor')} (stuck)"
            return outcome
        outcome.error = str(field_of(run, "error", ""))
        outcome.counters = {
            name: int(field_of(run, name, 0)) for name in ("retries", "redrives", "handovers")
        }
        if run.status == "SUCCEEDED":
            self.check(run_id, outcome)
        return outcome


def run_chaos(
    home: Path,
    *,
    rounds: int = 10,
    seed: int = 1,
    time_scale: float = 1 / 30,
    kinds: list[tuple[str, float]] | None = None,
    react_max_s: float = 1.0,
    round_timeout_s: float = 180.0,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Start a stack in `home`, calibrate, play the rounds, stop the stack; the outcomes
    (the calibration run first, as round 0)."""
    schedule = kinds if kinds is not None else kill_schedule(rounds, seed)
    rng = random.Random(seed + 1)
    chaos = Chaos(home, time_scale=time_scale, round_timeout_s=round_timeout_s, log=log)
    outcomes: list[Outcome] = []
    began = time.monotonic()
    with chaos.running():
        log(f"stack up in {home} ({time.monotonic() - began:.1f} s, {' '.join(chaos.up_args)})")
        chaos.reference()
        calibration = chaos.calibrate()
        outcomes.append(calibration)
        log(
            f"uninterrupted run {calibration.run_id}: {calibration.status} in "
            f"{calibration.seconds:.1f} s, max rel diff costs {calibration.cost_diff:.1e} "
            f"params {calibration.param_diff:.1e}  {'OK' if calibration.ok else 'FAIL'}"
        )
        for index, (kind, moment) in enumerate(schedule, start=1):
            outcome = chaos.round(index, kind, moment, rng.uniform(0.0, react_max_s))
            outcomes.append(outcome)
            log(outcome.line(len(schedule)))
            if not outcome.ok and outcome.run_id:
                log(f"  run record: {json.dumps(_record(chaos, outcome.run_id), default=str)}")
    return outcomes


def _record(chaos: Chaos, run_id: str) -> dict[str, Any]:
    try:
        run = chaos.runs.get(run_id)
    except Exception as e:
        return {"unreadable": str(e)}
    if dataclasses.is_dataclass(run) and not hasattr(run, "item"):
        return dataclasses.asdict(run)
    return dict(getattr(run, "item", {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Every round must end SUCCEEDED with the reference's costs and parameters "
        f"(relative {RTOL:g}); the exit status is 1 otherwise.",
    )
    parser.add_argument("--rounds", type=int, default=10, help="kills (default: 10)")
    parser.add_argument("--seed", type=int, default=1, help="seeds kinds and moments (default 1)")
    parser.add_argument(
        "--time-scale",
        type=fraction,
        default=1 / 30,
        metavar="F",
        help="`itsacat up --time-scale F`: AWS's clocks (lease, watchdog rate, retry waits) F "
        "times as long (default: 1/30, a minute lasts 2 s)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="the stack's $ITSACAT_HOME (default: a fresh temporary directory, deleted "
        "afterwards unless a round failed); nothing may be running there",
    )
    parser.add_argument(
        "--round-timeout", type=float, default=180.0, metavar="S", help="per run (default 180)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    home = (args.home or Path(tempfile.mkdtemp(prefix="itsacat-chaos-"))).resolve()
    outcomes: list[Outcome] = []
    try:
        outcomes = run_chaos(
            home,
            rounds=args.rounds,
            seed=args.seed,
            time_scale=args.time_scale,
            round_timeout_s=args.round_timeout,
        )
    except Exception as e:
        print(f"chaos: {type(e).__name__}: {e}", file=sys.stderr)
    failed = [o for o in outcomes if not o.ok]
    passed = bool(outcomes) and not failed and len(outcomes) == args.rounds + 1
    print(
        f"{sum(o.ok for o in outcomes[1:])}/{args.rounds} rounds SUCCEEDED with the "
        f"reference's numbers" + ("" if passed else f"; logs and data kept in {home}")
    )
    if passed and args.home is None:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
