"""Depth probe: a shallower network (ResNet-10) against the reference preset's ResNet-18.

The issue behind ``make bench-reference`` asks it to fit 3 hours by right-sizing the model. Width
was measured in ``reference.py`` (base width 8 against 16); this probe measures depth. It runs
the reference preset's ``main`` cells (same data, sites, seeds, learning rate, patience and
loss weights chosen on validation) with ``--blocks`` residual blocks per stage instead of
ResNet-18's two, and a round cap of its own, and appends each run to
``benchmarks/results/depth_probe.json``. The probe was measured against the small stem, so it
builds the small stem and reads its loss weights from that preset's results,
``benchmarks/results/reference_small_stem.json``. The notes
(``benchmarks/reference_notes.md``) compare its runs with that preset's.

    python benchmarks/depth_probe.py --blocks 1 --max-rounds 60 --setting s1

The shallower network is a probe, not a product option: the product's backbone stays ResNet-18
(``clinfl/model/backbone.py``). The probe swaps the torchvision ``ResNet`` class the backbone
builds from, in its own worker processes only, for one that builds ``--blocks`` blocks a stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import load_results, save_results  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.reference import (  # noqa: E402
    Cell,
    Settings,
    run_cell,
    run_cells,
    with_tuned_weights,
)
from benchmarks.reference_grid import SEEDS, tuning_choices  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "depth_probe.json"
SMALL_STEM_RESULTS = ROOT / "benchmarks" / "results" / "reference_small_stem.json"
"""The small-stem reference preset the probe compares with, and takes its loss weights from."""
RESNET18_BLOCKS = 2


def use_blocks_per_stage(blocks: int) -> None:
    """Make this process's backbone build ``blocks`` residual blocks per stage (1 = ResNet-10)."""
    from torch import nn
    from torchvision.models.resnet import ResNet

    import clinfl.model.backbones.resnet as backbone

    class ShallowResNet(ResNet):  # type: ignore[misc]
        def _make_layer(
            self, block: type, planes: int, count: int, stride: int = 1, dilate: bool = False
        ) -> nn.Sequential:
            layer: nn.Sequential = super()._make_layer(
                block, planes, min(count, blocks), stride, dilate
            )
            return layer

    backbone.ResNet = ShallowResNet  # type: ignore[attr-defined]


def probe_key(cell: Cell, blocks: int) -> str:
    """The key of ``cell`` at ``blocks`` blocks per stage in the probe's results file."""
    return f"{cell.key}/blocks={blocks}"


def run_probe_cell(
    cell: Cell,
    settings: Settings,
    choices: dict[str, dict[str, Any]],
    threads: int,
    *,
    blocks: int,
) -> dict[str, Any]:
    """Run one cell at ``blocks`` blocks per stage in this (worker) process."""
    use_blocks_per_stage(blocks)
    record = run_cell(cell, settings, choices, threads)
    return {**record, "key": probe_key(cell, blocks), "blocks": blocks}


def main() -> None:
    """Run the missing probe cells on two worker processes, saving after each."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage")
    parser.add_argument("--max-rounds", type=int, default=60)
    parser.add_argument("--setting", default="s1")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--variants", default="fedavg,fedncalign_paper")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 1 <= args.blocks <= RESNET18_BLOCKS:
        parser.error(f"--blocks must be 1 or {RESNET18_BLOCKS}")

    settings = Settings(max_rounds=args.max_rounds, backbone="small")
    choices = tuning_choices(load_results(SMALL_STEM_RESULTS)["runs"])
    finished = {r["key"] for r in load_results(args.results)["runs"] if "error" not in r}
    cells = [
        Cell("main", args.dataset, args.setting, variant, int(seed), max_rounds=args.max_rounds)
        for variant in args.variants.split(",")
        for seed in args.seeds.split(",")
    ]
    todo = with_tuned_weights(cells, choices)  # the loss weights of the preset's main cells
    todo = [cell for cell in todo if probe_key(cell, args.blocks) not in finished]
    if not todo:
        print(f"every cell is in {args.results} already")
        return
    results = load_results(args.results)
    results.setdefault("machine", machine_info())  # run_cells names each run's CPU in it
    save_results(args.results, results)
    started = time.perf_counter()
    runner = partial(run_probe_cell, blocks=args.blocks)
    run_cells(todo, settings, args, choices=choices, runner=runner)
    wall = time.perf_counter() - started
    results = load_results(args.results)
    results.setdefault("invocations", []).append(
        {"argv": sys.argv[1:], "runs": len(todo), "wall_seconds": round(wall, 1)}
    )
    save_results(args.results, results)
    print(f"{len(todo)} runs in {wall / 60:.1f} min on {args.workers} workers")


if __name__ == "__main__":
    main()
