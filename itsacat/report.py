"""Run reports: PNG plots and a `report.md` that tells the story of one finished run.

Two halves, kept apart so that the drawing is testable without AWS:

- `gather(run_id, sources)` reads what a report needs from the stores (the run record,
  its costs, its model, its test pictures) into plain data, and turns every storage
  problem into a one-line `UserError`;
- `write_report(...)` draws the plots and writes the markdown from that plain data;
  `figures(inputs)` draws the same plots and writes nothing (notebooks/itsacat.ipynb).

`make_report` is both; the `itsacat report` command only wires it to the current target.
Figures are drawn on matplotlib's Agg canvas through `Figure` objects, never `pyplot`: no
display, no global backend switch, nothing shared between calls. Each figure has a fixed
size in inches and a fixed DPI (`FIGURES`, `DPI`), so every PNG has a known pixel size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from itsacat.errors import UserError

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ModuleNotFoundError as e:  # the `reports` extra is not installed
    raise UserError("reports need matplotlib, not installed: pip install 'itsacat[reports]'") from e

from itsacat.runview import summarize
from state.costs import CostStore
from state.errors import NotFound, StateError
from state.models import DEFAULT_CLASSES, LoadedModel, ModelNotFound, ModelStore, ModelStoreError
from state.objects import ObjectStore
from state.runs import ACTIVE, SUCCEEDED, RunRecord, RunStore
from trainer_lambdas.nn.network import predict_proba
from trainer_lambdas.nn.preprocess import flatten_images

DPI = 100
# File name -> (width, height) in inches; at DPI this is the PNG's size in pixels.
FIGURES: dict[str, tuple[float, float]] = {
    "cost.png": (8.0, 4.5),
    "accuracy.png": (6.0, 4.5),
    "confusion.png": (5.5, 4.5),
    "misclassified.png": (9.0, 6.0),
}
REPORT_NAME = "report.md"
# The grid of misclassified pictures shows at most this many (the most confident first).
MAX_MISCLASSIFIED = 24
_GRID_COLUMNS = 6


# -- fetching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """The stores a report reads from (each wraps an injected or lazily built client)."""

    runs: RunStore
    costs: CostStore
    models: ModelStore
    objects: ObjectStore

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Sources:
        """The stores of a target environment (see `itsacat.target.connect`)."""
        bucket = env["ITSACAT_BUCKET"]
        return cls(
            runs=RunStore(env["RUNS_TABLE"]),
            costs=CostStore(env["COSTS_TABLE"]),
            models=ModelStore(bucket),
            objects=ObjectStore(bucket),
        )


@dataclass(frozen=True)
class ReportInputs:
    """Everything `write_report` draws, as plain data."""

    summary: dict[str, Any]
    costs: list[float]
    model: LoadedModel
    test_x: np.ndarray | None  # (m, h, w, 3) uint8, or None when the run had no test set
    test_y: np.ndarray | None  # (m,) labels 0/1
    classes: tuple[str, str]


def gather(run_id: str, sources: Sources) -> ReportInputs:
    """Read a finished run's record, costs, model and test set; `UserError` if it cannot."""
    try:
        run = sources.runs.get(run_id)
    except NotFound as e:
        raise UserError(f"no run {run_id!r} (see `itsacat runs`)") from e
    except StateError as e:
        raise UserError(f"cannot read run {run_id}: {e}") from e
    if run.status != SUCCEEDED:
        raise UserError(_not_finished(run))
    try:
        costs = sources.costs.of_run(run)
    except StateError as e:
        raise UserError(f"cannot read the costs of run {run_id}: {e}") from e
    try:
        model = sources.models.load(run_id)
    except ModelNotFound as e:
        raise UserError(
            f"run {run_id} succeeded but its model is missing from {sources.models.uri(run_id)} "
            f"({e})"
        ) from e
    except ModelStoreError as e:
        raise UserError(f"cannot load the model of run {run_id}: {e}") from e
    test_x = test_y = None
    if run.test_key:
        try:
            arrays = sources.objects.get_arrays(run.test_key)
        except StateError as e:
            raise UserError(f"cannot read the test set of run {run_id}: {e}") from e
        test_x, test_y = arrays["x"], arrays["y"].reshape(-1)
        if tuple(test_x.shape[1:]) != model.input_shape:
            raise UserError(
                f"run {run_id}: test pictures are {test_x.shape[1:]} but the model takes "
                f"{model.input_shape}"
            )
    classes = tuple(run.classes or model.classes or DEFAULT_CLASSES)
    return ReportInputs(
        summary=summarize(run, costs),
        costs=costs,
        model=model,
        test_x=test_x,
        test_y=test_y,
        classes=(str(classes[0]), str(classes[1])),
    )


def _not_finished(run: RunRecord) -> str:
    if run.status in ACTIVE:
        total = (run.params or {}).get("epochs", "?")
        return (
            f"run {run.run_id} is still {run.status} (epoch {run.epochs_done}"
            f"/{total}): a report needs a finished run; follow it with "
            f"`itsacat runs show {run.run_id}` and report when it has SUCCEEDED"
        )
    error = " ".join(str(run.error or "").split())  # one line, however long the reason
    why = f" ({error})" if error else ""
    return f"run {run.run_id} is {run.status}{why}: it has no trained model to report on"


def make_report(run_id: str, sources: Sources, out_dir: Path) -> Path:
    """Gather a run's data and write its report into `out_dir`; the path of report.md."""
    r = gather(run_id, sources)
    return write_report(r.summary, r.costs, r.model, r.test_x, r.test_y, r.classes, out_dir)


# -- drawing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Predictions:
    y: np.ndarray  # (m,) true labels 0/1
    proba: np.ndarray  # (m,) probability of class 1
    pred: np.ndarray  # (m,) predicted labels 0/1

    @property
    def accuracy(self) -> float:
        return float((self.pred == self.y).mean())

    def confusion(self) -> np.ndarray:
        """Counts, rows = true class, columns = predicted class."""
        cm = np.zeros((2, 2), dtype=np.int64)
        np.add.at(cm, (self.y, self.pred), 1)
        return cm


def _predict(model: LoadedModel, x: np.ndarray, y: np.ndarray) -> _Predictions:
    proba = predict_proba(model.weights, model.activations, flatten_images(x))[0]
    # The same rule as `network.accuracy`: class 1 when the output is above 0.5.
    return _Predictions(
        y=(np.asarray(y).reshape(-1) > 0.5).astype(np.int64),
        proba=proba,
        pred=(proba > 0.5).astype(np.int64),
    )


def _figure(name: str) -> Figure:
    fig = Figure(figsize=FIGURES[name], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path | None, name: str) -> None:
    """Write the figure as `out_dir/name`; with no `out_dir`, nowhere (a notebook shows it)."""
    if out_dir is None:
        return
    # No bbox_inches="tight": it would change the pixel size.
    fig.savefig(out_dir / name, dpi=DPI, format="png", facecolor="white")


def plot_cost(costs: Sequence[float], out_dir: Path | None = None) -> Figure:
    fig = _figure("cost.png")
    ax = fig.add_subplot()
    if costs:
        epochs = np.arange(1, len(costs) + 1)
        values = np.asarray(costs, dtype=np.float64)
        ax.plot(epochs, values, color="tab:blue", marker="o" if len(costs) <= 60 else None, ms=3)
        positive = values[np.isfinite(values) & (values > 0)]
        if len(positive) == len(values) and values.max() / values.min() > 10:
            ax.set_yscale("log")
        ax.text(
            0.98,
            0.95,
            f"final cost {values[-1]:.6f} (epoch {len(values)})",
            ha="right",
            va="top",
            fontsize=10,
            transform=ax.transAxes,
            bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round"},
        )
        ax.set_xlim(0.5, len(costs) + 0.5)
    else:
        ax.text(0.5, 0.5, "no costs recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Cost per epoch (cross-entropy)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost")
    ax.grid(True, alpha=0.3, which="both")
    _save(fig, out_dir, "cost.png")
    return fig


def plot_accuracy(
    train: float | None, test: float | None, epochs: int, out_dir: Path | None = None
) -> Figure:
    fig = _figure("accuracy.png")
    ax = fig.add_subplot()
    names = ["train", "test"]
    values = [train, test]
    colors = ["tab:blue", "tab:orange"]
    bars = ax.bar(names, [0.0 if v is None else v for v in values], color=colors, width=0.6)
    for bar, v in zip(bars, values, strict=True):
        label = "n/a (no test set)" if v is None else f"{v:.3f}"
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            (v or 0.0) + 0.02,
            label,
            ha="center",
            va="bottom",
            fontsize=10,
        )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Final accuracy after {epochs} epochs")
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, out_dir, "accuracy.png")
    return fig


def plot_confusion(
    p: _Predictions, classes: tuple[str, str], out_dir: Path | None = None
) -> Figure:
    fig = _figure("confusion.png")
    ax = fig.add_subplot()
    cm = p.confusion()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, shrink=0.8)
    row_totals = cm.sum(axis=1)
    for t in range(2):
        for q in range(2):
            share = cm[t, q] / row_totals[t] if row_totals[t] else 0.0
            dark = cm[t, q] > cm.max() / 2
            ax.text(
                q,
                t,
                f"{cm[t, q]}\n({share:.0%})",
                ha="center",
                va="center",
                fontsize=12,
                color="white" if dark else "black",
            )
    ax.set_xticks([0, 1], labels=list(classes))
    ax.set_yticks([0, 1], labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix, test set ({len(p.y)} pictures)")
    _save(fig, out_dir, "confusion.png")
    return fig


def _wrong(p: _Predictions) -> np.ndarray:
    """Indices of the misclassified pictures, the most confidently wrong first."""
    wrong = np.flatnonzero(p.pred != p.y)
    confidence = np.where(p.pred[wrong] == 1, p.proba[wrong], 1 - p.proba[wrong])
    return wrong[np.argsort(-confidence, kind="stable")]


def plot_misclassified(
    x: np.ndarray, p: _Predictions, classes: tuple[str, str], out_dir: Path | None = None
) -> Figure:
    """The grid of misclassified test pictures, the most confidently wrong first."""
    fig = _figure("misclassified.png")
    wrong = _wrong(p)
    if len(wrong) == 0:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            f"No misclassified test pictures:\nall {len(p.y)} are predicted correctly.",
            ha="center",
            va="center",
            fontsize=16,
            transform=ax.transAxes,
        )
        _save(fig, out_dir, "misclassified.png")
        return fig
    shown = wrong[:MAX_MISCLASSIFIED]
    cols = min(_GRID_COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    for n, i in enumerate(shown):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.imshow(x[i], interpolation="nearest")
        prob = p.proba[i] if p.pred[i] == 1 else 1 - p.proba[i]
        ax.set_title(
            f"true {classes[p.y[i]]}\npred {classes[p.pred[i]]} ({prob:.2f})",
            fontsize=8 if cols > 3 else 11,
            color="firebrick",
        )
        ax.set_axis_off()
    more = f", showing the {len(shown)} most confident" if len(wrong) > len(shown) else ""
    fig.suptitle(f"Misclassified test pictures: {len(wrong)} of {len(p.y)}{more}")
    _save(fig, out_dir, "misclassified.png")
    return fig


def write_report(
    run_summary: Mapping[str, Any],
    costs: Sequence[float],
    model: LoadedModel,
    test_x: np.ndarray | None,
    test_y: np.ndarray | None,
    classes: Sequence[str],
    out_dir: Path | str,
) -> Path:
    """Draw the plots and write report.md into `out_dir` (created); the path of report.md.

    `run_summary` has the keys of `summarize` (or `Runs.summary`); `test_x` is the test
    pictures (m, h, w, 3) uint8 and `test_y` their labels, or both None.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = (str(classes[0]), str(classes[1]))
    d = _draw(run_summary, costs, model, test_x, test_y, names, out)
    if d.preds is None:
        # A report written again into the same directory must not keep stale plots.
        for stale in ("confusion.png", "misclassified.png"):
            (out / stale).unlink(missing_ok=True)
    wrong = 0 if d.preds is None else int((d.preds.pred != d.preds.y).sum())
    path = out / REPORT_NAME
    path.write_text(
        _markdown(run_summary, costs, model, names, d.preds, wrong, d.test_acc, d.epochs)
    )
    return path


def figures(r: ReportInputs) -> dict[str, Figure]:
    """The report's plots drawn and written nowhere (a notebook shows them inline), by file
    name in the order of `FIGURES`; without a test set, no confusion or misclassified."""
    drawn = _draw(r.summary, r.costs, r.model, r.test_x, r.test_y, r.classes, None).figures
    return {name: drawn[name] for name in FIGURES if name in drawn}


@dataclass(frozen=True)
class _Drawn:
    figures: dict[str, Figure]
    preds: _Predictions | None
    test_acc: float | None
    epochs: int


def _draw(
    run_summary: Mapping[str, Any],
    costs: Sequence[float],
    model: LoadedModel,
    test_x: np.ndarray | None,
    test_y: np.ndarray | None,
    names: tuple[str, str],
    out: Path | None,
) -> _Drawn:
    """Every plot of a report (saved into `out` unless it is None)."""
    epochs = int(run_summary.get("epochs") or len(costs))
    drawn = {"cost.png": plot_cost(costs, out)}
    preds = None
    if test_x is not None and test_y is not None and len(test_y) > 0:
        preds = _predict(model, test_x, test_y)
        drawn["confusion.png"] = plot_confusion(preds, names, out)
        drawn["misclassified.png"] = plot_misclassified(test_x, preds, names, out)
    test_acc = run_summary.get("test_accuracy")
    if test_acc is None and preds is not None:
        test_acc = preds.accuracy
    drawn["accuracy.png"] = plot_accuracy(run_summary.get("train_accuracy"), test_acc, epochs, out)
    return _Drawn(drawn, preds, test_acc, epochs)


# -- markdown ------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, Mapping):
        v = ", ".join(f"{k}: {x}" for k, x in v.items())
    elif isinstance(v, list | tuple):
        v = ", ".join(str(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else format(float(v), fmt)


def _wall(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    return f"{s:.1f} s" if s < 120 else f"{s:.0f} s ({s / 60:.1f} min)"


def _dataset(d: Any) -> str:
    if not isinstance(d, Mapping):
        return _cell(d)
    text = f"`s3://{d.get('bucket')}/{d.get('key')}`"
    extra = []
    if d.get("version_id"):
        extra.append(f"version {d['version_id']}")
    if d.get("size") is not None:
        extra.append(f"{int(d['size']):,} bytes")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _markdown(
    s: Mapping[str, Any],
    costs: Sequence[float],
    model: LoadedModel,
    classes: tuple[str, str],
    preds: _Predictions | None,
    wrong: int,
    test_acc: float | None,
    epochs: int,
) -> str:
    run_id = s.get("run_id") or model.run_id
    final_cost = s.get("final_cost", costs[-1] if costs else None)
    test_text = _num(test_acc, ".4f")
    if preds is not None:
        right = int((preds.pred == preds.y).sum())
        test_text += f" ({right} of {len(preds.y)} test pictures)"
    else:
        test_text += " (no test set)"
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"# itsacat run `{run_id}`",
        "",
        f"Generated by `itsacat report` at {generated}.",
        "",
        "| | |",
        "|---|---|",
        f"| run | `{run_id}` |",
        f"| status | {_cell(s.get('status'))} |",
        f"| created | {_cell(s.get('created'))} |",
        f"| dataset | {_dataset(s.get('dataset'))} |",
        f"| classes | 0 = {_cell(classes[0])}, 1 = {_cell(classes[1])} |",
        f"| epochs | {epochs} |",
        f"| final cost | {_num(final_cost, '.6f')} |",
        f"| train accuracy | {_num(s.get('train_accuracy'), '.4f')} |",
        f"| test accuracy | {test_text} |",
        f"| wall time | {_wall(s.get('seconds'))} |",
        f"| model | `{s.get('model_uri') or model.uri}` |",
        "",
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    params = s.get("parameters") or model.metadata.get("parameters") or {}
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in params.items()]
    counters = s.get("counters") or {}
    labels = {"redrives": "re-drives"}
    lines += [
        "",
        "## What the run absorbed",
        "",
        "Lambda invocations made, and the faults absorbed on the way (retried invocations, "
        "throttles, duplicate events or trainers, re-drives from the last commit, handovers "
        "to a fresh trainer before the time limit).",
        "",
        "| " + " | ".join(labels.get(k, k) for k in counters) + " |",
        "|" + "---:|" * len(counters),
        "| " + " | ".join(str(v) for v in counters.values()) + " |",
        "",
        "## Cost per epoch",
        "",
        "![cost per epoch](cost.png)",
        "",
        "The training cost (cross-entropy) of each epoch, as committed to the costs table: "
        "the cost of the forward pass over the training set, or with mini-batches its mean "
        "over the epoch's batches (weighted by their size).",
        "",
        "## Accuracy",
        "",
        "![final train and test accuracy](accuracy.png)",
        "",
        "Final train and test accuracy of the published model. Accuracy is not recorded per "
        "epoch (only the cost is), so this is a bar chart of the final values, not a curve.",
        "",
    ]
    if preds is None:
        lines += [
            "## Test set",
            "",
            "The run's dataset has no test set (`test_set_x`/`test_set_y`), so there is no "
            "confusion matrix and no grid of misclassified pictures.",
            "",
        ]
    else:
        shown = min(wrong, MAX_MISCLASSIFIED)
        if wrong == 0:
            what = "None of the test pictures is misclassified."
        elif shown < wrong:
            what = (
                f"{wrong} test pictures are misclassified; the {shown} most confidently wrong "
                "are shown."
            )
        else:
            what = f"{wrong} test pictures are misclassified."
        lines += [
            "## Confusion matrix (test set)",
            "",
            "![confusion matrix on the test set](confusion.png)",
            "",
            f"Rows are the true class, columns the predicted one (class 1, {classes[1]}, when "
            "the network's output is above 0.5).",
            "",
            "## Misclassified test pictures",
            "",
            "![misclassified test pictures](misclassified.png)",
            "",
            f"{what} Each is titled with its true label, the predicted label and the "
            "probability the model gave its prediction.",
            "",
        ]
    return "\n".join(lines)
