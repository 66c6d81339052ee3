"""Every benchmark in one command: ``make bench`` (quick presets) or ``make bench-full``.

    python benchmarks/run_all.py --quick    # about 30 minutes on 2 CPU cores
    python benchmarks/run_all.py --full     # hours on a CPU

Runs secure aggregation, privacy, ingestion and accuracy with the chosen preset, one process
each, then regenerates docs/benchmarks.md and its figures from the JSON results. Where torch
sees a CUDA device it then runs the accuracy benchmark's accelerator preset as well (larger
images, more rounds, results in accuracy-accelerator.json, reported with the device named);
``--accelerator off`` skips it and ``on`` demands it. A script that fails (or that lacks
../shared/data) is reported and the others still run; the exit status is non-zero if any
failed. Timings go to benchmarks/results/run_all.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402

SCRIPTS = ("secagg.py", "privacy.py", "ingest.py", "accuracy.py")
RESULTS = ROOT / "benchmarks" / "results" / "run_all.json"


def plan(preset: str, scripts: list[str], *, accelerator: str, cuda: bool) -> list[list[str]]:
    """Return the argument lists to run: each script with the preset, then the accelerator's."""
    steps = [[script, f"--{preset}"] for script in scripts]
    if accelerator == "on" or (accelerator == "auto" and cuda):
        steps.append(["accuracy.py", "--accelerator"])
    return steps


def main() -> None:
    """Run every script with the preset, record how each went, rebuild the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    preset_group = parser.add_mutually_exclusive_group()
    preset_group.add_argument("--quick", action="store_true", help="quick presets (default)")
    preset_group.add_argument("--full", action="store_true", help="full presets")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated scripts")
    parser.add_argument(
        "--accelerator",
        choices=("auto", "on", "off"),
        default="auto",
        help="the accuracy benchmark's CUDA preset: when torch sees a GPU (auto), always, never",
    )
    args = parser.parse_args()
    preset = "full" if args.full else "quick"
    record: dict[str, object] = {"preset": preset, "machine": machine_info(), "scripts": []}
    failed = []
    started = time.perf_counter()
    cuda = bool(record["machine"]["cuda"])  # type: ignore[index]
    for script, *options in plan(
        preset, args.only.split(","), accelerator=args.accelerator, cuda=cuda
    ):
        name = " ".join([script, *options])
        print(f"== {name}", flush=True)
        begun = time.perf_counter()
        code = subprocess.call([sys.executable, str(ROOT / "benchmarks" / script), *options])
        seconds = time.perf_counter() - begun
        record["scripts"].append({"script": name, "exit_code": code, "seconds": seconds})  # type: ignore[attr-defined]
        print(f"== {name}: exit {code} after {seconds / 60:.1f} min", flush=True)
        if code != 0:
            failed.append(name)
    record["seconds"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))
    write_docs()
    print(f"all benchmarks: {record['seconds'] / 60:.1f} min; failed: {failed or 'none'}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
