"""Where a DP-SGD step's time goes: phases of the step and per-layer norm time, per mode.

    python benchmarks/privacy_profile.py                  # mixed-ghost and non-private, 64 and 128 px
    python benchmarks/privacy_profile.py --sizes 64 --modes mixed-ghost,ghost
    python benchmarks/privacy_profile.py --modes none,mixed-ghost,bookkeeping

Each (mode, size) runs in its own process: 2 warm-up steps, then the median of the timed steps
for each phase. Ghost-clipping modes are split as Opacus runs them (first backward with the
norm hooks, clipping factors, second backward without hooks); book-keeping as its one backward
with the norm hooks, then the clipped sums it forms from what that pass kept. The per-layer rows
are the time of each layer's norm sampler in the (first) backward, summed by stage. Results go
into the ``profile`` entry of ``benchmarks/results/privacy.json`` and into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.privacy import RESULTS, THREADS, build_step  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402


def _stage(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "backbone":
        return parts[1] if parts[1].startswith("layer") else "stem"
    return "LADM + bias"


def profile_cell(mode: str, size: int, timed: int) -> dict[str, Any]:
    """Profile ``timed`` steps of ``mode`` at ``size`` in this process."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, optimizer, loader, criterion, algorithm = build_step(mode, size, timed + 2)
    layer_seconds: dict[str, float] = defaultdict(float)
    if criterion is not None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping as Hooks

        names = {module: name for name, module in model._module.named_modules()}
        for kind, sampler in list(Hooks.NORM_SAMPLERS.items()):

            def timed_sampler(layer: Any, a: Any, b: Any, sampler: Any = sampler) -> Any:
                started = time.perf_counter()
                result = sampler(layer, a, b)
                layer_seconds[names[layer]] += time.perf_counter() - started
                return result

            Hooks.NORM_SAMPLERS[kind] = timed_sampler
    phases: dict[str, list[float]] = defaultdict(list)
    per_step_layers: list[dict[str, float]] = []
    warnings.simplefilter("ignore")
    for x, y in loader:
        layer_seconds.clear()
        marks = [time.perf_counter()]
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        marks.append(time.perf_counter())
        bookkeeping = getattr(criterion, "bookkeeping", None)
        if criterion is None:
            algorithm.per_sample_loss(output, y).mean().backward()
            marks.append(time.perf_counter())
        elif bookkeeping is not None:  # BookKeeping.backward, phase by phase
            bookkeeping.backpropagate(criterion(output, y).loss_per_sample.mean())
            marks.append(time.perf_counter())
            bookkeeping.assign_clipped_sums(model)
            marks.append(time.perf_counter())
        else:  # DPTensorFastGradientClipping.backward, phase by phase
            per_sample = criterion(output, y).loss_per_sample
            per_sample.mean().backward(retain_graph=True)
            marks.append(time.perf_counter())
            optimizer.zero_grad()
            coefficients = model.get_clipping_coef()
            model.disable_hooks()
            (coefficients * per_sample).sum().backward()
            model.enable_hooks()
            marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        labels = ["forward", "backward"] if criterion is None else ["forward", "first backward"]
        if bookkeeping is not None:
            labels = ["forward", "backward (one pass)", "clipping factors + clipped sums"]
        elif criterion is not None:
            labels += ["clipping factors + second backward"]
        labels += ["optimizer step (clip, noise, AdamW)"]
        for label, start, end in zip(labels, marks[:-1], marks[1:], strict=True):
            phases[label].append(end - start)
        phases["step"].append(marks[-1] - marks[0])
        per_step_layers.append(dict(layer_seconds))
    stages: dict[str, list[float]] = defaultdict(list)
    for step in per_step_layers[2:]:
        totals: dict[str, float] = defaultdict(float)
        for name, seconds in step.items():
            totals[_stage(name)] += seconds
        for stage, seconds in totals.items():
            stages[stage].append(seconds)
    return {
        "mode": mode,
        "image_size": size,
        "threads": torch.get_num_threads(),
        "phases": {k: statistics.median(v[2:]) for k, v in phases.items()},
        "norm_seconds_by_stage": {k: statistics.median(v) for k, v in stages.items()},
    }


def main() -> None:
    """Profile each (mode, size) in its own process; save into privacy.json; regenerate docs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--modes", default="none,mixed-ghost")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-ups")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.cell:
        mode, size, steps = args.cell
        print(json.dumps(profile_cell(mode, int(size), int(steps))))
        return
    cells = []
    for size in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--cell", mode, str(size), str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
                timeout=3600,
            )
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results["profile"] = cells
    args.results.write_text(json.dumps(results, indent=2))
    write_docs()


if __name__ == "__main__":
    main()
