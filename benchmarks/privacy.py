"""Privacy cost: DP-SGD step time and memory per Opacus mode, accuracy at several budgets, and
clinfl's epsilon next to Opacus' own accountant.

    python benchmarks/privacy.py --quick   # steps at 32/64/128 px; FedNCAlign-ML, 300 digits
    python benchmarks/privacy.py --full    # the same steps; FedAvg too, 600 digits, NIH1000
    python benchmarks/privacy.py --steps-only   # only the step cells; keeps the saved accuracy

Each step-time cell (the non-private step and every DP mode, at each size) runs in its own
process with the same torch thread count, so its peak resident memory is its own. Accuracy
runs use `clinfl simulate`'s code path with a policy per budget: the noise multiplier is chosen
so that the site with the highest sampling rate reaches the budget exactly at the last round;
every site's ledger then shows what it really spent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "privacy.json"
MODES = ("none", "hooks", "ew", "ghost", "mixed-ghost", "bookkeeping", "functorch")
SIZES = (32, 64, 128)
BATCH = 32
THREADS = 2  # the reference machine's cores; docs/benchmarks.md states it per section
TIMED_STEPS = 6
WARM_UP = 2  # the first steps allocate and tune kernels
BUDGETS = (3.0, 8.0, None)  # None: no DP
DELTA = 1e-5


def build_step(mode: str, size: int, batches: int) -> tuple[Any, Any, Any, Any, Any]:
    """Return ``(model, optimizer, loader, criterion, algorithm)`` for one mode at ``size``.

    ``criterion`` is Opacus' ghost-clipping loss wrapper for the ghost modes, book-keeping's
    (:class:`BookKeepingCriterion`) for ``bookkeeping``, else None.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from clinfl.algorithms import ModelSpec, create_algorithm
    from clinfl.config import MethodConfig

    generator = torch.Generator().manual_seed(0)
    algorithm = create_algorithm(MethodConfig(name="fedncalign", lambda_rej=0.01))
    spec = ModelSpec(num_classes=14, image_size=size, federation_seed=1, init_seed=0)
    model = algorithm.build_model(spec)
    images = torch.randn(BATCH * batches, 1, size, size, generator=generator)
    targets = (torch.rand(BATCH * batches, 14, generator=generator) < 0.1).float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(TensorDataset(images, targets), batch_size=BATCH)
    criterion = None
    if mode != "none":
        from opacus import PrivacyEngine

        from clinfl.privacy.bookkeeping import enable_bookkeeping
        from clinfl.privacy.ghost_norms import enable_mixed_ghost, register_ghost_norm_samplers
        from clinfl.privacy.settings import (
            BOOKKEEPING_MODE,
            GHOST_CLIPPING_MODES,
            opacus_grad_sample_mode,
        )
        from site_agent.private_training import _PerSampleCriterion

        register_ghost_norm_samplers()  # as in a site: it changes no other mode's numbers
        ghost = mode in GHOST_CLIPPING_MODES
        bookkeeping = enable_bookkeeping(model) if mode == BOOKKEEPING_MODE else None
        if mode == "mixed-ghost":
            enable_mixed_ghost(model)
        fast = ghost or bookkeeping is not None
        extra = {"criterion": _PerSampleCriterion(algorithm)} if fast else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                poisson_sampling=False,
                grad_sample_mode=opacus_grad_sample_mode(mode),
                **extra,
            )
        model, optimizer, loader = made[0], made[1], made[-1]
        criterion = made[2] if ghost else None
        if bookkeeping is not None:
            criterion = BookKeepingCriterion(bookkeeping, model, algorithm)
    return model, optimizer, loader, criterion, algorithm


class BookKeepingCriterion:
    """Book-keeping's loss in the shape of Opacus' ghost-clipping criterion: its ``backward``
    is the one pass that leaves the clipped sum in ``.grad`` (as in ``DPSteps.step``)."""

    def __init__(self, bookkeeping: Any, module: Any, algorithm: Any) -> None:
        self.bookkeeping, self.module, self.algorithm = bookkeeping, module, algorithm

    def __call__(self, output: Any, targets: Any) -> _BookKeepingLoss:
        return _BookKeepingLoss(self, self.algorithm.per_sample_loss(output, targets))


class _BookKeepingLoss:
    def __init__(self, criterion: BookKeepingCriterion, loss_per_sample: Any) -> None:
        self.criterion, self.loss_per_sample = criterion, loss_per_sample

    def backward(self) -> None:
        self.criterion.bookkeeping.backward(self.loss_per_sample.mean(), self.criterion.module)


def one_step_cell(mode: str, size: int, steps: int, threads: int = THREADS) -> dict[str, Any]:
    """Time ``steps`` steps (after two warm-ups) of FedNCAlign-ML in this process."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)  # this process only: Opacus' noise in the timed steps
    load_before = os.getloadavg()[0]
    model, optimizer, loader, criterion, algorithm = build_step(mode, size, steps + WARM_UP)
    timings = []
    warnings.simplefilter("ignore")
    for x, y in loader:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        loss = criterion(output, y) if criterion else algorithm.per_sample_loss(output, y).mean()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "image_size": size,
        "batch": BATCH,
        "step_seconds": statistics.median(timings[WARM_UP:] or timings),
        "step_seconds_all": timings[WARM_UP:],
        "peak_rss_mb": peak_kib / 1024,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def measure_steps(
    sizes: tuple[int, ...], modes: tuple[str, ...] = MODES, timed: int = TIMED_STEPS
) -> list[dict[str, Any]]:
    """Run every (mode, size) cell in a fresh process; add ratios to the non-private step."""
    cells = []
    for size in sizes:
        base: dict[str, Any] | None = None
        for mode in modes:
            if mode == "functorch" and size > 32:
                continue  # one functorch step costs minutes here (30x or more); measured at 32 px
            steps = 1 if mode == "functorch" else timed
            done = subprocess.run(
                [sys.executable, __file__, "--cell", mode, str(size), str(steps)],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if done.returncode != 0:
                cells.append({"mode": mode, "image_size": size, "error": done.stderr[-300:]})
                continue
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            if mode == "none":
                base = cell
            if base is not None:
                cell["time_ratio"] = cell["step_seconds"] / base["step_seconds"]
                cell["memory_ratio"] = cell["peak_rss_mb"] / base["peak_rss_mb"]
            cells.append(cell)
            print(
                f"{size:>3} px {mode:>11}: {cell['step_seconds']:.3f} s/step "
                f"({cell.get('time_ratio', 1.0):.2f}x, load {cell['load_before']:.1f}"
                f"->{cell['load_after']:.1f})",
                flush=True,
            )
    return cells


def _budget_policy(budget: float, noise: float) -> str:
    return (
        f"[dp]\nrequired = true\nepsilon_budget = {budget + 1e-6}\ndelta = {DELTA}\n"
        f"noise_multiplier = {noise}\nmax_grad_norm = 1.0\n"
        '[data]\nmin_samples = 1\n[reporting]\nmetrics = ["counts", "epsilon"]\n'
    )


def _noise_for_budget(config: Any, budget: float) -> float:
    """Noise that brings the fastest-spending site exactly to ``budget`` after the last round."""
    import math

    from opacus.accountants.utils import get_noise_multiplier

    from clinfl.config.presets import resolve_defaults
    from clinfl.data.partition import partition_label_skew
    from clinfl.simulation.datasets import load_split_data

    resolved = resolve_defaults(config)
    data = load_split_data(resolved)
    fed = resolved.federation
    partition = partition_label_skew(
        data.train.targets,
        num_sites=fed.sites,
        alpha=resolved.data.alpha,
        rho=resolved.data.rho,
        seed=fed.seed,
    )
    batches = min(math.ceil(n / fed.batch_size) for n in partition.samples if n > 0)
    steps = fed.rounds * fed.local_epochs * batches
    return float(
        get_noise_multiplier(
            target_epsilon=budget, target_delta=DELTA, sample_rate=1.0 / batches, steps=steps
        )
    )


def _opacus_epsilon(rounds: list[dict[str, Any]]) -> float:
    """Step Opacus' RDP accountant one step at a time through the same rounds."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for entry in rounds:
        if entry["state"] == "released":
            continue
        for _ in range(entry["steps"]):
            accountant.step(
                noise_multiplier=entry["noise_multiplier"], sample_rate=entry["sample_rate"]
            )
    return float(accountant.get_epsilon(delta=DELTA))


def measure_accuracy(dataset: str, method: str, budget: float | None, base: Any) -> dict[str, Any]:
    """Run one federation at ``budget`` (None: no DP) and collect accuracy and privacy spend."""
    from clinfl.config import PrivacyConfig
    from clinfl.simulation import run_simulation
    from site_agent.audit_report import build_site_report

    config = dataclasses.replace(base, method=dataclasses.replace(base.method, name=method))
    with tempfile.TemporaryDirectory() as folder:
        noise = None
        if budget is not None:
            noise = _noise_for_budget(config, budget)
            policy = Path(folder) / "policy.toml"
            policy.write_text(_budget_policy(budget, noise))
            config = dataclasses.replace(config, privacy=PrivacyConfig(policy=policy))
        started = time.perf_counter()
        result = run_simulation(config, Path(folder) / "run")
        sites = []
        for site, state_dir in result.sites.state_dirs.items():
            report = build_site_report(state_dir)
            sites.append(
                {
                    "site": site,
                    "clinfl_epsilon": report["dp"]["epsilon_spent"],
                    "opacus_epsilon": _opacus_epsilon(report["rounds"]),
                    "epsilon_by_round": [
                        [row["round"], row["epsilon_cumulative"]] for row in report["rounds"]
                    ],
                }
            )
    best = result.summary["best"] or {}
    return {
        "dataset": dataset,
        "method": method,
        "budget": budget,
        "noise_multiplier": noise,
        "rounds": config.federation.rounds,
        "macro_auc": best.get("macro_auc"),
        "macro_f1": best.get("macro_f1"),
        "selected_round": best.get("round"),
        "seconds": time.perf_counter() - started,
        "grad_sample_mode": result.summary["grad_sample_mode"],
        "sites": sites,
    }


def _measure_in_worker(
    dataset: str, method: str, budget: float | None, base: Any
) -> dict[str, Any]:
    """:func:`measure_accuracy` in a worker process with one torch thread."""
    import torch

    torch.set_num_threads(1)
    return {**measure_accuracy(dataset, method, budget, base), "threads": 1}


def accuracy_configs(full: bool) -> list[tuple[str, Any]]:
    """The accuracy settings: digits always, NIH1000 with ``--full`` when the data is there."""
    from clinfl.config import DataConfig, FederationConfig, RunConfig

    configs = [
        (
            "digits",
            RunConfig(
                data=DataConfig(max_samples=600 if full else 300),
                federation=FederationConfig(sites=5, rounds=3, seed=0),
            ),
        )
    ]
    nih = ROOT.parent / "shared" / "data" / "nih1000"
    if full and nih.is_dir():
        configs.append(
            (
                "nih1000",
                RunConfig(
                    data=DataConfig(dataset="cxr14", images=nih, labels=nih / "labels.csv"),
                    federation=FederationConfig(sites=5, rounds=5, seed=0),
                ),
            )
        )
    return configs


def main() -> None:
    """Parse arguments, run the benchmark, save JSON and regenerate the docs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cell", nargs=3, metavar=("MODE", "SIZE", "STEPS"), help=argparse.SUPPRESS
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="digits accuracy (default)")
    preset.add_argument("--full", action="store_true", help="adds FedAvg and NIH1000 accuracy")
    steps_choice = parser.add_mutually_exclusive_group()
    steps_choice.add_argument("--skip-steps", action="store_true", help="keep the saved step cells")
    steps_choice.add_argument(
        "--steps-only", action="store_true", help="measure the step cells; keep the saved accuracy"
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help="only these accuracy data sets (comma-separated); keep the saved rows of the others",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.cell:
        mode, size, steps = args.cell
        print(json.dumps(one_step_cell(mode, int(size), int(steps))))
        return
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {}
    steps = previous.get("steps", []) if args.skip_steps else measure_steps(SIZES)
    chosen = None if args.datasets is None else set(args.datasets.split(","))
    accuracy: list[dict[str, Any]] = [
        row
        for row in previous.get("accuracy", [])
        if args.steps_only or (chosen is not None and row["dataset"] not in chosen)
    ]
    preset = previous.get("preset", "quick") if args.steps_only else None
    preset = preset or ("full" if args.full else "quick")

    def save() -> None:
        document = {
            "machine": machine_info(),
            "preset": preset,
            "delta": DELTA,
            "steps": steps,
            "accuracy": accuracy,
        }
        if "profile" in previous:  # benchmarks/privacy_profile.py's, kept until it reruns
            document["profile"] = previous["profile"]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(document, indent=2))

    save()
    wanted = accuracy_configs(args.full or bool(chosen and "nih1000" in chosen))
    jobs = [
        (dataset, method, budget, base)
        for dataset, base in ([] if args.steps_only else wanted)
        if chosen is None or dataset in chosen
        for method in (("fedavg", "fedncalign") if args.full else ("fedncalign",))
        for budget in BUDGETS
    ]
    # two worker processes of one torch thread each; each finished row is saved at once
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_measure_in_worker, *job) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            accuracy.append(row)
            save()
            label = "inf" if row["budget"] is None else f"{row['budget']:g}"
            print(
                f"{row['dataset']} {row['method']} eps {label}: macro-AUC "
                f"{row['macro_auc']:.4f} ({row['seconds']:.0f}s)",
                flush=True,
            )
    order = {(job[0], job[1], job[2]): k for k, job in enumerate(jobs)}
    accuracy.sort(key=lambda r: order.get((r["dataset"], r["method"], r["budget"]), -1))
    save()
    write_docs()
    print(f"wrote {args.results} and docs/benchmarks.md")


if __name__ == "__main__":
    main()
