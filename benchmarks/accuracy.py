"""Accuracy benchmark: centralized, FedAvg, FedProx and FedNCAlign-ML under label skew.

Runs every (data set, method, seed) combination through the in-process federation, appends each
finished run to a JSON results file at once (a crash loses at most the run in progress; rerun with
--resume to continue), measures the local training step's throughput per method, and regenerates
docs/benchmarks.md from the JSON.

    python benchmarks/accuracy.py                      # both data sets, 3 seeds
    python benchmarks/accuracy.py --datasets digits --seeds 0 --resume
    python benchmarks/accuracy.py --render-only        # rebuild the Markdown from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402
from benchmarks.throughput import measure_throughput  # noqa: E402
from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig  # noqa: E402
from clinfl.simulation import run_simulation  # noqa: E402

NIH1000 = ROOT.parent / "shared" / "data" / "nih1000"
METHODS = ("centralized", "fedavg", "fedprox", "fedncalign", "fedncalign_no_rej")
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"


def dataset_config(name: str) -> tuple[DataConfig, int]:
    """Return the data config and number of rounds of a benchmark data set."""
    if name == "digits":
        return DataConfig(dataset="digits", alpha=0.5, rho=0.5), 6
    if name == "nih1000":
        if not (NIH1000 / "labels.csv").is_file():
            raise SystemExit(
                f"{NIH1000} is absent: NIH1000 needs ../shared/data beside the checkout"
            )
        data = DataConfig(
            dataset="cxr14",
            images=NIH1000,
            labels=NIH1000 / "labels.csv",
            image_size=64,
            alpha=0.5,
            rho=0.5,
        )
        return data, 10
    raise SystemExit(f"unknown data set {name!r}: use digits or nih1000")


def run_config(dataset: str, method: str, seed: int, rounds: int | None) -> RunConfig:
    """Build the run config of one benchmark cell (K=5, alpha=0.5, rho=0.5)."""
    data, default_rounds = dataset_config(dataset)
    federation = FederationConfig(sites=5, rounds=rounds or default_rounds, seed=seed)
    if method == "centralized":
        return RunConfig(
            data=replace(data, rho=1.0),
            method=MethodConfig(name="fedavg"),
            federation=replace(federation, sites=1),
        )
    if method == "fedncalign_no_rej":  # the paper's L_rej ablation
        return RunConfig(
            data=data, method=MethodConfig(name="fedncalign", lambda_rej=0.0), federation=federation
        )
    return RunConfig(data=data, method=MethodConfig(name=method), federation=federation)


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


def main() -> None:
    """Parse arguments, run the missing cells, measure throughput, render the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="digits,nih1000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=None, help="override the per-data-set rounds")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--resume", action="store_true", help="keep finished runs, run the rest")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()

    results = (
        load_results(args.results)
        if (args.resume or args.render_only)
        else {"runs": [], "throughput": []}
    )
    results["machine"] = machine_info()
    if not args.render_only:
        done = {(r["dataset"], r["method"], r["seed"]) for r in results["runs"]}
        datasets = args.datasets.split(",")
        for dataset in datasets:
            for seed in (int(s) for s in args.seeds.split(",")):
                for method in args.methods.split(","):
                    if (dataset, method, seed) in done:
                        continue
                    config = run_config(dataset, method, seed, args.rounds)
                    started = time.perf_counter()
                    with tempfile.TemporaryDirectory() as run_dir:
                        outcome = run_simulation(config, Path(run_dir))
                    summary = outcome.summary
                    results["runs"].append(
                        {
                            "dataset": dataset,
                            "method": method,
                            "seed": seed,
                            "seconds": time.perf_counter() - started,
                            "config": summary["config"],
                            "data": summary["data"],
                            "partition": summary["partition"],
                            "rounds": summary["rounds"],
                            "best": summary["best"],
                        }
                    )
                    save_results(args.results, results)
                    best = summary["best"]
                    print(
                        f"{dataset:8s} {method:12s} seed {seed}: macro-AUC {100 * best['macro_auc']:.2f} "
                        f"macro-F1 {100 * best['macro_f1']:.2f} (round {best['round']}, "
                        f"{time.perf_counter() - started:.0f}s)",
                        flush=True,
                    )
        results["throughput"] = [
            measure_throughput(dataset, method, run_config(dataset, method, 0, None))
            for dataset in datasets
            for method in args.methods.split(",")
        ]
        save_results(args.results, results)
    write_docs(args.docs)
    print(f"wrote {args.results} and {args.docs}")


if __name__ == "__main__":
    main()
