"""The privacy-utility benchmark: what DP-SGD at a site's epsilon leaves of the model.

Every DP cell runs the federation under the shipped default policy (``policies/default.toml``:
DP-SGD, secure aggregation, delta 1e-5, clipping norm 1, cryptographic noise) with its epsilon
budget set to the cell's epsilon and ``planned_rounds`` set to the run's rounds, so every site
derives its own noise multiplier to spend exactly its budget over the run (docs/privacy.md,
"Planning a budget"). A seed fixes the data, the partition (or folds) and the initialisation, so
every cell of one seed forms a pair with the seed's no-DP cell.

Two data sets:

- ``digits``: the bundled digit composites at their full default size (1,618 training images, 5
  sites with label skew), the fixed train/validation/test split; test macro-AUC and macro-F1 at
  the thresholds chosen on validation, of the model selected on validation.
- ``nih1000``: NIH1000 by patient (5-fold cross-validation, the X-ray benchmark's protocol,
  ``docs/evaluation.md``), the pretrained MobileNetV2; the learnable-class macro-AUC of the
  pooled out-of-fold predictions, and the folds' mean macro-F1 at validation thresholds.

Cells: per data set, epsilon 1, 2, 4, 8 and no DP with the recipe (``RECIPES``), plus on digits
the product's default non-private run (``nodp-default``) and the ingredient ablation at epsilon 8
(the recipe with one ingredient set back: ``ABLATIONS``).

``python benchmarks/privacy_utility.py`` runs the missing cells one at a time, each in a process
of its own (resumable), and renders ``docs/benchmarks.md``. Needs ``../shared/data/nih1000`` and
the cached ImageNet MobileNetV2 (``make weights``) for the X-ray cells.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfl.config import DataConfig, FederationConfig, MethodConfig, PrivacyConfig, RunConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import (  # noqa: E402
    load_results,
    record_invocation,
    record_run,
    run_cell_process,
)

NIH1000 = ROOT.parent / "shared" / "data" / "nih1000"
RESULTS = ROOT / "benchmarks" / "results" / "privacy_utility.json"
WORK = ROOT / "runs" / "bench-privacy-utility"
DEFAULT_POLICY = ROOT / "policies" / "default.toml"
EPSILONS: tuple[float | None, ...] = (1.0, 2.0, 4.0, 8.0, None)
SEEDS = (0, 1, 2)
ABLATION_EPSILON = 8.0

# The recipe per data set: run-config settings (section.field -> value). Chosen on validation
# by the ablation (benchmarks/privacy_utility_notes.md says what each ingredient bought).
RECIPES: dict[str, dict[str, Any]] = {
    # ImageNet MobileNetV2 whole (stride 32: 1280 features) at 64 px, the head alone trained
    # (FedAvg's linear head: 12,810 parameters take the noise), large batches, a large step.
    "digits": {
        "federation.rounds": 10,
        "federation.batch_size": 128,
        "federation.lr": 3e-2,
        "method.name": "fedavg",
        "method.backbone": "mobilenet_v2",
        "method.pretrained": True,
        "method.feature_stride": 32,
        "method.train_blocks": 0,
        "data.image_size": 64,
    },
    # The X-ray benchmark's network (stride 16 at 64 px), the head alone trained under DP.
    "nih1000": {
        "federation.rounds": 6,
        "federation.batch_size": 64,
        "federation.lr": 3e-2,
        "method.name": "fedavg",
        "method.backbone": "mobilenet_v2",
        "method.pretrained": True,
        "method.feature_stride": 16,
        "method.train_blocks": 0,
        "data.image_size": 64,
    },
}
# Each ablation changes one ingredient of the digits recipe (``policy.*``: the DP policy's term).
ABLATIONS: dict[str, dict[str, Any]] = {
    "from-scratch": {
        "method.backbone": "auto",
        "method.pretrained": False,
        "method.feature_stride": None,
        "method.train_blocks": None,
        "data.image_size": None,
        "federation.lr": None,
    },
    "last-2-blocks": {"method.train_blocks": 2},
    "batch-32": {"federation.batch_size": 32},
    "clip-0.1": {"policy.max_grad_norm": 0.1},
    "augment-4": {"federation.augment_multiplicity": 4},
    "ema-0.5": {"federation.ema_decay": 0.5},
}
ABLATION_SEEDS = (0,)


@dataclass(frozen=True)
class Cell:
    """One run of the benchmark."""

    dataset: str  # digits or nih1000
    variant: str  # recipe, nodp-default, or an ablation's name
    epsilon: float | None  # None: no DP
    seed: int

    @property
    def key(self) -> str:
        """The cell's name in the results file and its run folder."""
        eps = "nodp" if self.epsilon is None else f"eps{self.epsilon:g}"
        return f"{self.dataset}/{self.variant}/{eps}/seed{self.seed}"


def cells(seeds: tuple[int, ...], datasets: tuple[str, ...]) -> list[Cell]:
    """Return every cell for ``seeds`` and ``datasets``."""
    out: list[Cell] = []
    for dataset in datasets:
        for seed in seeds:
            out += [Cell(dataset, "recipe", eps, seed) for eps in EPSILONS]
            if dataset == "digits":
                out.append(Cell(dataset, "nodp-default", None, seed))
        if dataset == "digits":
            for seed in seeds:
                if seed in ABLATION_SEEDS:
                    out += [Cell(dataset, name, ABLATION_EPSILON, seed) for name in ABLATIONS]
    return out


def cell_of(key: str) -> Cell:
    """Return the cell named ``key``.

    Raises:
        SystemExit: for a key no cell has.
    """
    for cell in cells(tuple(range(100)), ("digits", "nih1000")):
        if cell.key == key:
            return cell
    raise SystemExit(f"no cell is named {key!r}")


def policy_text(epsilon: float, rounds: int, changes: dict[str, Any] | None = None) -> str:
    """The shipped default policy with ``epsilon`` as its budget, planned over ``rounds``.

    ``changes`` sets other ``[dp]`` terms (name -> value).
    """
    text = DEFAULT_POLICY.read_text()
    text = re.sub(r"(?m)^epsilon_budget = .*$", f"epsilon_budget = {epsilon}", text)
    for name, value in (changes or {}).items():
        text = re.sub(rf"(?m)^{name} = .*$", f"{name} = {value}", text)
    text = re.sub(r"(?m)^(noise_multiplier|planned_rounds) = .*$", "", text)
    return text.replace("[dp]\n", f"[dp]\nplanned_rounds = {rounds}\n", 1)


def settings_of(cell: Cell) -> dict[str, Any]:
    """The run-config settings of ``cell`` (section.field -> value)."""
    if cell.variant == "nodp-default":
        return {"federation.rounds": RECIPES["digits"]["federation.rounds"]}
    settings = dict(RECIPES[cell.dataset])
    settings.update(ABLATIONS.get(cell.variant, {}))
    return settings


def run_config(cell: Cell, folder: Path) -> RunConfig:
    """Build the run configuration of ``cell`` (its policy is written into ``folder``)."""
    sections: dict[str, dict[str, Any]] = {
        "data": {},
        "method": {},
        "federation": {},
        "policy": {},
    }
    for name, value in settings_of(cell).items():
        section, field = name.split(".")
        if value is not None or section == "method":
            sections[section][field] = value  # None: the product's default (or preset)
    if cell.dataset == "nih1000":
        data = DataConfig(
            dataset="cxr14",
            images=NIH1000,
            labels=NIH1000 / "labels.csv",
            cv_folds=5,
            group_by="Patient ID",
            cv_seed=cell.seed,
            **sections["data"],
        )
    else:
        data = DataConfig(dataset="digits", **sections["data"])
    federation = FederationConfig(seed=cell.seed, **sections["federation"])
    privacy = PrivacyConfig()
    if cell.epsilon is not None:
        policy = folder / "policy.toml"
        policy.write_text(policy_text(cell.epsilon, federation.rounds, sections["policy"]))
        privacy = PrivacyConfig(policy=policy)
    return RunConfig(
        data=data,
        method=MethodConfig(**sections["method"]),
        federation=federation,
        privacy=privacy,
    )


def _site_epsilons(run_dir: Path) -> dict[str, float]:
    from site_agent.audit_report import build_site_report

    out = {}
    for state in sorted((run_dir / "sites").glob("site-*")):
        if (state / "ledger.sqlite").is_file():
            report = build_site_report(state)
            out[state.name] = float(report["dp"]["epsilon_spent"])
    return out


def _noise(run_dir: Path) -> list[float]:
    from site_agent.ledger import SiteLedger

    noises = []
    for state in sorted((run_dir / "sites").glob("site-*")):
        if (state / "ledger.sqlite").is_file():
            ledger = SiteLedger(state)
            rows = ledger.rounds()
            ledger.close()
            if rows:
                noises.append(rows[0].noise_multiplier)
    return noises


def run_digits(config: RunConfig, folder: Path) -> dict[str, Any]:
    """Run one digits federation; return its record."""
    from clinfl.simulation import run_simulation

    summary = run_simulation(config, folder).summary
    best = summary["best"]
    return {
        "macro_auc": best["macro_auc"],
        "macro_f1_at_thresholds": best.get("macro_f1_at_thresholds"),
        "val_macro_auc": best["val_macro_auc"],
        "selected_round": best["round"],
        "rounds_reached": len(summary["rounds"]),
        "rounds": [
            {"round": r["round"], "val_macro_auc": r.get("val_macro_auc"), "sites": r.get("sites")}
            for r in summary["rounds"]
        ],
        "refusals": summary.get("refusals"),
        "grad_sample_mode": summary.get("grad_sample_mode"),
        "site_epsilon": _site_epsilons(folder),
        "noise_multipliers": _noise(folder),
    }


def run_nih(config: RunConfig, folder: Path) -> dict[str, Any]:
    """Run one cross-validated NIH1000 federation; return its record."""
    from clinfl.crossval.runner import run_cross_validation
    from clinfl.crossval.scoring import ABNORMAL, ALL_CLASSES, LEARNABLE

    report = run_cross_validation(config, folder).report
    model = report["rows"]["model"]
    folds = sorted(p for p in folder.glob("fold-*") if (p / "results.json").is_file())
    f1s, reached, epsilons, noises = [], [], {}, []
    for fold in folds:
        summary = json.loads((fold / "results.json").read_text())
        f1 = summary["best"].get("macro_f1_at_thresholds")
        if f1 is not None:
            f1s.append(f1)
        reached.append(len(summary["rounds"]))
        epsilons.update({f"{fold.name}/{k}": v for k, v in _site_epsilons(fold).items()})
        noises += _noise(fold)
    return {
        "macro_auc": model[LEARNABLE]["value"],
        "macro_auc_interval": [model[LEARNABLE].get("low"), model[LEARNABLE].get("high")],
        "abnormal_auc": model[ABNORMAL]["value"],
        "all_class_macro_auc": model[ALL_CLASSES]["value"],
        "macro_f1_at_thresholds": sum(f1s) / len(f1s) if f1s else None,
        "rounds_reached": min(reached) if reached else 0,
        "site_epsilon": epsilons,
        "noise_multipliers": noises,
        "baselines": {
            row: values[LEARNABLE]["value"]
            for row, values in report["rows"].items()
            if row != "model"
        },
    }


def run_cell(cell: Cell, threads: int) -> dict[str, Any]:
    """Run ``cell`` in this (worker) process and return its record."""
    import shutil

    import torch

    torch.set_num_threads(threads)
    folder = WORK / cell.key.replace("/", "-")
    shutil.rmtree(folder, ignore_errors=True)  # a cell always runs from its start
    folder.mkdir(parents=True)
    started = time.perf_counter()
    config = run_config(cell, folder)
    run = run_nih if cell.dataset == "nih1000" else run_digits
    record = run(config, folder / "run")
    return {
        "key": cell.key,
        "dataset": cell.dataset,
        "variant": cell.variant,
        "epsilon": cell.epsilon,
        "seed": cell.seed,
        "settings": settings_of(cell),
        "seconds": time.perf_counter() - started,
        **record,
    }


def run_order(cell: Cell) -> int:
    """The digits curve first, then NIH1000's first seed, the ablation, NIH1000's other seeds."""
    if cell.dataset == "digits":
        return 0 if cell.variant in ("recipe", "nodp-default") else 2
    return 1 if cell.seed == SEEDS[0] else 3


def main() -> None:
    """Run the missing cells (one at a time, each in its own process), then render the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--datasets", default="digits,nih1000")
    parser.add_argument("--only", default="", help="run only cells whose key contains this")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell is not None:
        record = run_cell(cell_of(args.cell), args.threads)
        args.record.write_text(json.dumps(record))
        return
    if not args.render_only:
        datasets = tuple(args.datasets.split(","))
        if "nih1000" in datasets and not (NIH1000 / "labels.csv").is_file():
            raise SystemExit(f"{NIH1000} is absent: the X-ray cells need ../shared/data")
        seeds = tuple(int(s) for s in args.seeds.split(","))
        results = load_results(args.results)
        done = {r["key"] for r in results["runs"] if "error" not in r}
        todo = [c for c in cells(seeds, datasets) if c.key not in done and args.only in c.key]
        todo.sort(key=run_order)
        print(f"{len(todo)} cells to run", flush=True)
        began, started = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
        for n, cell in enumerate(todo, start=1):
            record = run_cell_process(Path(__file__), cell.key, args.threads)
            record_run(args.results, record, recipes=RECIPES, ablations=ABLATIONS)
            outcome = record.get("error") or (
                f"{100 * record['macro_auc']:.1f} in {record['seconds']:.0f} s"
            )
            print(f"[{n}/{len(todo)}] {cell.key}: {outcome}", flush=True)
        record_invocation(
            args.results,
            {
                "started": began,
                "seconds": time.perf_counter() - started,
                "threads": args.threads,
                "cells": len(todo),
            },
        )
    from benchmarks.report import write_docs

    write_docs()
    print("docs/benchmarks.md regenerated", file=sys.stderr)


if __name__ == "__main__":
    main()
