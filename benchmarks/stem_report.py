"""What the compact stem costs: the reference preset's main runs at two stems, paired by seed.

The reference preset (``benchmarks/reference.py``) ran first with the small stem (3x3 stride 1,
``benchmarks/results/reference_small_stem.json``) and then with the compact one (3x3 stride 2,
``layer4`` unstrided, ``reference.json``). Both give the same token map and the same tensors,
and one seed gives both the same initial weights, data split and partition, so each main cell
pairs across the two files by seed. Each preset's loss weights are its own tuning stage's
choice (``+tuned`` on both sides). Seconds per round compare only on one CPU, so the table
gives them per CPU.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.paired_stats import paired_gain
from benchmarks.reference_report import (
    NAMES,
    SETTING_TITLES,
    _auc,
    _display_variant,
    _interval,
    _mean_sd,
    _ok,
)

Run = dict[str, Any]
Group = tuple[str, str, str]


def _main_groups(results: dict[str, Any]) -> dict[Group, list[Run]]:
    groups: dict[Group, list[Run]] = defaultdict(list)
    for run in _ok(results.get("runs", [])):
        if run.get("stage") == "main":
            run = _display_variant(run)
            groups[(run["dataset"], run["setting"], run["variant"])].append(run)
    return groups


def _round_seconds(runs: list[Run]) -> str:
    """The mean seconds per round of ``runs`` on each CPU they ran on."""
    by_cpu: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        rounds = run["rounds"]
        cpu = " ".join(str(run.get("cpu", "?")).replace("(R)", "").split()[:2])
        by_cpu[cpu].append(sum(r.get("seconds", 0.0) for r in rounds) / len(rounds))
    return ", ".join(f"{statistics.fmean(v):.2f} ({cpu})" for cpu, v in sorted(by_cpu.items()))


def stem_rows(reference: dict[str, Any], small_stem: dict[str, Any]) -> list[dict[str, Any]]:
    """Pair each main cell of the two presets by seed: one row per data set, setting, variant.

    Each row holds the paired gain of the compact stem in test macro-AUC (``gain``, a
    :class:`~benchmarks.paired_stats.PairedGain` or None), the rounds each preset ran in all on
    the shared seeds, and both sides' runs on those seeds.
    """
    compact, small = _main_groups(reference), _main_groups(small_stem)
    rows = []
    for group in sorted(set(compact) & set(small)):
        seeds = {r["seed"] for r in compact[group]} & {r["seed"] for r in small[group]}
        if not seeds:
            continue
        ours = [r for r in compact[group] if r["seed"] in seeds]
        theirs = [r for r in small[group] if r["seed"] in seeds]
        gain = paired_gain({r["seed"]: _auc(r) for r in ours}, {r["seed"]: _auc(r) for r in theirs})
        rows.append(
            {
                "group": group,
                "gain": gain,
                "compact": ours,
                "small": theirs,
                "rounds_compact": sum(len(r["rounds"]) for r in ours),
                "rounds_small": sum(len(r["rounds"]) for r in theirs),
            }
        )
    return rows


def render_stem_comparison(reference: dict[str, Any], small_stem: dict[str, Any]) -> list[str]:
    """Return the Markdown section comparing the two stems (empty when they share no cell)."""
    rows = stem_rows(reference, small_stem)
    if not rows:
        return []
    out = [
        "### What the compact stem costs (main runs, paired by seed)",
        "",
        "Compact stem (this preset) minus small stem (`reference_small_stem.json`, the same "
        "preset before the stem changed), in test macro-AUC at each run's selected round. Rounds "
        "are summed over the paired seeds; seconds per round are means per CPU (compare them on "
        "one CPU only).",
        "",
        "| data set | setting | method | seeds | small stem | compact stem | compact - small "
        "[95% CI] | rounds, small -> compact | s/round small | s/round compact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        dataset, setting, variant = row["group"]
        out.append(
            f"| {dataset} | {SETTING_TITLES.get(setting, setting).split(' (')[0]} "
            f"| {NAMES.get(variant, variant)} "
            f"| {len(row['compact'])} | {_mean_sd([_auc(r) for r in row['small']])} "
            f"| {_mean_sd([_auc(r) for r in row['compact']])} | {_interval(row['gain'])} "
            f"| {row['rounds_small']} -> {row['rounds_compact']} "
            f"| {_round_seconds(row['small'])} | {_round_seconds(row['compact'])} |"
        )
    return out
