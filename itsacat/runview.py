"""Reading runs for people: summaries, listings and a live wait with a progress bar."""

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from itsacat.errors import UserError
from itsacat.progress import Progress
from state.costs import CostStore
from state.errors import NotFound, StateError
from state.runs import ACTIVE, SUCCEEDED, RunRecord, RunStore

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def summarize(run: RunRecord, costs: Sequence[float]) -> dict[str, Any]:
    """A run as the dict of `itsacat runs show --json`."""
    return {
        "run_id": run.run_id,
        "status": run.status,
        "error": run.error,
        "epochs": int(run.epochs_done),
        "costs": list(costs),
        "final_cost": costs[-1] if costs else None,
        "train_accuracy": run.train_accuracy,
        "test_accuracy": run.test_accuracy,
        "model_uri": run.model_uri,
        "seconds": run.seconds,
        "dataset": run.dataset,
        "parameters": run.params,
        "created": run.created,
        "counters": run.counters(),
    }


# What `itsacat train --wait --json` prints: one object with these keys.
TRAIN_JSON_KEYS = (
    "run_id",
    "status",
    "error",
    "epochs",
    "costs",
    "final_cost",
    "train_accuracy",
    "test_accuracy",
    "model_uri",
    "seconds",
)


def describe(s: dict) -> str:
    """A run summary as a few readable lines."""
    lines = [f"run {s['run_id']}: {s['status']}"]
    if s.get("error"):
        lines.append(f"  error: {s['error']}")
    if s.get("final_cost") is not None:
        lines.append(f"  epochs {s['epochs']}, final cost {s['final_cost']:.6f}")
    if s.get("train_accuracy") is not None:
        test = s.get("test_accuracy")
        lines.append(
            f"  train accuracy {s['train_accuracy']:.4f}, test accuracy "
            + ("n/a" if test is None else f"{test:.4f}")
        )
    if s.get("seconds") is not None:
        lines.append(f"  wall time {s['seconds']:.1f} s")
    if s.get("model_uri"):
        lines.append(f"  model {s['model_uri']}")
    c = s.get("counters") or {}
    if c:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return "\n".join(lines)


class Runs:
    """The runs and costs tables of the current target."""

    def __init__(self, env: dict[str, str]) -> None:
        self.runs = RunStore(env["RUNS_TABLE"])
        self.costs = CostStore(env["COSTS_TABLE"])

    def get(self, run_id: str) -> RunRecord:
        try:
            return self.runs.get(run_id)
        except NotFound as e:
            raise UserError(f"no run {run_id!r} (see `itsacat runs`)") from e
        except StateError as e:
            raise UserError(str(e)) from e

    def summary(self, run_id: str) -> dict[str, Any]:
        """The fields of `itsacat train --json` and `itsacat runs show --json`."""
        run = self.get(run_id)
        return summarize(run, self.costs.of_run(run))

    def listing(self) -> list[dict[str, Any]]:
        try:
            runs = self.runs.all()
        except StateError as e:
            raise UserError(str(e)) from e
        return [
            {
                "run_id": r.run_id,
                "status": r.status,
                "error": r.error,
                "dataset": (r.dataset or {}).get("key"),
                "created": r.created,
                "epochs_done": int(r.epochs_done),
                "epochs": int((r.params or {}).get("epochs", 0)),
                "final_cost": r.final_cost if r.final_cost is not None else r.last_cost,
                "test_accuracy": r.test_accuracy,
            }
            for r in runs
        ]

    def wait_for_launch(self, run_id: str, key: str, timeout_s: float, poll_s: float = 0.3) -> None:
        """Wait until the launch function has recorded `run_id`, the run of the upload at
        `key` (the record is read by its id: nothing is scanned)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.runs.get(run_id)
                return
            except NotFound:
                pass
            except StateError as e:
                raise UserError(str(e)) from e
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        raise UserError(
            f"run {run_id} of s3 key {key} was not recorded within {timeout_s:.0f} s: is the "
            "stack's launch function running? (`itsacat status`, `itsacat logs launch`). A "
            "launch that failed is tried again after the training-input queue's visibility "
            "timeout; `itsacat runs` lists the run once it starts"
        )

    def wait(
        self, run_id: str, show: bool = True, poll_s: float = 0.5, settle_s: float = 60
    ) -> RunRecord:
        """Poll until the run ends, with a progress bar (epoch, cost, ETA) on stderr.

        A SUCCEEDED run is waited for until its end is announced too (at most `settle_s`
        more): by then its model is in its stage (staging, or production for the first),
        so what follows the wait finds it there."""
        run = self.get(run_id)
        ended_at: float | None = None
        total = int((run.params or {}).get("epochs", 1)) if run.params else 1
        bar = Progress(total) if show else None
        try:
            while True:
                run = self.get(run_id)
                if run.params and bar is not None:
                    bar.total = int(run.params["epochs"])
                    fields: dict[str, Any] = {"status": run.status}
                    if run.last_cost is not None:
                        fields["cost"] = float(run.last_cost)
                    fields["invocations"] = int(run.invocations)
                    fails = run.retries + run.throttles + run.duplicates
                    fields["absorbed"] = fails
                    bar.update(int(run.epochs_done), **fields)
                if run.status not in ACTIVE:
                    ended_at = time.monotonic() if ended_at is None else ended_at
                    settled = run.status != SUCCEEDED or run.notified
                    if settled or time.monotonic() - ended_at > settle_s:
                        return run
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()

    def follow(self, run_id: str, as_json: bool, keys: Sequence[str] | None = None) -> int:
        """Wait for the run with a progress bar, then print its outcome (readable, or one
        JSON object with `keys`, all when None); the exit code: 0 if it succeeded."""
        final = self.wait(run_id, show=True)
        summary = self.summary(run_id)
        if as_json:
            shown = summary if keys is None else {k: summary[k] for k in keys}
            json.dump(shown, sys.stdout, default=str)
            sys.stdout.write("\n")
        else:
            print(describe(summary))
        return 0 if final.status == "SUCCEEDED" else 1
