"""Evaluation noise against AUC error: how much pooled noisy histograms move the federation's AUC.

Setup (synthetic, seeded): 5 sites, 14 classes at ChestX-ray14-like prevalences (0.2 % to 18 %),
200 to 400 validation studies per site, scores Beta(2, 5) for negatives and Beta(4, 3) for
positives. Per draw: new data; each site builds its histograms on the grid, adds discrete
Laplace noise for the epsilon (:func:`clinfl.evaluation.noise.noisy_integer_vector`, the exact
sampler fed by a seeded byte stream), the vectors are summed, decoded with negative counts
clamped (:func:`clinfl.evaluation.vector.from_integer_vector`) and scored
(:func:`clinfl.evaluation.auc.histogram_metrics`). The error is against the exact macro- and
micro-AUC of the pooled scores (:func:`clinfl.metrics.multilabel_metrics`). Epsilon is per
evaluation release, add-remove neighbours (``clinfl/evaluation/noise.py``); ``inf`` is no noise
(binning error only). Results go to ``benchmarks/results/evaluation_noise.json``.

    python benchmarks/evaluation_noise.py            # 20 draws
    python benchmarks/evaluation_noise.py --draws 3  # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clinfl.evaluation.auc import histogram_metrics  # noqa: E402
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid  # noqa: E402
from clinfl.evaluation.histograms import histograms_from_scores  # noqa: E402
from clinfl.evaluation.noise import (  # noqa: E402
    evaluation_epsilon,
    noise_for_epsilon,
    noisy_integer_vector,
)
from clinfl.evaluation.vector import from_integer_vector, to_integer_vector  # noqa: E402
from clinfl.metrics import multilabel_metrics  # noqa: E402

PREVALENCE = (
    0.10,
    0.025,
    0.04,
    0.02,
    0.12,
    0.02,
    0.015,
    0.002,
    0.18,
    0.05,
    0.05,
    0.03,
    0.035,
    0.05,
)
SITES = 5
EPSILONS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
GRIDS = (DEFAULT_GRID, BinGrid(1024, "uniform"), BinGrid(64, "uniform"), BinGrid(16, "uniform"))
RESULTS = ROOT / "benchmarks" / "results" / "evaluation_noise.json"


def _site_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    samples = int(rng.integers(200, 401))
    targets = (rng.random((samples, len(PREVALENCE))) < np.array(PREVALENCE)).astype(int)
    shape = targets.shape
    scores = np.where(targets == 1, rng.beta(4, 3, shape), rng.beta(2, 5, shape))
    return targets, scores


def _cell(grid: BinGrid, epsilon: float, draws: int) -> dict[str, Any]:
    macro_errors, micro_errors = [], []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        sites = [_site_data(rng) for _ in range(SITES)]
        exact = multilabel_metrics(
            np.concatenate([t for t, _ in sites]), np.concatenate([s for _, s in sites])
        )
        histograms = [histograms_from_scores(t, s, grid=grid) for t, s in sites]
        if math.isinf(epsilon):
            vectors = [to_integer_vector(h) for h in histograms]
        else:
            scale = noise_for_epsilon(epsilon, len(PREVALENCE))
            stream = random.Random(f"{grid}-{epsilon}-{draw}").randbytes
            vectors = [noisy_integer_vector(h, scale, random_bytes=stream) for h in histograms]
        pooled = from_integer_vector(
            np.sum(vectors, axis=0), grid=grid, noisy=not math.isinf(epsilon)
        )
        ours = histogram_metrics(pooled)
        macro_errors.append(abs(ours.macro_auc - exact.macro_auc))
        micro_errors.append(abs(ours.micro_auc - exact.micro_auc))
    scale_text = None
    if not math.isinf(epsilon):
        scale = noise_for_epsilon(epsilon, len(PREVALENCE))
        scale_text = f"{scale.numerator}/{scale.denominator}"
        assert evaluation_epsilon(scale, len(PREVALENCE)) <= epsilon
    return {
        "grid": str(grid),
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "noise_scale": scale_text,
        "draws": draws,
        "macro_auc_abs_error_mean": float(np.mean(macro_errors)),
        "macro_auc_abs_error_max": float(np.max(macro_errors)),
        "micro_auc_abs_error_mean": float(np.mean(micro_errors)),
        "micro_auc_abs_error_max": float(np.max(micro_errors)),
    }


def _table(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| grid | epsilon | noise scale | macro-AUC error mean / max | micro-AUC error mean / max |",
        "|---|---|---|---|---|",
    ]
    for c in cells:
        eps = "inf" if c["epsilon"] is None else f"{c['epsilon']:g}"
        lines.append(
            f"| {c['grid']} | {eps} | {c['noise_scale'] or '-'} | "
            f"{c['macro_auc_abs_error_mean']:.4f} / {c['macro_auc_abs_error_max']:.4f} | "
            f"{c['micro_auc_abs_error_mean']:.4f} / {c['micro_auc_abs_error_max']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every (grid, epsilon) cell, write the JSON results and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20, help="data and noise draws per cell")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cells = [_cell(grid, epsilon, args.draws) for grid in GRIDS for epsilon in EPSILONS]
    document = {
        "setup": {
            "sites": SITES,
            "classes": len(PREVALENCE),
            "prevalence": list(PREVALENCE),
            "validation_studies_per_site": [200, 400],
            "scores": "negatives Beta(2,5), positives Beta(4,3)",
            "neighbouring": "add-remove, epsilon per evaluation release",
            "post_processing": "negative pooled counts clamped to 0",
        },
        "seconds": round(time.perf_counter() - started, 1),
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(_table(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
