"""Choosing FedCurv's lambda on validation data, never on test data.

Runs FedCurv on the accuracy benchmark's quick digits cells in setting 1 (alpha 0.5, rho 0.5)
for each lambda of a grid and seeds 0 and 1, and picks the lambda with the highest mean
validation macro-AUC at each run's selected round. Test numbers are recorded but play no part.
Writes benchmarks/results/fedcurv_lambda.json; the report shows the table.

    python benchmarks/fedcurv_lambda.py     # 12 runs, about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import PRESETS, Cell, run_config  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

GRID = (10.0, 100.0, 1000.0, 1e4, 1e5, 1e6)
SEEDS = (0, 1)
RESULTS = ROOT / "benchmarks" / "results" / "fedcurv_lambda.json"


def run_one(strength: float, seed: int) -> dict[str, Any]:
    """Run FedCurv at ``strength`` on the quick digits cell of ``seed`` (one torch thread)."""
    import torch

    from clinfl.simulation import run_simulation

    torch.set_num_threads(1)
    config = run_config(Cell("digits", "s1", "fedcurv", seed), PRESETS["quick"])
    config = dataclasses.replace(
        config, method=dataclasses.replace(config.method, fedcurv_lambda=strength)
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        best = run_simulation(config, Path(run_dir)).summary["best"]
    return {
        "lambda": strength,
        "seed": seed,
        "val_macro_auc": best["val_macro_auc"],
        "test_macro_auc": best["macro_auc"],
        "round": best["round"],
        "seconds": time.perf_counter() - started,
    }


def choose(runs: list[dict[str, Any]]) -> float:
    """Return the lambda with the highest mean validation macro-AUC (ties: the smaller)."""
    means: dict[float, list[float]] = {}
    for run in runs:
        means.setdefault(run["lambda"], []).append(run["val_macro_auc"])
    return max(sorted(means), key=lambda value: statistics.fmean(means[value]))


def main() -> None:
    """Run the grid on two worker processes and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = []
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, value, seed) for value in GRID for seed in SEEDS]
        for future in as_completed(futures):
            run = future.result()
            runs.append(run)
            print(
                f"lambda {run['lambda']:g} seed {run['seed']}: validation macro-AUC "
                f"{run['val_macro_auc']:.4f} ({run['seconds']:.0f} s)",
                flush=True,
            )
    runs.sort(key=lambda r: (r["lambda"], r["seed"]))
    chosen = choose(runs)
    document = {"machine": machine_info(), "grid": list(GRID), "chosen": chosen, "runs": runs}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=2))
    print(f"chosen on validation: lambda {chosen:g}; wrote {args.results}")


if __name__ == "__main__":
    main()
