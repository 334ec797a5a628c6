"""The code behind notebooks/itsacat.ipynb, so that its cells stay short.

The notebook tells the original project's four steps against the current target (`itsacat.target`):
look at the data and upload it, train and watch, analyse the training (the report's own
figures, `itsacat.report.figures`), and analyse the prediction API. This module holds
what is more than a few lines: choosing the dataset, the live progress display, the API
and picture servers it starts in the background (`itsacat.background`, under names of
their own, so that stopping them leaves a demo's servers alone), and the timing of
`/image`.

IPython is imported only where a display is made; without it (plain Python) the same
calls print.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from embedded import stack as embedded_stack
from itsacat import background, dataset_source, report
from itsacat.demo import PICTURES_HOST, free_port, pictures_in, sample_pictures
from itsacat.deploy.package import ApiLimits
from itsacat.errors import UserError
from itsacat.inputs import load_params
from itsacat.runview import Runs
from state.runs import ACTIVE, SUCCEEDED, RunRecord
from trainer_lambdas import datasets
from trainer_lambdas.nn.params import (
    FIRST_LAYER_REMOTE,
    MAX_NEURONS,
    Parameters,
    with_overrides,
)

# The background processes this notebook starts (`itsacat down` stops them too).
API = "notebook-api"
PICTURES = "notebook-pictures"
SERVERS = (API, PICTURES)
# The notebook's API runs without the deployed stage's throttle (20 requests/s, burst 40,
# `itsacat.deploy.package.API_LIMITS`): step 4 measures the server, not the throttle.
UNTHROTTLED = ApiLimits(concurrency=0, rate=0.0, burst=0)
STAGING = "staging"


# -- 1. the data ---------------------------------------------------------------------------


def default_dataset(home: Path | None = None) -> Path:
    """The checked cache of `itsacat dataset fetch` ($ITSACAT_HOME/datasets/datasets.h5),
    else the demo's generated stand-in (coloured blobs, not cats), with a warning. Nothing
    is downloaded; set DATASET for another file."""
    return dataset_source.cached_or_stand_in(home)


def describe(ds: datasets.Dataset) -> None:
    """Print each split's size, picture shape and class balance."""
    print(f"classes: {ds.classes[0]!r} (label 0), {ds.classes[1]!r} (label 1)")
    for name, split in (("train", ds.train), ("test", ds.test)):
        if split is None:
            print(f"{name:<5}: none")
            continue
        ones = int(split.y.sum())
        print(
            f"{name:<5}: {split.m} pictures of {'x'.join(map(str, split.x.shape[1:]))} "
            f"{split.x.dtype}, {ones} {ds.classes[1]} ({ones / split.m:.0%}), "
            f"{split.m - ones} {ds.classes[0]}"
        )


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=report.DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def picture_grid(ds: datasets.Dataset, count: int = 12, columns: int = 6) -> Figure:
    """The first `count` training pictures with their labels."""
    split = ds.train or ds.test
    assert split is not None  # datasets.load guarantees one
    count = min(count, split.m)
    rows = -(-count // columns)
    fig = _figure(1.6 * columns, 1.8 * rows)
    for i in range(count):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(split.x[i], interpolation="nearest")
        ax.set_title(ds.classes[int(split.y[i])], fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"The first {count} {'training' if ds.train else 'test'} pictures")
    return fig


def parameters(epochs: int | None, plan: str, fanout: int | None = None) -> Parameters:
    """The shipped parameters, with `epochs` (None: theirs) and the plan; `fanout` (neurons
    per invocation) defaults as in `itsacat demo`: 1 with fanout, all of layer 1 with hybrid."""
    return with_overrides(
        load_params(None, epochs=epochs),
        plan=plan,
        fanout=fanout or (MAX_NEURONS if plan == FIRST_LAYER_REMOTE else 1),
    )


# -- 2. training, live ---------------------------------------------------------------------


class _Display:
    """One output area, replaced at each `show` (printed when not in IPython)."""

    def __init__(self) -> None:
        self.handle: Any = None

    def show(self, obj: Any) -> None:
        try:
            from IPython.display import display
        except ImportError:
            print(obj, flush=True)
            return
        if self.handle is None:
            self.handle = display(obj, display_id=True)
        else:
            self.handle.update(obj)


class _Text:
    """A line shown as plain text (a `str` would show with its quotes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)


def progress_line(run: RunRecord, elapsed: float) -> str:
    """One run's progress: status, epochs done, the latest cost, Lambda invocations."""
    total = int((run.params or {}).get("epochs") or 0)
    done = int(run.epochs_done)
    width = 30
    filled = width * min(done, total) // total if total else 0
    cost = "-" if run.last_cost is None else f"{float(run.last_cost):.6f}"
    absorbed = run.retries + run.throttles + run.duplicates
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {run.status:<9} epoch {done}/{total or '?'}"
        f"  cost {cost}  invocations {int(run.invocations):,}  retried/absorbed {absorbed}"
        f"  {elapsed:.0f} s"
    )


def follow(
    env: dict[str, str], run_id: str, poll_s: float = 1.0, settle_s: float = 60
) -> dict[str, Any]:
    """Poll the run record until the run ends, updating one progress line and the cost
    curve so far (the report's plot) in place; the run's summary (`Runs.summary`).
    `UserError` when the run ends FAILED or CANCELLED. A SUCCEEDED run is followed until
    its end is announced too (at most `settle_s` more, as `Runs.wait`): by then its model
    is in its stage (staging; production too for a stack's first), where step 4 looks."""
    runs = Runs(env)
    line, curve = _Display(), _Display()
    start = time.monotonic()
    drawn = -1
    ended: float | None = None
    while True:
        run = runs.get(run_id)
        line.show(_Text(progress_line(run, time.monotonic() - start)))
        if int(run.epochs_done) != drawn:  # costs are recorded when epochs are committed
            drawn = int(run.epochs_done)
            costs = runs.costs.of_run(run)
            if costs:
                curve.show(report.plot_cost(costs))
        if run.status not in ACTIVE:
            ended = time.monotonic() if ended is None else ended
            if run.status != SUCCEEDED or run.notified or time.monotonic() - ended > settle_s:
                break
        time.sleep(poll_s if ended is None else min(poll_s, 0.2))  # the announcement is quick
    if run.status != SUCCEEDED:
        raise UserError(f"run {run_id} ended {run.status}: {run.error}")
    if not run.notified:
        print(
            f"WARNING: run {run_id} SUCCEEDED but its end was not announced within "
            f"{settle_s:.0f} s: its model may not be in a stage yet (`itsacat models`, "
            "`itsacat logs trainer`)"
        )
    return runs.summary(run_id)


# -- 4. the prediction API -----------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """The API and the picture server this notebook started; their base URLs."""

    api: str
    pictures: str
    folder: Path
    names: tuple[str, ...]

    def picture_url(self, name: str) -> str:
        return f"{self.pictures}/{urllib.parse.quote(name)}"

    def image_url(self, name: str, stage: str = "") -> str:
        """`/image?image=<the picture's URL>`, or `/staging/image?...` for stage staging."""
        prefix = "/staging" if stage == STAGING else ""
        return (
            f"{self.api}{prefix}/image?image={urllib.parse.quote(self.picture_url(name), safe='')}"
        )

    def smallest(self) -> str:
        """The sample picture with the fewest bytes (the timings include the API's fetch of
        the picture: a small one keeps them about the API rather than the transfer)."""
        return min(self.names, key=lambda n: (self.folder / n).stat().st_size)


def pictures(dataset: Path, count: int = 4, images: Path | None = None) -> tuple[Path, list[str]]:
    """The pictures to ask the API about: those in `images` if given, else `count`
    pictures of the dataset's test set (as `itsacat demo` makes them), as PNG files under
    $ITSACAT_HOME; their folder and file names."""
    if images is not None:
        return pictures_in(images)
    return sample_pictures(dataset, embedded_stack.default_home() / "notebook-pictures", count)


def start_servers(
    env: dict[str, str], folder: Path, names: Sequence[str], limits: ApiLimits = UNTHROTTLED
) -> Servers:
    """The prediction API (`itsacat serve`'s server, against the target `env`) on a free
    port of 127.0.0.1 and a picture server for `folder` on 127.0.0.2, in the background;
    stopped by `stop_servers` (or when this Python process exits)."""
    from itsacat.commands.serve import CHALICE_DIR, server_command, target_env

    stop_servers()  # those of an earlier run of this cell
    port, pic_port = free_port("127.0.0.1"), free_port(PICTURES_HOST)
    base = dict(os.environ)
    argv, api_env = server_command(port, "127.0.0.1", PICTURES_HOST, base, target_env(env), limits)
    api_env["ITSACAT_FETCH_PORTS"] = str(pic_port)  # the API fetches from 80/443 only
    atexit.unregister(stop_servers)
    atexit.register(stop_servers)  # once, however often the cell runs
    background.start(API, argv, api_env, CHALICE_DIR, port=port)
    picture_argv = [sys.executable, "-m", "http.server", str(pic_port), "--bind", PICTURES_HOST]
    picture_argv += ["--directory", str(folder)]
    background.start(PICTURES, picture_argv, base, folder, port=pic_port)
    servers = Servers(
        f"http://127.0.0.1:{port}", f"http://{PICTURES_HOST}:{pic_port}", folder, tuple(names)
    )
    _wait_up(f"{servers.api}/")
    _wait_up(f"{servers.pictures}/")
    return servers


def _wait_up(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _ = get_json(url, timeout=2)
            if status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            logs = embedded_stack.default_home() / "logs"
            raise UserError(f"{url} did not answer within {timeout_s:.0f} s (see {logs}/)")
        time.sleep(0.2)


def stop_servers() -> list[str]:
    """Stop the servers this notebook started (and no others); their names."""
    return background.stop_all(names=SERVERS)


def get_json(url: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body); an HTTP error is an answer too, a body that is not a
    JSON object is {"body": its text}. A failed connection raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status, raw = int(r.status), r.read()
    except urllib.error.HTTPError as e:
        status, raw = int(e.code), e.read()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"body": raw[:200].decode(errors="replace")}
    return status, body


def _verdict(status: int, body: dict[str, Any]) -> str:
    if status == 200 and "label" in body:
        return f"{body['label']} (p(cat) {float(body['probability']):.3f})"
    return f"HTTP {status} {body.get('code') or body.get('message') or body.get('body', '')}"


def verdicts(servers: Servers, stage: str = "") -> Figure:
    """Ask the API about each sample picture (printing its answer); the pictures with them."""
    from PIL import Image, ImageOps

    columns = min(3, len(servers.names)) or 1
    rows = -(-len(servers.names) // columns) or 1
    fig = _figure(3.2 * columns, 3.4 * rows)
    for i, name in enumerate(servers.names):
        status, body = get_json(servers.image_url(name, stage))
        text = _verdict(status, body)
        print(f"{name:<24} {text}")
        with Image.open(servers.folder / name) as img:
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((256, 256))
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(np.asarray(thumb))
        positive = status == 200 and float(body.get("probability", 0)) > 0.5  # class 1: cat
        ax.set_title(f"{name}\n{text}", fontsize=9, color="tab:green" if positive else "black")
        ax.set_axis_off()
    return fig


@dataclass
class Timing:
    """`n` requests' latencies (seconds), their status codes and the wall time."""

    seconds: np.ndarray
    codes: Counter[int] = field(default_factory=Counter)
    wall: float = 0.0
    threads: int = 1

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) if len(self.seconds) else float("nan")

    @property
    def throughput(self) -> float:
        """Answered requests a second (any status)."""
        return len(self.seconds) / self.wall if self.wall > 0 else float("nan")

    def __str__(self) -> str:
        codes = ", ".join(f"{c or 'no answer'}: {n}" for c, n in sorted(self.codes.items()))
        return (
            f"{len(self.seconds)} requests, {self.threads} at a time, in {self.wall:.2f} s: "
            f"{self.throughput:.1f} requests/s; latency p50 {self.percentile(50) * 1000:.0f} ms,"
            f" p95 {self.percentile(95) * 1000:.0f} ms, max {self.seconds.max() * 1000:.0f} ms"
            f" (status {codes})"
        )


def _timed(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        status, _ = get_json(url)
    except (OSError, http.client.HTTPException):  # no answer
        status = 0
    return time.perf_counter() - start, status


def time_requests(url: str, n: int, threads: int = 1) -> Timing:
    """GET `url` `n` times, `threads` at a time (1: one after the other)."""
    start = time.perf_counter()
    if threads <= 1:
        results = [_timed(url) for _ in range(n)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(_timed, [url] * n))
    wall = time.perf_counter() - start
    return Timing(
        seconds=np.array([s for s, _ in results]),
        codes=Counter(c for _, c in results),
        wall=wall,
        threads=max(threads, 1),
    )


def latency_figure(*timings: tuple[str, Timing]) -> Figure:
    """Histograms of latency (ms) with p50 and p95 marked, one per (label, timing)."""
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot()
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    every = np.concatenate([t.seconds for _, t in timings]) * 1000
    bins: int | list[float] = 10
    if len(every) > 1 and every.max() > every.min():
        bins = [float(b) for b in np.linspace(every.min(), every.max(), 30)]
    for (label, t), color in zip(timings, colors, strict=False):
        p50, p95 = t.percentile(50) * 1000, t.percentile(95) * 1000
        shown = f"{label}: p50 {p50:.0f} ms, p95 {p95:.0f} ms, {t.throughput:.0f}/s"
        ax.hist(t.seconds * 1000, bins=bins, alpha=0.5, color=color, label=shown)
        ax.axvline(p50, color=color, linestyle="-", lw=1.2)
        ax.axvline(p95, color=color, linestyle="--", lw=1.2)
    ax.set_xlabel("latency of GET /image (ms)")
    ax.set_ylabel("requests")
    ax.set_title("Latency distribution (p50 solid, p95 dashed)")
    ax.legend()
    return fig


def compare_stages(servers: Servers) -> dict[str, Any] | None:
    """Production (`/model`, `/image`) against the staging candidate (`/staging/...`): the
    two models' metadata side by side and their verdicts on each sample picture. Prints
    that there is no candidate (and returns None) when `/staging/model` has none."""
    status_p, production = get_json(f"{servers.api}/model")
    status_s, staging = get_json(f"{servers.api}/staging/model")
    if status_s != 200:
        why = staging.get("code") or staging.get("message") or staging.get("body") or ""
        print(f"No staging candidate yet: GET /staging/model answered HTTP {status_s} {why}.")
        return None
    if status_p != 200:
        print(f"No production model: GET /model answered HTTP {status_p} {production.get('code')}.")
        production = {}
    keys = ("run_id", "stage", "trained_at", "epochs", "final_cost", "train_accuracy")
    print(f"{'':<16} {'production':<34} staging")
    for key in (*keys, "test_accuracy"):
        print(f"{key:<16} {_cell(production.get(key)):<34} {_cell(staging.get(key))}")
    if production.get("run_id") == staging.get("run_id"):
        print("\nThe candidate is the production model itself (a stack's first model is both).")
    print(f"\n{'picture':<24} {'production':<30} {'staging':<30} agree")
    agree = 0
    for name in servers.names:
        (sp, bp), (ss, bs) = (
            get_json(servers.image_url(name)),
            get_json(servers.image_url(name, STAGING)),
        )
        same = sp == ss == 200 and bp.get("label") == bs.get("label")
        agree += same
        print(f"{name:<24} {_verdict(sp, bp):<30} {_verdict(ss, bs):<30} {'yes' if same else 'NO'}")
    print(f"\nThe two agree on {agree} of {len(servers.names)} pictures.")
    return staging


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def itsacat(*args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run an `itsacat` command (this interpreter's, against this process's target); what
    it printed is shown unless `quiet`."""
    done = subprocess.run(
        [sys.executable, "-m", "itsacat.cli", *args], capture_output=True, text=True, check=False
    )
    if not quiet:
        print((done.stdout + done.stderr).rstrip())
    return done


def models() -> list[dict[str, Any]]:
    """The stored models (`itsacat models --json`), printed one a line with their stages."""
    done = itsacat("models", "--json", quiet=True)
    try:
        listed = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        listed = None
    if isinstance(listed, dict):  # {"models": [...]} as well as [...]
        listed = listed.get("models")
    if not isinstance(listed, list):
        said = (done.stderr.strip() or done.stdout.strip())[-300:]
        print(f"`itsacat models --json` gave no listing (exit code {done.returncode}): {said}")
        return []
    print(f"{'model (run)':<34} {'stages':<22} {'trained':<30} test accuracy")
    for d in listed:
        stages = d.get("stages", d.get("stage")) or []
        stages = ", ".join(stages) if isinstance(stages, list) else str(stages)
        print(
            f"{_cell(d.get('run_id')):<34} {stages or '-':<22} {_cell(d.get('trained_at')):<30} "
            f"{_cell(d.get('test_accuracy'))}"
        )
    return listed
