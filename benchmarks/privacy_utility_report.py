"""Render the privacy-utility benchmark (``benchmarks/results/privacy_utility.json``).

Every figure is a mean over seeds with the range; each comparison is paired over seeds with a
Student-t 95% interval (:mod:`benchmarks.paired_stats`). The margin over chance is the
macro-AUC minus 50; "kept" is a DP run's margin as a share of its seed's no-DP margin.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.paired_stats import gain_text, mean_and_range, paired_gain

NOTES = Path(__file__).with_name("privacy_utility_notes.md")
PLOT = "benchmarks/privacy-utility.png"
TITLES = {
    "digits": "Digits (full default size: 1,618 training composites, 5 sites, fixed split)",
    "nih1000": "NIH1000 by patient (5-fold cross-validation, 5 sites, pretrained MobileNetV2)",
}
METRIC = {
    "digits": "test macro-AUC",
    "nih1000": "learnable-class macro-AUC (pooled out-of-fold)",
}


def _runs(results: dict[str, Any], dataset: str, variant: str) -> list[dict[str, Any]]:
    return [
        r
        for r in results.get("runs", [])
        if "error" not in r and r.get("dataset") == dataset and r.get("variant") == variant
    ]


def _by_seed(
    runs: Iterable[dict[str, Any]], epsilon: float | None, key: str = "macro_auc"
) -> dict[int, float]:
    return {
        int(r["seed"]): 100 * float(r[key])
        for r in runs
        if r.get("epsilon") == epsilon and r.get(key) is not None
    }


def kept_margin(dp: dict[int, float], reference: dict[int, float]) -> dict[int, float]:
    """Per seed, the DP run's margin over chance as a percentage of the reference's margin."""
    return {
        seed: 100 * (dp[seed] - 50) / (reference[seed] - 50)
        for seed in sorted(set(dp) & set(reference))
        if reference[seed] > 50
    }


def _noise(runs: list[dict[str, Any]]) -> str:
    noises = [n for r in runs for n in r.get("noise_multipliers", [])]
    return f"{min(noises):.2f} to {max(noises):.2f}" if noises else "-"


def _spent(runs: list[dict[str, Any]]) -> str:
    spent = [e for r in runs for e in r.get("site_epsilon", {}).values()]
    return f"{max(spent):.3f}" if spent else "-"


def _curve_lines(results: dict[str, Any], dataset: str) -> list[str]:
    recipe = _runs(results, dataset, "recipe")
    if not recipe:
        return []
    reference = _by_seed(recipe, None)
    default = _runs(results, dataset, "nodp-default")
    # the margin is kept against the best non-private model measured: the product's defaults
    # where they ran (digits), else the recipe without DP
    kept_against = _by_seed(default, None) if default else reference
    kept_label = "the product's non-private defaults" if default else "the recipe without DP"
    epsilons = sorted({r["epsilon"] for r in recipe if r["epsilon"] is not None})
    lines = [
        f"#### {TITLES[dataset]}",
        "",
        f"Recipe: `{results.get('recipes', {}).get(dataset, {})}`. {METRIC[dataset]} and "
        "macro-F1 at the validation thresholds in %, mean over seeds (range); the DP minus no-DP "
        "difference is paired over seeds with its 95% interval; kept = margin over chance "
        f"(AUC - 50) as a share of the same seed's margin with {kept_label}.",
        "",
        "| epsilon per site | seeds | noise multiplier (sites) | macro-AUC | DP minus no DP "
        "| kept margin | macro-F1 | rounds reached | largest site epsilon spent | minutes per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for epsilon in [*epsilons, None]:
        rows = [r for r in recipe if r["epsilon"] == epsilon]
        auc = _by_seed(rows, epsilon)
        f1 = _by_seed(rows, epsilon, "macro_f1_at_thresholds")
        kept = kept_margin(auc, kept_against) if epsilon is not None else {}
        label = "no DP" if epsilon is None else f"{epsilon:g}"
        gain = paired_gain(auc, reference) if epsilon is not None else None
        minutes = mean_and_range(r["seconds"] / 60 for r in rows)
        reached = sorted({int(r["rounds_reached"]) for r in rows})
        lines.append(
            f"| {label} | {len(rows)} | {_noise(rows)} | {mean_and_range(auc.values())} | {gain_text(gain)} "
            f"| {mean_and_range(kept.values()) if kept else '-'} | {mean_and_range(f1.values())} "
            f"| {', '.join(map(str, reached))} | {_spent(rows) if epsilon is not None else '-'} "
            f"| {minutes} |"
        )
    if default:
        auc = _by_seed(default, None)
        f1 = _by_seed(default, None, "macro_f1_at_thresholds")
        lines.append(
            f"| no DP, product defaults | {len(default)} | - | {mean_and_range(auc.values())} | - | - "
            f"| {mean_and_range(f1.values())} | {', '.join(sorted({str(r['rounds_reached']) for r in default}))} "
            f"| - | {mean_and_range(r['seconds'] / 60 for r in default)} |"
        )
        eight = _by_seed(recipe, 8.0)
        kept = kept_margin(eight, auc)
        if kept:
            lines += [
                "",
                f"At epsilon 8 the DP model keeps {mean_and_range(kept.values())} % of the product's "
                "default non-private margin over chance (target: 90 %).",
            ]
    baselines = [r.get("baselines", {}) for r in recipe if r.get("baselines")]
    if baselines:
        names = sorted({k for b in baselines for k in b})
        lines += [
            "",
            "Baselines on the same folds (learnable-class macro-AUC): "
            + "; ".join(
                f"{name} {mean_and_range(100 * b[name] for b in baselines if b.get(name) is not None)}"
                for name in names
            )
            + ".",
        ]
    return [*lines, ""]


def _ablation_lines(results: dict[str, Any]) -> list[str]:
    names = list(results.get("ablations", {}))
    seeds = {int(r["seed"]) for name in names for r in _runs(results, "digits", name)}
    every = _by_seed(_runs(results, "digits", "recipe"), 8.0)
    recipe = {seed: auc for seed, auc in every.items() if seed in seeds}  # the ablation's seeds
    if not recipe or not names:
        return []
    lines = [
        "#### What each ingredient buys (digits, epsilon 8)",
        "",
        "Each row changes one ingredient of the recipe: it removes one the recipe has (the "
        "pretrained start, the head alone, large batches) or adds one it lacks (augmentation "
        "multiplicity, weight averaging, a smaller clipping norm). The difference is the recipe "
        "minus that run on the same seeds: positive means the recipe's choice was the better "
        "one.",
        "",
        "| run | setting changed | macro-AUC | recipe minus run |",
        "| --- | --- | --- | --- |",
        f"| recipe | - | {mean_and_range(recipe.values())} | - |",
    ]
    for name in names:
        runs = _runs(results, "digits", name)
        auc = _by_seed(runs, 8.0)
        changed = ", ".join(f"{k} = {v}" for k, v in results["ablations"][name].items())
        lines.append(
            f"| {name} | {changed} | {mean_and_range(auc.values())} | {gain_text(paired_gain(recipe, auc))} |"
        )
    return [*lines, ""]


def render_privacy_utility(results: dict[str, Any], plot: str | None = None) -> list[str]:
    """Return the privacy-utility section (empty without results)."""
    if not results.get("runs"):
        return []
    lines = [
        "### Privacy against utility",
        "",
        "From `python benchmarks/privacy_utility.py` (`make bench-privacy-utility`). Every DP "
        "run uses the shipped default policy with its budget set to the run's epsilon and "
        "`planned_rounds` set to the run's rounds, so each site sets its own noise to spend "
        "exactly its budget over the run (delta 1e-5, clipping norm 1, cryptographic noise, "
        "secure aggregation on).",
        "",
    ]
    for dataset in ("digits", "nih1000"):
        lines += _curve_lines(results, dataset)
    lines += _ablation_lines(results)
    if plot:
        lines += [f"![macro-AUC against epsilon]({plot})", ""]
    errors = [r for r in results.get("runs", []) if "error" in r]
    if errors:
        lines += ["Failed cells: " + "; ".join(f"{r['key']}: {r['error']}" for r in errors), ""]
    if NOTES.is_file():
        lines += [NOTES.read_text().strip(), ""]
    return lines


def draw_privacy_utility(results: dict[str, Any], path: Path) -> bool:
    """Draw macro-AUC against epsilon per data set (no DP as a dashed line); False if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("digits", "nih1000") if _runs(results, d, "recipe")]
    if not datasets:
        return False
    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    try:
        for index, dataset in enumerate(datasets):
            runs = _runs(results, dataset, "recipe")
            epsilons = sorted({r["epsilon"] for r in runs if r["epsilon"] is not None})
            means = [statistics.fmean(_by_seed(runs, e).values()) for e in epsilons]
            colour = f"C{index}"
            axes.plot(epsilons, means, marker="o", color=colour, label=f"{dataset}, DP-SGD")
            for epsilon in epsilons:
                values = list(_by_seed(runs, epsilon).values())
                axes.plot([epsilon] * len(values), values, ".", color=colour, alpha=0.4)
            reference = _by_seed(runs, None)
            if reference:
                axes.axhline(
                    statistics.fmean(reference.values()),
                    color=colour,
                    linestyle="--",
                    label=f"{dataset}, no DP (same recipe)",
                )
            default = _by_seed(_runs(results, dataset, "nodp-default"), None)
            if default:
                axes.axhline(
                    statistics.fmean(default.values()),
                    color=colour,
                    linestyle="-.",
                    label=f"{dataset}, no DP (product defaults)",
                )
        axes.axhline(50, color="grey", linestyle=":", label="chance")
        axes.set_xscale("log", base=2)
        axes.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
        axes.set_xlabel("epsilon per site (delta 1e-5)")
        axes.set_ylabel("macro-AUC %")
        axes.legend(fontsize="x-small", loc="center right")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
        return True
    finally:
        plt.close(figure)
