"""The report's figures (PNG), drawn from the benchmarks' JSON results with matplotlib."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from benchmarks.accuracy_report import LABELS, SETTING_TITLES, select


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def auc_curves(runs: list[dict[str, Any]], dataset: str, path: Path) -> bool:
    """Per-round test macro-AUC of every method (mean over seeds), one panel per setting."""
    panels = [(s, select(runs, dataset, s)) for s in SETTING_TITLES]
    panels = [(s, g) for s, g in panels if g]
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (setting, grouped) in zip(axes[0], panels, strict=True):
        for method, label in LABELS.items():
            group = grouped.get(method)
            if not group:
                continue
            rounds = min(len(r["rounds"]) for r in group)
            means = [
                100 * statistics.fmean(r["rounds"][i]["macro_auc"] for r in group)
                for i in range(rounds)
            ]
            style = "--" if method == "centralized" else "-"
            axis.plot(range(1, rounds + 1), means, style, marker="o", label=label)
        axis.set_title(f"{dataset}, {SETTING_TITLES[setting]}")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("round")
        axis.set_ylabel("test macro-AUC (%)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    _save(figure, path)
    return True


def partition_heatmap(runs: list[dict[str, Any]], dataset: str, path: Path) -> bool:
    """Site-by-class training counts of seed 0's partition in each setting."""
    panels = []
    for setting in SETTING_TITLES:
        run = next(
            (r for r in select(runs, dataset, setting).get("fedncalign", []) if r["seed"] == 0),
            None,
        )
        if run is not None:
            panels.append((setting, run["partition"]))
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.2), squeeze=False)
    for axis, (setting, partition) in zip(axes[0], panels, strict=True):
        counts = partition["site_by_class_counts"]
        image = axis.imshow(counts, aspect="auto", cmap="viridis")
        names = partition["class_names"]
        axis.set_xticks(range(len(names)), names, rotation=60, fontsize=7, ha="right")
        axis.set_yticks(range(len(counts)), [f"site-{k + 1}" for k in range(len(counts))])
        for row, values in enumerate(counts):
            for column, value in enumerate(values):
                axis.text(
                    column,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value < max(map(max, counts)) / 2 else "black",
                )
        axis.set_title(f"{dataset}, {SETTING_TITLES[setting]} (seed 0)")
        figure.colorbar(image, ax=axis)
    _save(figure, path)
    return True


def epsilon_rounds(privacy: dict[str, Any], path: Path) -> bool:
    """Cumulative epsilon of site-1 against rounds, one line per budget."""
    rows = [
        r
        for r in privacy.get("accuracy", [])
        if r.get("budget") is not None and r["sites"] and "epsilon_by_round" in r["sites"][0]
    ]
    if not rows:
        return False
    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        points = row["sites"][0]["epsilon_by_round"]
        line = axis.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"{row['dataset']} {row['method']}, budget {row['budget']:g}",
        )
        axis.axhline(row["budget"], color=line[0].get_color(), linestyle=":", alpha=0.6)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel(f"cumulative epsilon (delta {privacy.get('delta', '?')})")
    axis.set_title("privacy spent by site-1 (ledger), budget dotted")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)
    return True


def secagg_cost(secagg: dict[str, Any], path: Path) -> bool:
    """Per-round time of plain aggregation, clinfl's SecAgg+ and Flower's against site count."""
    rows = secagg.get("rows", [])
    if not rows:
        return False
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for values in sorted({r["values"] for r in rows}):
        chosen = sorted((r for r in rows if r["values"] == values), key=lambda r: r["sites"])
        sites = [r["sites"] for r in chosen]
        tag = f"{values / 1e6:g}M values"
        axis.plot(
            sites,
            [r["clinfl"]["round"]["parallel_round"] for r in chosen],
            "-o",
            label=f"clinfl SecAgg+, {tag}",
        )
        if all(r.get("flower") for r in chosen):
            axis.plot(
                sites,
                [r["flower"]["round"]["parallel_round"] for r in chosen],
                "--s",
                label=f"Flower SecAgg+, {tag}",
            )
        axis.plot(
            sites,
            [r["plain"]["coordinator"] for r in chosen],
            ":^",
            label=f"plain aggregation, {tag}",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sites")
    axis.set_ylabel("seconds per round")
    axis.set_title("secure aggregation cost against the number of sites")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    _save(figure, path)
    return True


def draw_all(
    figures_dir: Path,
    *,
    accuracy: dict[str, Any],
    privacy: dict[str, Any],
    secagg: dict[str, Any],
) -> dict[str, str]:
    """Draw every figure the results allow; return name -> path relative to ``docs/``."""
    made: dict[str, str] = {}
    runs = accuracy.get("runs", [])
    for dataset in ("digits", "nih1000"):
        if auc_curves(runs, dataset, figures_dir / f"curves-{dataset}.png"):
            made[f"curves-{dataset}"] = f"{figures_dir.name}/curves-{dataset}.png"
        if partition_heatmap(runs, dataset, figures_dir / f"partition-{dataset}.png"):
            made[f"partition-{dataset}"] = f"{figures_dir.name}/partition-{dataset}.png"
    if epsilon_rounds(privacy, figures_dir / "epsilon-rounds.png"):
        made["epsilon"] = f"{figures_dir.name}/epsilon-rounds.png"
    if secagg_cost(secagg, figures_dir / "secagg-sites.png"):
        made["secagg"] = f"{figures_dir.name}/secagg-sites.png"
    return made
