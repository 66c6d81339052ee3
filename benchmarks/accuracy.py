"""Accuracy benchmark: the paper's comparison under two label-skew settings, plus its ablations.

Methods: centralized, FedAvg, FedProx, SCAFFOLD, FedCurv, SphereFed and FedNCAlign-ML, on the
digits composites and NIH1000, in setting 1 (alpha 0.5, rho 0.5) and setting 2 (alpha 0.1,
rho 0.3), over 3 seeds; and FedNCAlign-ML's ablations (ETF classifier, LADM, fixed queries,
L_rej, L_con) on digits in setting 1. Every finished cell is appended to the JSON results at
once (a crash loses at most the cells in progress; rerun with --resume to continue). Cells run
in parallel worker processes. Then the local training step's throughput is measured per method
and docs/benchmarks.md is regenerated, with plots.

    python benchmarks/accuracy.py --quick              # small presets, about 23 min on 2 cores
    python benchmarks/accuracy.py --full               # the full data, 10 rounds (hours on a CPU)
    python benchmarks/accuracy.py --accelerator        # CUDA: larger images, 20 rounds (own file)
    python benchmarks/accuracy.py --quick --resume     # keep finished cells, run the rest
    python benchmarks/accuracy.py --render-only        # rebuild the Markdown from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402
from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig  # noqa: E402

NIH1000 = ROOT.parent / "shared" / "data" / "nih1000"
METHODS = ("centralized", "fedavg", "fedprox", "scaffold", "fedcurv", "spherefed", "fedncalign")
SETTINGS = {"s1": (0.5, 0.5), "s2": (0.1, 0.3)}  # (alpha, rho)
ABLATIONS: dict[str, dict[str, Any]] = {
    "fedncalign": {},
    "no_etf": {"classifier": "learnable"},
    "no_ladm": {"ladm": False},
    "learnable_queries": {"queries": "learnable"},
    "no_rej": {"lambda_rej": 0.0},
    "no_con": {"lambda_con": 0.0},
}
RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
ACCELERATOR_RESULTS = ROOT / "benchmarks" / "results" / "accuracy-accelerator.json"
RELATIVE_COST = {"fedcurv": 2.0, "scaffold": 1.3, "centralized": 0.8}
"""A cell's run time relative to FedAvg's (measured in the quick run; FedCurv adds a Fisher pass)."""


@dataclass(frozen=True)
class Preset:
    """Data sizes, rounds and seeds of one preset."""

    name: str
    digits: dict[str, Any]
    nih1000: dict[str, Any]
    rounds: int
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    nih1000_method: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    digits_method: dict[str, Any] = field(default_factory=dict)


PRESETS = {
    # ResNet-18 at base width 16 with the small stem at 32 px: a 4x4 feature map, so LADM has 16
    # tokens (the earlier quick preset's 16 px digits gave 2x2 and its 32 px X-rays with the
    # standard stem 1x1), at about the earlier per-step cost
    "quick": Preset(
        "quick",
        digits={"max_samples": 300, "composites_per_pair": 3, "image_size": 32},
        nih1000={"image_size": 32},
        rounds=3,
        ablation_seeds=(0,),
        nih1000_method={"backbone": "small", "width": 16},
        digits_method={"backbone": "small", "width": 16},
    ),
    "full": Preset("full", digits={}, nih1000={"image_size": 64}, rounds=10),
    # CUDA only (the CPU presets stay the reference): every digits composite at 32 px instead of
    # 16, NIH1000 at its full 64 px, and twice the full preset's rounds
    "accelerator": Preset(
        "accelerator",
        digits={"image_size": 32},
        nih1000={"image_size": 64},
        rounds=20,
        device="cuda",
    ),
}


@dataclass(frozen=True)
class Cell:
    """One benchmark run: data set, skew setting, method (or ablation), seed."""

    dataset: str
    setting: str
    method: str
    seed: int
    ablation: str | None = None

    @property
    def key(self) -> str:
        """A stable identifier of the cell in the results file."""
        return f"{self.dataset}/{self.setting}/{self.ablation or self.method}/{self.seed}"


def cells(preset: Preset, datasets: list[str]) -> list[Cell]:
    """Every cell of ``preset`` on ``datasets`` (centralized once per seed: it has no skew)."""
    out = []
    for dataset in datasets:
        for seed in preset.seeds:
            out.append(Cell(dataset, "none", "centralized", seed))
            for setting in SETTINGS:
                out += [Cell(dataset, setting, m, seed) for m in METHODS if m != "centralized"]
    if "digits" in datasets:
        for seed in preset.ablation_seeds:
            out += [
                Cell("digits", "s1", "fedncalign", seed, ablation=name)
                for name in ABLATIONS
                if name != "fedncalign"
            ]
    return out


def run_config(cell: Cell, preset: Preset) -> RunConfig:
    """Build the run config of one cell (K=5 sites)."""
    if cell.dataset == "digits":
        data = DataConfig(dataset="digits", **preset.digits)
    elif cell.dataset == "nih1000":
        if not (NIH1000 / "labels.csv").is_file():
            raise SystemExit(
                f"{NIH1000} is absent: NIH1000 needs ../shared/data beside the checkout"
            )
        data = DataConfig(
            dataset="cxr14", images=NIH1000, labels=NIH1000 / "labels.csv", **preset.nih1000
        )
    else:
        raise SystemExit(f"unknown data set {cell.dataset!r}: use digits or nih1000")
    federation = FederationConfig(
        sites=5, rounds=preset.rounds, seed=cell.seed, device=preset.device
    )
    shape = preset.nih1000_method if cell.dataset == "nih1000" else preset.digits_method
    if cell.method == "centralized":
        return RunConfig(
            data=replace(data, rho=1.0),
            method=MethodConfig(name="fedavg", **shape),
            federation=replace(federation, sites=1),
        )
    alpha, rho = SETTINGS[cell.setting]
    options = {**shape, **ABLATIONS.get(cell.ablation or "", {})}
    return RunConfig(
        data=replace(data, alpha=alpha, rho=rho),
        method=MethodConfig(name=cell.method, **options),
        federation=federation,
    )


def simulate_record(config: RunConfig) -> dict[str, Any]:
    """Run one simulation in a temporary folder; return its timing and results, or its error.

    A :class:`~clinfl.errors.ClinflError` is recorded (and shown in the report), never hidden.
    """
    from clinfl.errors import ClinflError
    from clinfl.simulation import run_simulation

    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            summary = run_simulation(config, Path(run_dir)).summary
    except ClinflError as error:
        return {"error": error.one_line(), "seconds": time.perf_counter() - started}
    return {
        "seconds": time.perf_counter() - started,
        **{k: summary.get(k) for k in ("config", "data", "partition", "rounds", "best")},
        "converged": summary.get("converged"),
    }


def run_cell(cell: Cell, preset: Preset, threads: int) -> dict[str, Any]:
    """Run one cell in this (worker) process and return its record."""
    import torch

    torch.set_num_threads(threads)
    return {"key": cell.key, **cell.__dict__, **simulate_record(run_config(cell, preset))}


def load_results(path: Path) -> dict[str, Any]:
    """Read the results file, or start an empty one."""
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {"runs": [], "throughput": []}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2))
    temporary.replace(path)


def run_cells(
    todo: list[Cell], preset: Preset, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Run ``todo`` on ``args.workers`` processes, saving after every finished cell."""
    threads = max(1, args.threads // args.workers)
    # longest first, so no worker is left with a long cell while the other idles at the end
    todo = sorted(todo, key=lambda cell: -RELATIVE_COST.get(cell.method, 1.0))
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, cell, preset, threads): cell for cell in todo}
        for done, future in enumerate(as_completed(futures), start=1):
            record = future.result()
            results["runs"].append(record)
            save_results(args.results, results)
            print_cell(done, len(todo), record)


def print_cell(done: int, total: int, record: dict[str, Any]) -> None:
    """Print one finished cell: its key, its selected round's metrics (or its error), its time."""
    best = record.get("best") or {}
    outcome = (
        f"error: {record['error']}"
        if "error" in record
        else f"macro-AUC {100 * best.get('macro_auc', float('nan')):.2f} "
        f"val {100 * best.get('val_macro_auc', float('nan')):.2f} "
        f"round {best.get('round')}/{len(record.get('rounds') or [])}"
    )
    print(f"[{done}/{total}] {record['key']:48s} {outcome} ({record['seconds']:.0f} s)", flush=True)


def choose_preset(args: argparse.Namespace) -> Preset:
    """Return the preset the arguments name, on the device they name (checked here).

    Raises:
        SystemExit: for a device this machine lacks, or the accelerator preset without CUDA.
    """
    from clinfl.device import resolve_device
    from clinfl.errors import ClinflError

    preset = PRESETS["accelerator" if args.accelerator else "full" if args.full else "quick"]
    device = args.device or preset.device
    try:
        resolved = resolve_device(device)
    except ClinflError as error:
        raise SystemExit(f"{error.one_line()} (the CPU presets need no accelerator)") from None
    return replace(preset, device=str(resolved))


def main() -> None:
    """Parse arguments, run the missing cells, measure throughput, render the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    preset_group = parser.add_mutually_exclusive_group()
    preset_group.add_argument("--quick", action="store_true", help="small presets (default)")
    preset_group.add_argument("--full", action="store_true", help="full data, 10 rounds")
    preset_group.add_argument(
        "--accelerator",
        action="store_true",
        help="CUDA preset: digits at 32 px, NIH1000 at 64 px, 20 rounds; 1 worker; results in "
        "accuracy-accelerator.json",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, auto, cuda or cuda:N (default: the preset's)"
    )
    parser.add_argument("--datasets", default="digits,nih1000")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (2; 1 on CUDA)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep finished cells, run the rest")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    args.results = args.results or (ACCELERATOR_RESULTS if args.accelerator else RESULTS)
    fresh = not (args.resume or args.render_only)
    results = {"runs": [], "throughput": []} if fresh else load_results(args.results)
    if not args.render_only:
        import torch

        from benchmarks.throughput import measure_throughput
        from clinfl.device import device_description

        preset = choose_preset(args)
        on_cpu = preset.device == "cpu"
        args.workers = args.workers or (2 if on_cpu else 1)  # one process per GPU
        datasets = args.datasets.split(",")
        if "nih1000" in datasets and not NIH1000.is_dir():
            print(f"{NIH1000} is absent: NIH1000 cells are skipped", flush=True)
            datasets.remove("nih1000")
        results.update(machine=machine_info(), preset=preset.name, workers=args.workers)
        results["machine"]["torch_threads"] = max(1, args.threads // args.workers)
        results["device"] = device_description(torch.device(preset.device))
        done = {r["key"] for r in results["runs"] if "error" not in r}
        results["runs"] = [r for r in results["runs"] if r["key"] in done]
        todo = [cell for cell in cells(preset, datasets) if cell.key not in done]
        started = time.perf_counter()
        run_cells(todo, preset, args, results)
        results["cells_seconds"] = time.perf_counter() - started
        torch.set_num_threads(args.threads)
        results["throughput"] = [
            measure_throughput(dataset, method, run_config(Cell(dataset, "s1", method, 0), preset))
            for dataset in datasets
            for method in METHODS[1:]
        ]
        save_results(args.results, results)
    write_docs()
    print(f"wrote {args.results} and docs/benchmarks.md")


if __name__ == "__main__":
    main()
