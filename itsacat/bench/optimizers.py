"""The default network on the cat data with each optimiser, through the embedded stack.

`make bench-optimizers` (or `python -m itsacat.bench.optimizers [--dataset PATH]`) starts a
fresh embedded stack in a temporary home, trains one run per configuration below with the
default parameters otherwise (12288-20-7-5-1, 2,500 epochs, full batch, the default plan),
each checked against the single-process reference trainer's costs, and writes
bench/results/optimizers.json and optimizers.md: train and test accuracy, final cost
(with the L2 term), epochs and wall time on the stack.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from itsacat.bench.plans import embedded_stack
from itsacat.dataset_source import required
from itsacat.errors import UserError
from itsacat.runview import Runs
from itsacat.uploads import upload_dataset
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.params import with_overrides

ROOT = Path(__file__).resolve().parents[2]

CONFIGS: dict[str, dict[str, Any]] = {
    "gd": {},
    "gd, L2 λ=0.1": {"lambda": 0.1},
    "gd, L2 λ=0.7": {"lambda": 0.7},
    "momentum β1=0.9": {"optimizer": "momentum"},
    "adam, lr 0.00001": {"optimizer": "adam", "learning_rate": 0.00001},
}


def reference_costs(dataset: Path, params: dict[str, Any], tmp: Path) -> list[float]:
    """`itsacat reference --json`'s costs for the same data and parameters."""
    path = tmp / "parameters.json"
    path.write_text(json.dumps(params))
    cli = [sys.executable, "-m", "itsacat.cli"]
    out = subprocess.run(
        [*cli, "reference", str(dataset), "--params", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return list(json.loads(out.stdout)["costs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        help="the cat data (default: the copy `itsacat dataset fetch` cached under $ITSACAT_HOME)",
    )
    parser.add_argument("--epochs", type=int, help="fewer epochs (a quick look)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    try:
        dataset = required(args.dataset)
    except UserError as e:
        print(f"optimizers: {e}", file=sys.stderr)
        return 2
    defaults = params_mod.default()
    rows = []
    with embedded_stack() as info:
        env = info.env()
        runs = Runs(env)
        tmp = Path(info.home)
        for name, over in CONFIGS.items():
            params = with_overrides(defaults, epochs=args.epochs, **over)
            print(f"{name}: training {params.epochs} epochs ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            run_id, _ = upload_dataset(env, dataset, params)
            final = runs.wait(run_id, show=False)
            wall = time.monotonic() - began
            if final.status != "SUCCEEDED":
                raise SystemExit(f"{name}: run {run_id} ended {final.status}: {final.error}")
            s = runs.summary(run_id)
            ref = reference_costs(dataset, params.to_json(), tmp)
            worst = max(abs(a - b) / abs(b) for a, b in zip(s["costs"], ref, strict=True))
            rows.append(
                {
                    "config": name,
                    "parameters": over,
                    "run_id": run_id,
                    "first_layer": final.first_layer,
                    "epochs": s["epochs"],
                    "final_cost": s["final_cost"],
                    "train_accuracy": s["train_accuracy"],
                    "test_accuracy": s["test_accuracy"],
                    "wall_s": wall,
                    "invocations": s["counters"]["invocations"],
                    "max_relative_difference_from_reference": worst,
                }
            )
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizers.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "optimizers.md").write_text(table(rows))
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| configuration | layer 1 | epochs | final cost | train accuracy | test accuracy "
        "| wall time | vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['first_layer']} | {r['epochs']} | {r['final_cost']:.4f} "
            f"| {r['train_accuracy']:.1%} | {r['test_accuracy']:.1%} | {r['wall_s']:.0f} s "
            f"| {r['max_relative_difference_from_reference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
