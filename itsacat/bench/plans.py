"""`itsacat bench`: every named plan (how a step's layers are distributed over neuron
invocations) against the reference trainer, in one run, counted.

One benchmark starts its own embedded stack (in a temporary `ITSACAT_HOME`, schedules off,
so nothing but the runs under test makes requests), trains the same network with the
in-process reference trainer and with each plan, and stops the stack at the end.

For each plan it measures, from the run itself:
- seconds per epoch: from the cost rows' `written` times (the trainer writes them with each
  commit): the median over commits of the gap to the previous commit divided by the epochs
  it committed, so commits are included; the reference's is the median of its epochs;
- per epoch, over a window of whole epochs in the middle of the run (the launch, the first
  epoch's cold start and the finish are outside it): neuron invocations and payload bytes
  (the runtime's counters at `/itsacat/stats`), and the AWS requests the functions made,
  by service and operation, with the bytes they moved (the emulator's counters at
  `/_itsacat/requests`).
The AWS projection (`itsacat.bench.projection`) turns those counts into time and dollars.

`python -m itsacat.bench.plans DATASET PARAMS_JSON` is the reference's timing in a process
of its own (`reference_subprocess`), with the BLAS threads it was started with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itsacat.bench import projection
from state.costs import CostStore
from trainer_lambdas.nn.params import (
    EVERY_LAYER_REMOTE,
    FIRST_LAYER_REMOTE,
    MAX_NEURONS,
    Parameters,
    with_overrides,
)

NETWORK_EPOCHS = 2500  # the default parameters' epochs: the projected run
POLL_S = 0.25  # how often the bench reads the run record while a plan trains


@dataclass(frozen=True)
class PlanSpec:
    """A named plan: the parameters it sets on top of the run's."""

    name: str
    neurons_per_invocation: int
    distribution: str = EVERY_LAYER_REMOTE  # or FIRST_LAYER_REMOTE: layer 1 only
    commit_every: int = 50  # the default

    def apply(self, params: Parameters, commit_every: int | None = None) -> Parameters:
        """`params` with this plan (and `commit_every` instead of the plan's, if given)."""
        return with_overrides(
            params,
            fanout=self.neurons_per_invocation,
            plan=self.distribution,
            commit_every=commit_every if commit_every is not None else self.commit_every,
        )


PLANS: dict[str, PlanSpec] = {
    p.name: p
    for p in (
        PlanSpec("neuron", neurons_per_invocation=1),  # the default
        PlanSpec("block4", neurons_per_invocation=4),
        PlanSpec("layer", neurons_per_invocation=MAX_NEURONS),  # one invocation per layer
        PlanSpec("hybrid", neurons_per_invocation=MAX_NEURONS, distribution=FIRST_LAYER_REMOTE),
    )
}


# ---------------------------------------------------------------------- counters


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: dict[str, Any] = json.load(r)
        return data


@dataclass(frozen=True)
class Snapshot:
    """The stack's counters at one moment (the emulator's and the runtime's)."""

    epochs_done: float  # epochs trained when it was taken (interpolated between commits)
    invocations: float  # neuron handler executions
    duration_ms: float  # their summed handler time
    payload_bytes: float  # request + response payloads of every function
    requests: dict[str, float]
    storage_bytes: float

    def minus(self, other: Snapshot) -> dict[str, Any]:
        epochs = self.epochs_done - other.epochs_done
        keys = set(self.requests) | set(other.requests)
        requests = {k: self.requests.get(k, 0) - other.requests.get(k, 0) for k in sorted(keys)}
        return {
            "epochs": epochs,
            "invocations": self.invocations - other.invocations,
            "duration_ms": self.duration_ms - other.duration_ms,
            "payload_bytes": self.payload_bytes - other.payload_bytes,
            "requests": {k: v for k, v in requests.items() if v},
            "storage_bytes": self.storage_bytes - other.storage_bytes,
        }


def snapshot(lambda_url: str, emulator_url: str, neuron: str, epochs_done: float) -> Snapshot:
    stats = _get_json(f"{lambda_url}/itsacat/stats")["functions"]
    counts = _get_json(f"{emulator_url}/_itsacat/requests")
    n = stats.get(neuron, {})
    payload = sum(
        f.get("payload_bytes_in", 0) + f.get("payload_bytes_out", 0) for f in stats.values()
    )
    requests = dict(counts["requests"])
    requests["lambda:Invoke"] = sum(f.get("requests", 0) for f in stats.values())
    return Snapshot(
        epochs_done=epochs_done,
        invocations=n.get("executions", 0),
        duration_ms=n.get("duration_ms", 0.0),
        payload_bytes=payload,
        requests=requests,
        storage_bytes=sum(counts["bytes"].values()),
    )


def per_epoch(first: Snapshot, last: Snapshot) -> dict[str, Any]:
    """Counts per epoch between two snapshots (at least one epoch apart)."""
    d = last.minus(first)
    e = max(1.0, d["epochs"])
    return {
        "epochs_counted": round(d["epochs"], 1),
        "invocations_per_epoch": d["invocations"] / e,
        "requests_per_epoch": {k: round(v / e, 3) for k, v in d["requests"].items()},
        "payload_bytes_per_epoch": round(d["payload_bytes"] / e),
        "storage_bytes_per_epoch": round(d["storage_bytes"] / e),
        "execution_ms": d["duration_ms"] / d["invocations"] if d["invocations"] else 0.0,
    }


def median_epoch_s(written: list[float]) -> float:
    """Median seconds per epoch between commits, from the cost rows' `written` times.

    The trainer writes the rows of the epochs since its last commit with that commit, so
    rows share a time: each commit after the first gives (its time - the previous one's)
    / (its number of rows), and the median over the commits is the epoch time, commits
    included. (With one row per commit that is the median gap between rows.)
    """
    stamps = sorted(set(written))
    counts = {t: written.count(t) for t in stamps}
    rates = [(b - a) / counts[b] for a, b in itertools.pairwise(stamps)]
    return statistics.median(rates) if rates else float("nan")


# ---------------------------------------------------------------------- runs


def reference_run(params: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, list[float]]:
    """The reference's median seconds per epoch, and its costs (the oracle)."""
    from trainer_lambdas.nn import reference

    stamps = [time.perf_counter()]
    r = reference.train(params, x, y, on_epoch=lambda e, c: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in itertools.pairwise(stamps)), r.costs


def reference_subprocess(
    params: dict[str, Any], dataset: Path, threads: int
) -> tuple[float, list[float]]:
    """`reference_run` in a fresh process with `threads` BLAS threads (set before numpy loads)."""
    env = {**os.environ}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    out = subprocess.run(
        [sys.executable, "-m", "itsacat.bench.plans", str(dataset), json.dumps(params)],
        env=env,
        capture_output=True,
        check=True,
        timeout=3600,
    )
    r = json.loads(out.stdout)
    return float(r["epoch_s"]), list(r["costs"])


def max_relative_difference(got: list[float], want: list[float]) -> float:
    if len(got) != len(want):
        return float("inf")
    return max((abs(g - w) / abs(w) for g, w in zip(got, want, strict=True)), default=0.0)


def run_plan(
    env: dict[str, str],
    urls: tuple[str, str],
    dataset: Path,
    params: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train one run on the stack; its epoch time and its counts per epoch."""
    from itsacat.runview import Runs
    from itsacat.uploads import upload_dataset
    from state.runs import ACTIVE

    lambda_url, emulator_url = urls
    neuron = env["NEURON_FUNCTION"]
    runs = Runs(env)
    run_id, _ = upload_dataset(env, dataset, params)
    # The counters are read after each commit seen, together with the run record's own
    # count of neuron invocations at that commit. The record is exact at commits, so how
    # many epochs were done when the counters were read is the commit's epochs plus the
    # invocations made since, at the window's exact invocations per epoch: the record can
    # be polled slowly (each poll is a request the emulator serves on the run's two cores).
    seen: list[tuple[int, int, Snapshot]] = []  # (epochs done, invocations then, counters)
    last_epochs = -1
    began = time.monotonic()
    while True:
        run = runs.get(run_id)
        done = int(run.epochs_done)
        if run.status not in ACTIVE:
            break
        if done != last_epochs and 1 <= done < params.epochs:
            committed = int(run.invocations)
            seen.append((done, committed, snapshot(lambda_url, emulator_url, neuron, done)))
            last_epochs = done
        time.sleep(POLL_S)
    if run.status != "SUCCEEDED":
        raise RuntimeError(f"run {run_id} ended {run.status}: {run.error}")
    final = snapshot(lambda_url, emulator_url, neuron, params.epochs)
    written = CostStore(env["COSTS_TABLE"]).written_times(run_id)
    dated = [s for _, _, s in seen]
    if len(seen) >= 2 and seen[-1][0] > seen[0][0]:
        (e0, i0, _), (e1, i1, _) = seen[0], seen[-1]
        rate = (i1 - i0) / (e1 - e0)  # exact: both at commits
        if rate > 0:
            dated = [
                dataclasses.replace(s, epochs_done=e + (s.invocations - i) / rate)
                for e, i, s in seen
            ]
    if len(dated) >= 2:
        counts = per_epoch(dated[0], dated[-1])
    else:  # too few commits seen to bracket whole epochs: the whole run, launch included
        log(f"  (counts over the whole run: only {len(dated)} commit(s) observed)")
        counts = per_epoch(dated[0] if dated else _zero(), final)
    return {
        "run_id": run_id,
        "costs": runs.costs.of_run(run),
        "first_layer": run.first_layer,
        "epoch_s": median_epoch_s(written),
        "wall_s": time.monotonic() - began,
        "counters": {
            "invocations": run.invocations,
            "retries": run.retries,
            "throttles": run.throttles,
        },
        **counts,
    }


def _zero() -> Snapshot:
    return Snapshot(0, 0, 0.0, 0, {}, 0)


@contextlib.contextmanager
def embedded_stack(workers: int = 4) -> Iterator[Any]:
    """A fresh embedded stack in a temporary home, stopped (and removed) at the end."""
    from embedded import stack
    from embedded.invocations import RuntimeConfig
    from itsacat import target

    with tempfile.TemporaryDirectory(prefix="itsacat-bench-") as home:
        info = stack.start(Path(home), config=RuntimeConfig(workers=workers, schedules=False))
        try:
            target.use(info.env())
            yield info
        finally:
            stack.stop(Path(home))


# ---------------------------------------------------------------------- the benchmark


def _network_blocks(
    n_x: int, p: Any, m: int, in_dual: bool
) -> tuple[list[int], list[int], int, int]:
    """Blocks per layer invoked forward and backward in every step, and the invocations
    per step and per commit (`distributed_step.settle`), for a run whose first layer is
    (`in_dual`) or is not in the dual form."""
    from trainer_lambdas import invocation_plan

    blocks = invocation_plan.for_run(n_x, p.neurons, p.neurons_per_invocation, m, p.distribution)
    return (
        [len(layer) for layer in blocks],
        [len(layer) for layer in invocation_plan.backward_blocks(blocks, in_dual)],
        invocation_plan.invocations_per_step(blocks, in_dual),
        invocation_plan.invocations_per_commit(blocks),
    )


def bench(
    dataset: Path,
    epochs: int,
    plans: list[str],
    params_file: str | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    neurons1: int | None = None,
    commit_every: int | None = None,
) -> dict[str, Any]:
    """The object `itsacat bench --json` prints (`commit_every`: instead of the default)."""
    from itsacat.inputs import load_dataset, load_params

    base = load_params(params_file, epochs=epochs)
    if neurons1 is not None:  # the network itself, not an override of how it is trained
        neurons = base.to_json()["neurons"]
        base = with_overrides(base, neurons={**neurons, "layer1": neurons1})
    ds = load_dataset(str(dataset))
    x, y = ds.require_train().columns()
    log(f"reference: {epochs} epochs in-process, and in a process with one BLAS thread ...")
    ref_default, ref_costs = reference_run(base, x, y)
    ref_single, _ = reference_subprocess(base.to_json(), dataset, 1)
    # The faster of the two is the reference: ratios are never flattered by a slow one.
    ref = min(ref_default, ref_single)
    log(
        f"  {1000 * ref_default:.1f} ms/epoch (default BLAS threads), {1000 * ref_single:.1f} (one)"
    )
    out: dict[str, Any] = {
        "reference_epoch_s": ref,
        "reference_epoch_s_by_blas_threads": {"default": ref_default, "1": ref_single},
        "network": {"n_x": int(x.shape[0]), "m": int(x.shape[1]), "epochs": epochs},
        "plans": {},
    }
    projections: dict[str, Any] = {}
    with embedded_stack() as info:
        env = info.env()
        for name in plans:
            p = PLANS[name].apply(base, commit_every)
            log(f"plan {name}: {epochs} epochs on the embedded stack ...")
            r = run_plan(env, (info.lambda_url, info.emulator_url), dataset, p, log)
            in_dual = r["first_layer"] == "dual"  # as the launcher decided for the run
            blocks, backward, per_step, settled = _network_blocks(
                int(x.shape[0]), p, int(x.shape[1]), in_dual
            )
            # A full batch: a step is an epoch; a commit every `commit_every` of them.
            planned = per_step + settled / p.commit_every
            r["ratio"] = r["epoch_s"] / ref
            r["max_rel_cost_diff"] = max_relative_difference(r.pop("costs"), ref_costs)
            r["blocks_per_layer"] = blocks
            r["backward_blocks_per_layer"] = backward
            r["settle_blocks_per_commit"] = settled
            r["invocations_per_epoch_planned"] = planned
            r["commit_every"] = p.commit_every
            out["plans"][name] = r
            log(f"  {1000 * r['epoch_s']:.1f} ms/epoch ({r['ratio']:.1f}x the reference)")
            counts = projection.PlanCounts(
                invocations=r["invocations_per_epoch"],
                waves=projection.waves(blocks, backward_per_layer=backward)
                + projection.waves([settled], backward_per_layer=[]) / p.commit_every,
                payload_bytes=r["payload_bytes_per_epoch"],
                execution_s=r["execution_ms"] / 1000,
                requests={k: v for k, v in r["requests_per_epoch"].items() if k != "lambda:Invoke"},
                storage_bytes=r["storage_bytes_per_epoch"],
                # the trainer's own layers: at most the whole network
                local_s=ref if p.distribution == FIRST_LAYER_REMOTE else 0.0,
                weight_wru_per_commit=projection.weight_wru(
                    int(x.shape[1] if in_dual else x.shape[0]), p.neurons
                ),
                commits_per_epoch=1 / p.commit_every,
            )
            projections[name] = projection.as_dict(projection.project(counts, NETWORK_EPOCHS))
    out["aws_projection"] = {
        "epochs": NETWORK_EPOCHS,
        "plans": projections,
        "assumptions": projection.assumptions(),
    }
    return out


def repeated_dataset(source: Path, times: int, into: Path) -> Path:
    """The training set repeated `times` (the scaling benchmark's larger examples count)."""
    from trainer_lambdas import datasets

    ds = datasets.load(source)
    train = ds.require_train()
    big = datasets.Split(x=np.concatenate([train.x] * times), y=np.concatenate([train.y] * times))
    path = into / f"{source.stem}-x{times}.h5"
    datasets.save(datasets.Dataset(train=big, test=ds.test, classes=ds.classes), path)
    return path


def scaling(
    dataset: Path,
    epochs: int,
    plans: list[str],
    widths: tuple[int, ...] = (20, 80, 320),
    repeats: tuple[int, ...] = (1, 10),
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> list[dict[str, Any]]:
    """Seconds per epoch against the first layer's width and the number of examples."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="itsacat-scaling-") as tmp:
        configs = [(w, 1) for w in widths] + [(widths[0], r) for r in repeats if r != 1]
        for width, rep in configs:
            path = dataset if rep == 1 else repeated_dataset(dataset, rep, Path(tmp))
            log(f"scaling: width {width}, data x{rep}")
            # short runs: commit four times per run, so that epochs are timed between commits
            result = bench(
                path, epochs, plans, log=log, neurons1=width, commit_every=max(1, epochs // 4)
            )
            row: dict[str, Any] = {
                "width": width,
                "examples": result["network"]["m"],
                "reference": result["reference_epoch_s"],
            }
            row.update({name: r["epoch_s"] for name, r in result["plans"].items()})
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- reporting


def table(result: dict[str, Any]) -> str:
    """The benchmark as a markdown table, then the projection's."""
    ref = result["reference_epoch_s"]
    lines = [
        "| plan | s/epoch | × reference | invocations/epoch | AWS requests/epoch "
        "| payload MB/epoch | storage MB/epoch | max rel. cost diff |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
        f"| reference (in-process numpy) | {ref:.4f} | 1.0 | 0 | 0 | 0 | 0 | 0 |",
    ]
    for name, r in result["plans"].items():
        reqs = ", ".join(f"{k} {v:.1f}" for k, v in r["requests_per_epoch"].items())
        d = r.get("max_rel_cost_diff")
        diff = "n/a" if d is None else f"{d:.1e}"
        lines.append(
            f"| {name} | {r['epoch_s']:.4f} | {r['ratio']:.1f} | {r['invocations_per_epoch']:.1f} "
            f"| {reqs} | {r['payload_bytes_per_epoch'] / 1e6:.2f} "
            f"| {r['storage_bytes_per_epoch'] / 1e6:.2f} | {diff} |"
        )
    proj = result["aws_projection"]
    lines += [
        "",
        f"AWS projection of a {proj['epochs']}-epoch run:",
        "",
        "| plan | s/epoch | run minutes | USD |",
        "|---|---:|---:|---:|",
    ]
    for name, p in proj["plans"].items():
        lines.append(f"| {name} | {p['epoch_s']:.3f} | {p['run_minutes']:.1f} | {p['usd']:.2f} |")
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k not in ("width", "examples")]
    lines = [
        "| layer-1 width | examples | " + " | ".join(f"{n} s/epoch" for n in names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        cells = " | ".join(f"{r[n]:.4f}" for n in names)
        lines.append(f"| {r['width']} | {r['examples']} | {cells} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Seconds per epoch against width (at 209 examples) and against examples (width 20)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in rows[0] if k not in ("width", "examples")]
    m0 = min(r["examples"] for r in rows)
    w0 = min(r["width"] for r in rows)
    by_width = sorted((r for r in rows if r["examples"] == m0), key=lambda r: r["width"])
    by_m = sorted((r for r in rows if r["width"] == w0), key=lambda r: r["examples"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, series, key, label in (
        (axes[0], by_width, "width", f"first hidden layer width ({m0} examples)"),
        (axes[1], by_m, "examples", f"training examples (width {w0})"),
    ):
        for n in names:
            ax.plot([r[key] for r in series], [r[n] for r in series], marker="o", label=n)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r[key] for r in series], [str(r[key]) for r in series])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per epoch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("itsacat: seconds per epoch, reference and fan-out plans")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _reference_main(argv: list[str]) -> int:
    """`python -m itsacat.bench.plans DATASET PARAMS_JSON`: the reference's timing as JSON."""
    from trainer_lambdas import datasets
    from trainer_lambdas.nn import params as params_mod

    x, y = datasets.load(argv[0]).require_train().columns()
    epoch_s, costs = reference_run(params_mod.parse(json.loads(argv[1])), x, y)
    json.dump({"epoch_s": epoch_s, "costs": costs}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_reference_main(sys.argv[1:]))
