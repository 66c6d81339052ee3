"""Reference accuracy benchmark: every model trained until validation stops improving, 5 seeds.

The question it answers: does FedNCAlign-ML's *method* (ETF classifier, LADM, L_rej, L_con) gain
over FedAvg and the other baselines, with fair heads (every linear head starts at the same prior
bias as FedNCAlign-ML's classifier), the learning rate chosen on validation, and the spread over
seeds reported as paired differences with 95% intervals (``benchmarks/paired_stats.py``).

The model is right-sized for a 2-core CPU instead of cutting rounds: ResNet-18 at base width 16
(``--width``; 64 is the paper's network; the ``width`` stage measures 8 and 32 against 16) with
the compact stem (``--backbone``; a 3x3 stride-2 stem and an unstrided ``layer4``), so digits at
32 px and NIH1000 at 64 px give 4x4 and 8x8 LADM tokens at about a third of the small stem's
compute per step (``--backbone small`` reruns the small stem; its results are kept in
``benchmarks/results/reference_small_stem.json``). Every run
trains up to ``--max-rounds`` rounds and stops once validation macro-AUC has not improved for
``--patience`` rounds; the best validation round is reported. Test data choose nothing.

    python benchmarks/reference.py                         # the whole reference (make bench-reference)
    python benchmarks/reference.py --stage tune            # lr, lambda, baseline choices on validation
    python benchmarks/reference.py --stage long            # FedAvg with twice the round cap
    python benchmarks/reference.py --stage main --datasets digits --variants fedavg,fedncalign_ln
    python benchmarks/reference.py --resume                # keep finished cells, run the rest
    python benchmarks/reference.py --render-only           # rebuild docs/benchmarks.md
    python benchmarks/reference.py --estimate --resume     # projected time, from the recorded runs
    python benchmarks/reference.py --stage main --patience 10 --results other.json \
        --choices-from benchmarks/results/reference.json  # other settings, the preset's choices

Every finished cell is appended to ``benchmarks/results/reference.json`` at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import (  # noqa: E402
    NIH1000,
    SETTINGS,
    load_results,
    print_cell,
    save_results,
    simulate_record,
)
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.reference_grid import (  # noqa: E402
    ABLATION_BASE,
    ABLATION_SETTING,
    ABLATIONS,
    BASE_METHOD,
    BASELINE_GRIDS,
    HEAD_VARIANT,
    LAMBDA_CON_GRID,
    LAMBDA_REJ_GRID,
    LAMBDA_TUNED,
    LONG_FACTOR,
    LR_GRID,
    LR_TUNED,
    PAPER_LAMBDA_REJ,
    RELATIVE_COST,
    SEEDS,
    STAGES,
    TUNING_GRIDS,
    TUNING_SEEDS,
    VARIANTS,
    WIDTH_GRID,
    WIDTH_SEEDS,
    WIDTH_VARIANTS,
    tuning_choices,
)
from clinfl.config import (  # noqa: E402
    BackboneVariant,
    DataConfig,
    FederationConfig,
    MethodConfig,
    RunConfig,
)

RESULTS = ROOT / "benchmarks" / "results" / "reference.json"


@dataclass(frozen=True)
class Settings:
    """What every cell shares: model size, learning rate, round budget."""

    width: int = 16
    lr: float = 1e-3
    max_rounds: int = 30
    patience: int = 4
    backbone: BackboneVariant = "compact"
    """The ResNet-18 stem (``MethodConfig.backbone``): ``compact``, or the costlier ``small``."""


@dataclass(frozen=True)
class Cell:
    """One run: stage, data set, skew setting, variant, seed, and any option it overrides."""

    stage: str
    dataset: str
    setting: str
    variant: str
    seed: int
    options: tuple[tuple[str, Any], ...] = ()
    lr: float | None = None
    width: int | None = None
    tuned: tuple[tuple[str, Any], ...] = ()
    """Loss weights chosen on validation (``tuning_choices``); ``options`` override them."""
    max_rounds: int | None = None
    """A round cap other than the run's ``--max-rounds`` (the ``long`` stage)."""

    @property
    def key(self) -> str:
        """A stable identifier of the cell in the results file."""
        extra = ",".join(f"{k}={v}" for k, v in self.options)
        tuned = ",".join(f"{k}={v}" for k, v in self.tuned)
        lr = "" if self.lr is None else f"/lr={self.lr:g}"
        width = "" if self.width is None else f"/width={self.width}"
        cap = "" if self.max_rounds is None else f"/rounds={self.max_rounds}"
        return (
            f"{self.stage}/{self.dataset}/{self.setting}/{self.variant}"
            f"{'{' + tuned + '}' if tuned else ''}"
            f"{'[' + extra + ']' if extra else ''}{lr}{width}{cap}/{self.seed}"
        )


def with_tuned_weights(cells: list[Cell], choices: dict[str, dict[str, Any]]) -> list[Cell]:
    """Give each cell its variant's loss weights chosen on validation.

    Only the digits cells outside the tuning stage take them: the weights are tuned on digits,
    and NIH1000 keeps the paper's weights for X-rays (lambda_rej 0.01 on complex backgrounds).
    """
    out = []
    for cell in cells:
        tuned = cell.stage != "tune" and cell.dataset == "digits"
        chosen = choices.get(cell.variant, {}) if tuned else {}
        weights = tuple(sorted((k, v) for k, v in chosen.items() if k != "lr"))
        out.append(replace(cell, tuned=weights))
    return out


def main_cells(
    datasets: list[str],
    variants: list[str],
    seeds: tuple[int, ...],
    settings: tuple[str, ...] = tuple(SETTINGS),
) -> list[Cell]:
    """Every method in the skew ``settings`` (centralized once: it has no skew)."""
    out = []
    for dataset in datasets:
        for seed in seeds:
            for variant in variants:
                if variant == "centralized":
                    out.append(Cell("main", dataset, "none", variant, seed))
                else:
                    out += [Cell("main", dataset, s, variant, seed) for s in settings]
    return out


def ablation_cells(seeds: tuple[int, ...]) -> list[Cell]:
    """FedNCAlign-ML's ablations on digits, in ``ABLATION_SETTING``."""
    return [
        Cell("ablation", "digits", ABLATION_SETTING, ABLATION_BASE, seed, tuple(options.items()))
        for seed in seeds
        for options in ABLATIONS.values()
    ]


def long_cells(seeds: tuple[int, ...], max_rounds: int) -> list[Cell]:
    """FedAvg with ``LONG_FACTOR`` times the round cap, in ``ABLATION_SETTING`` (digits).

    A FedAvg run that reaches the cap may still be improving, so an equal cap may turn speed
    into accuracy; against FedAvg with the longer cap, a gain is not speed alone.
    """
    return [
        Cell(
            "long", "digits", ABLATION_SETTING, "fedavg", seed, max_rounds=LONG_FACTOR * max_rounds
        )
        for seed in seeds
    ]


def tuning_cells(
    seeds: tuple[int, ...], grids: list[str], lr_grid: tuple[float, ...] = LR_GRID
) -> list[Cell]:
    """The learning-rate (``lr``), loss-weight (``lambda``), baseline-strength (``baseline``,
    :data:`BASELINE_GRIDS`) and FedAvg-head (``head``, :data:`HEAD_VARIANT`) grids on
    validation (digits, s1)."""
    out = []
    if "lr" in grids:
        out += [
            Cell("tune", "digits", "s1", variant, seed, lr=lr)
            for lr in lr_grid
            for variant in LR_TUNED
            for seed in seeds
        ]
    if "lambda" in grids:
        out += [
            Cell("tune", "digits", "s1", LAMBDA_TUNED, seed, ((name, value),))
            for name, grid in (("lambda_rej", LAMBDA_REJ_GRID), ("lambda_con", LAMBDA_CON_GRID))
            for value in grid
            for seed in seeds
        ]
    if "baseline" in grids:
        out += [
            Cell("tune", "digits", "s1", variant, seed, ((name, value),))
            for variant, (name, grid) in BASELINE_GRIDS.items()
            for value in grid
            for seed in seeds
        ]
    if "head" in grids:
        out += [Cell("tune", "digits", "s1", HEAD_VARIANT, seed) for seed in seeds]
    return out


def width_cells(variants: list[str]) -> list[Cell]:
    """What the backbone's width costs in accuracy (digits, setting 1; the main runs' is 16),
    for those of ``WIDTH_VARIANTS`` among ``variants``."""
    return [
        Cell("width", "digits", "s1", variant, seed, width=width)
        for width in WIDTH_GRID
        for variant in WIDTH_VARIANTS
        if variant in variants
        for seed in WIDTH_SEEDS
    ]


def run_config(
    cell: Cell, settings: Settings, choices: dict[str, dict[str, Any]] | None = None
) -> RunConfig:
    """Build the run config of one cell (K=5 sites, small stem).

    Raises:
        SystemExit: for NIH1000 without ``../shared/data`` or an unknown data set.
    """
    if cell.dataset == "digits":
        data = DataConfig(dataset="digits", image_size=32)
    elif cell.dataset == "nih1000":
        if not (NIH1000 / "labels.csv").is_file():
            raise SystemExit(f"{NIH1000} is absent: NIH1000 needs ../shared/data")
        data = DataConfig(
            dataset="cxr14", images=NIH1000, labels=NIH1000 / "labels.csv", image_size=64
        )
    else:
        raise SystemExit(f"unknown data set {cell.dataset!r}: use digits or nih1000")
    name, options = VARIANTS[cell.variant]
    chosen = dict((choices or {}).get(cell.variant, {})) if cell.stage != "tune" else {}
    if cell.stage == "tune" and (cell.variant in BASELINE_GRIDS or cell.variant == HEAD_VARIANT):
        # a baseline's strength is tuned at the learning rate it will train with (FedAvg's)
        chosen = {k: v for k, v in (choices or {}).get(cell.variant, {}).items() if k == "lr"}
    lr = cell.lr or chosen.get("lr") or settings.lr
    method = MethodConfig(
        name=name,
        backbone=settings.backbone,
        width=cell.width or settings.width,
        **{
            **BASE_METHOD,
            "lambda_rej": PAPER_LAMBDA_REJ[cell.dataset],
            **options,
            **dict(cell.tuned),
            **dict(cell.options),
        },
    )
    federation = FederationConfig(
        sites=5,
        rounds=cell.max_rounds or settings.max_rounds,
        patience=settings.patience,
        lr=lr,
        seed=cell.seed,
    )
    if cell.variant == "centralized":
        return RunConfig(
            data=replace(data, rho=1.0), method=method, federation=replace(federation, sites=1)
        )
    alpha, rho = SETTINGS[cell.setting]
    return RunConfig(data=replace(data, alpha=alpha, rho=rho), method=method, federation=federation)


def run_cell(
    cell: Cell, settings: Settings, choices: dict[str, dict[str, Any]], threads: int
) -> dict[str, Any]:
    """Run one cell in this (worker) process and return its record."""
    import torch

    torch.set_num_threads(threads)
    record: dict[str, Any] = {
        "key": cell.key,
        **{k: v for k, v in cell.__dict__.items() if k not in ("options", "tuned")},
        "options": dict(cell.options),
        "tuned": dict(cell.tuned),
    }
    return {**record, **simulate_record(run_config(cell, settings, choices))}


def cpus_of(runs: list[dict[str, Any]]) -> str:
    """Name the CPU the finished ``runs`` ran on, with each one's run count if there are several.

    Seconds per round compare only within one CPU; the report's machine table shows this.
    """
    counts = Counter(str(r.get("cpu", "?")) for r in runs if "error" not in r)
    if len(counts) <= 1:
        return next(iter(counts), "?")
    return ", ".join(f"{cpu} ({n} runs)" for cpu, n in counts.most_common())


def settings_conflict(results: dict[str, Any], settings: Settings) -> str | None:
    """Say why ``results`` cannot be resumed with ``settings``, or return None if they can.

    Cell keys do not name the shared settings (width, learning rate, round cap, patience), so
    resuming a results file made with other settings would mix two models in one table.
    """
    recorded = results.get("settings")
    if not results.get("runs") or not recorded or recorded == settings.__dict__:
        return None
    differ = ", ".join(
        f"{name} {recorded.get(name)} (now {value})"
        for name, value in settings.__dict__.items()
        if recorded.get(name) != value
    )
    return f"the results file was made with other settings: {differ}"


def projected_seconds(cells: list[Cell], runs: list[dict[str, Any]]) -> tuple[float, list[Cell]]:
    """Project the worker time of ``cells`` from the finished ``runs``.

    Each cell counts its own run's rounds at the fastest time per round measured for its data
    set, variant and width, plus the fastest set-up time measured: a lower bound, as if every
    run had idle cores. Returns the seconds and the cells with no finished run to project from.
    """
    done = {r["key"]: r for r in runs if "error" not in r and r.get("rounds")}

    def group(run: dict[str, Any]) -> tuple[Any, ...]:
        return (run.get("dataset"), run.get("variant"), run.get("width"))

    per_round: dict[tuple[Any, ...], float] = {}
    setup = float("inf")
    for run in done.values():
        in_rounds = sum(r.get("seconds", 0.0) for r in run["rounds"])
        rate = in_rounds / len(run["rounds"])
        per_round[group(run)] = min(per_round.get(group(run), rate), rate)
        setup = min(setup, max(0.0, run["seconds"] - in_rounds))
    total, missing = 0.0, list[Cell]()
    for cell in cells:
        finished = done.get(cell.key)
        if finished is None:
            missing.append(cell)
        else:
            total += len(finished["rounds"]) * per_round[group(finished)] + setup
    return total, missing


def print_projection(todo: list[Cell], runs: list[dict[str, Any]], workers: int) -> None:
    """Print the projected time of ``todo`` per stage and in all (see ``projected_seconds``)."""
    total = 0.0
    for stage in STAGES:
        cells = [c for c in todo if c.stage == stage]
        if not cells:
            continue
        seconds, missing = projected_seconds(cells, runs)
        total += seconds
        print(
            f"{stage}: {len(cells)} cells, {seconds / 3600:.2f} h of worker time"
            + (f" ({len(missing)} never run, not counted)" if missing else "")
        )
    print(
        f"in all: {total / 3600:.2f} h of worker time, at least {total / 3600 / workers:.2f} h "
        f"on {workers} workers (fastest measured time per round; stage ends not counted)"
    )


CellRunner = Callable[[Cell, Settings, dict[str, dict[str, Any]], int], dict[str, Any]]
"""Runs one cell in a worker process: (cell, settings, choices, torch threads) -> its record."""


def run_cells(
    todo: list[Cell],
    settings: Settings,
    args: argparse.Namespace,
    *,
    choices: dict[str, dict[str, Any]] | None = None,
    runner: CellRunner = run_cell,
) -> None:
    """Run ``todo`` on ``args.workers`` processes, saving after every finished cell.

    ``choices`` default to the tuning choices in ``args.results``; ``runner`` (a picklable,
    module-level function) to :func:`run_cell`. A record replaces any earlier one of its key.
    """
    if not todo:
        return
    if choices is None:
        choices = tuning_choices(load_results(args.results)["runs"])
    threads = max(1, args.threads // args.workers)
    cpu = machine_info()["cpu"]  # a results file may gather runs from several machines
    todo = sorted(todo, key=lambda c: -RELATIVE_COST.get(c.variant, 1.0))
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        try:
            _run_in(pool, todo, settings, args, choices, runner, threads, cpu)
        except KeyboardInterrupt:  # stop the workers too: no cell goes on running unrecorded
            processes = list((getattr(pool, "_processes", None) or {}).values())  # 3.14: public
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise


def _run_in(
    pool: ProcessPoolExecutor,
    todo: list[Cell],
    settings: Settings,
    args: argparse.Namespace,
    choices: dict[str, dict[str, Any]],
    runner: CellRunner,
    threads: int,
    cpu: str,
) -> None:
    """Submit ``todo`` to ``pool`` and save each record as it finishes."""
    futures = {pool.submit(runner, c, settings, choices, threads): c for c in todo}
    for done, future in enumerate(as_completed(futures), start=1):
        try:
            record = future.result()
        except Exception as error:  # a crash in one cell is recorded, the others go on
            cell = futures[future]
            record = {
                "key": cell.key,
                "stage": cell.stage,
                "error": repr(error),
                "seconds": 0.0,
            }
            print(f"{cell.key} failed: {error!r}", file=sys.stderr, flush=True)
        record["cpu"] = cpu
        results = load_results(args.results)  # another stage may have written meanwhile
        results["runs"] = [r for r in results["runs"] if r["key"] != record["key"]]
        results["runs"].append(record)
        results["machine"]["cpu"] = cpus_of(results["runs"])
        save_results(args.results, results)
        print_cell(done, len(todo), record)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def record_invocation(
    args: argparse.Namespace, began: str, seconds: float, before: int, *, interrupted: bool
) -> None:
    """Append this invocation's wall time to the results file (``interrupted`` if stopped)."""
    results = load_results(args.results)
    results.setdefault("invocations", []).append(
        {
            "started": began,
            "seconds": seconds,
            "cells": sum("error" not in r for r in results["runs"]) - before,
            "stages": args.stage,
            "workers": args.workers,
            **({"interrupted": True} if interrupted else {}),
        }
    )
    save_results(args.results, results)


def main() -> None:
    """Parse arguments, run the missing cells of the chosen stages, render the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage",
        default=",".join(STAGES),
        help="comma-separated stages: tune, main, ablation, width, long (default: all)",
    )
    parser.add_argument("--datasets", default="digits,nih1000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="skew settings of the main stage"
    )
    parser.add_argument("--tuning-seeds", default=",".join(map(str, TUNING_SEEDS)))
    parser.add_argument(
        "--tuning-grids",
        default=",".join(TUNING_GRIDS),
        help=f"any of {', '.join(TUNING_GRIDS)}",
    )
    parser.add_argument("--lr-grid", default=",".join(f"{lr:g}" for lr in LR_GRID))
    parser.add_argument("--width", type=int, default=Settings.width)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--max-rounds", type=int, default=Settings.max_rounds)
    parser.add_argument("--patience", type=int, default=Settings.patience)
    parser.add_argument(
        "--backbone",
        default=Settings.backbone,
        choices=("small", "compact"),
        help="ResNet-18 stem (compact: the small stem's token map at about a third of its compute)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--choices-from",
        type=Path,
        help="take the tuning stage's choices from this results file (no tune stage then)",
    )
    parser.add_argument("--resume", action="store_true", help="keep finished cells, run the rest")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="print the chosen stages' projected time from the finished runs and exit",
    )
    args = parser.parse_args()
    if not args.render_only:
        settings = Settings(args.width, args.lr, args.max_rounds, args.patience, args.backbone)
        fresh: dict[str, Any] = {"runs": [], "throughput": []}
        results = load_results(args.results) if args.resume or args.estimate else fresh
        conflict = settings_conflict(results, settings)
        if conflict:
            parser.error(f"{conflict}; give the same options, or another --results file")
        datasets = args.datasets.split(",")
        if "nih1000" in datasets and not NIH1000.is_dir():
            print(f"{NIH1000} is absent: NIH1000 cells are skipped", flush=True)
            datasets.remove("nih1000")
        seeds = tuple(int(s) for s in args.seeds.split(","))
        stages = args.stage.split(",")
        if args.choices_from and "tune" in stages:
            parser.error("--choices-from replaces the tune stage: leave tune out of --stage")
        if args.choices_from and not args.choices_from.is_file():
            parser.error(f"--choices-from {args.choices_from}: no such results file")
        choices_file = args.choices_from or args.results
        tuning: list[Cell] = []
        if "tune" in stages:
            tuning_seeds = tuple(int(s) for s in args.tuning_seeds.split(","))
            lr_grid = tuple(float(lr) for lr in args.lr_grid.split(","))
            tuning = tuning_cells(tuning_seeds, args.tuning_grids.split(","), lr_grid)
        todo: list[Cell] = []
        if "main" in stages:
            main_settings = tuple(args.settings.split(","))
            unknown = set(main_settings) - set(SETTINGS)
            if unknown:
                parser.error(f"unknown --settings {sorted(unknown)}: use {', '.join(SETTINGS)}")
            todo += main_cells(datasets, args.variants.split(","), seeds, main_settings)
        if "ablation" in stages and "digits" in datasets:
            todo += ablation_cells(seeds)
        if "width" in stages and "digits" in datasets:
            todo += width_cells(args.variants.split(","))
        if "long" in stages and "digits" in datasets:
            todo += long_cells(seeds, settings.max_rounds)
        if args.estimate:
            choices = tuning_choices(load_results(choices_file)["runs"])
            print_projection(
                tuning + with_tuned_weights(todo, choices), results["runs"], args.workers
            )
            return
        done = {r["key"] for r in results["runs"] if "error" not in r}
        results["runs"] = [r for r in results["runs"] if r["key"] in done]
        results.update(machine=machine_info(), preset="reference", settings=settings.__dict__)
        if results["runs"]:
            results["machine"]["cpu"] = cpus_of(results["runs"])
        results["machine"]["torch_threads"] = max(1, args.threads // args.workers)
        save_results(args.results, results)
        started, began = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        before = len(done)
        signal.signal(signal.SIGTERM, _interrupt)  # a stopped run still records its wall time
        try:
            run_cells([cell for cell in tuning if cell.key not in done], settings, args)
            # tune first: the other stages take its choices (and their keys name the weights)
            choices = tuning_choices(load_results(choices_file)["runs"])
            todo = with_tuned_weights(todo, choices)
            for stage in STAGES[1:]:
                run_cells(
                    [c for c in todo if c.stage == stage and c.key not in done],
                    settings,
                    args,
                    choices=choices,
                )
        except KeyboardInterrupt:
            record_invocation(args, began, time.perf_counter() - started, before, interrupted=True)
            raise SystemExit(
                "interrupted: finished cells are kept (--resume runs the rest)"
            ) from None
        record_invocation(args, began, time.perf_counter() - started, before, interrupted=False)
    from benchmarks.report import write_docs

    write_docs()
    print(f"wrote {args.results} and docs/benchmarks.md")


if __name__ == "__main__":
    main()
