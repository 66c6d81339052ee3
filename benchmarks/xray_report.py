"""Render the X-ray benchmark (``benchmarks/results/xray.json``) as Markdown.

Every figure is a mean over seeds (a seed is one fold assignment, partition and
initialisation); comparisons are paired over seeds with Student-t 95% intervals
(:mod:`benchmarks.paired_stats`), and each run's own patient-bootstrap interval is in its
``cv.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.paired_stats import gain_text, mean_and_range, paired_gain

NOTES = Path(__file__).with_name("xray_notes.md")
FEDERATED_METHODS = ("fedavg", "fedncalign")
LEARNABLE = "learnable_macro_auc"
ABNORMAL = "abnormal_auc"
ALL_CLASSES = "all_class_macro_auc"
VARIANTS = (
    ("centralized", None, "centralized (one site, every training patient)"),
    ("scratch", None, "centralized, same network from random weights"),
    ("local", "s1", "each site alone, s1"),
    ("fedavg", "s1", "FedAvg + SecAgg+, s1"),
    ("fedncalign", "s1", "FedNCAlign-ML + SecAgg+, s1"),
    ("local", "s2", "each site alone, s2"),
    ("fedavg", "s2", "FedAvg + SecAgg+, s2"),
    ("fedncalign", "s2", "FedNCAlign-ML + SecAgg+, s2"),
)


def _runs(results: dict[str, Any], variant: str, setting: str | None) -> list[dict[str, Any]]:
    return [
        r
        for r in results.get("runs", [])
        if "error" not in r and r["variant"] == variant and r.get("setting") == setting
    ]


def _by_seed(runs: Iterable[dict[str, Any]], row: str, metric: str) -> dict[int, float]:
    out = {}
    for r in runs:
        value = r["metrics"].get(row, {}).get(metric, {}).get("value")
        if value is not None:
            out[int(r["seed"])] = 100 * float(value)
    return out


def _headline(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | seeds | learnable-class macro-AUC | abnormal vs normal AUC "
        "| 14-class macro-AUC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant, setting, label in VARIANTS:
        runs = _runs(results, variant, setting)
        if not runs:
            continue
        cells = [mean_and_range(_by_seed(runs, "model", m).values()) for m in (LEARNABLE, ABNORMAL)]
        cells.append(mean_and_range(_by_seed(runs, "model", ALL_CLASSES).values()))
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    central = _runs(results, "centralized", None)
    for row, label in (("no-skill", "no-skill (constant score)"), ("age-only", "age only")):
        if central and any(row in r["metrics"] for r in central):
            cells = [mean_and_range(_by_seed(central, row, m).values()) for m in (LEARNABLE, ABNORMAL)]
            cells.append(mean_and_range(_by_seed(central, row, ALL_CLASSES).values()))
            lines.append(f"| baseline: {label} | {len(central)} | " + " | ".join(cells) + " |")
    return lines


def _comparisons(results: dict[str, Any]) -> list[str]:
    pairs: list[tuple[str, tuple[str, str | None], tuple[str, str | None]]] = [
        ("pretrained minus from scratch (centralized)", ("centralized", None), ("scratch", None)),
    ]
    for s in ("s1", "s2"):
        pairs += [
            (f"FedAvg minus centralized, {s}", ("fedavg", s), ("centralized", None)),
            (f"FedNCAlign-ML minus centralized, {s}", ("fedncalign", s), ("centralized", None)),
            (f"FedNCAlign-ML minus FedAvg, {s}", ("fedncalign", s), ("fedavg", s)),
            (f"FedAvg minus local-only (pooled), {s}", ("fedavg", s), ("local", s)),
            (f"FedNCAlign-ML minus local-only (pooled), {s}", ("fedncalign", s), ("local", s)),
        ]
    lines = [
        "| comparison | learnable-class macro-AUC | abnormal vs normal AUC |",
        "| --- | --- | --- |",
    ]
    for label, a, b in pairs:
        runs_a, runs_b = _runs(results, *a), _runs(results, *b)
        if not runs_a or not runs_b:
            continue
        cells = [
            gain_text(
                paired_gain(_by_seed(runs_a, "model", m), _by_seed(runs_b, "model", m)),
                digits=2,
                count_seeds=True,
            )
            for m in (LEARNABLE, ABNORMAL)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _site_values(runs: list[dict[str, Any]], site: str) -> dict[int, float]:
    out = {}
    for r in runs:
        value = r.get("per_site", {}).get(site, {}).get("value")
        if value is not None:
            out[int(r["seed"])] = 100 * float(value)
    return out


def _site_gains(results: dict[str, Any]) -> list[str]:
    lines = [
        "| setting | site | local-only | FedAvg minus local-only | FedNCAlign-ML minus local-only |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in ("s1", "s2"):
        local = _runs(results, "local", s)
        sites = sorted({site for r in local for site in r.get("per_site", {})})
        for site in sites:
            base = _site_values(local, site)
            cells = [mean_and_range(base.values())]
            for method in FEDERATED_METHODS:
                fed = _site_values(_runs(results, method, s), site)
                cells.append(gain_text(paired_gain(fed, base), digits=2, count_seeds=True))
            lines.append(f"| {s} | {site} | " + " | ".join(cells) + " |")
    return lines


def _per_class(results: dict[str, Any]) -> list[str]:
    shown = [(v, s, label) for v, s, label in VARIANTS if v in ("centralized", "fedncalign")]
    columns = [(v, s, label) for v, s, label in shown if _runs(results, v, s)]
    if not columns:
        return []
    first = _runs(results, *columns[0][:2])[0]
    learnable = set(first.get("learnable_classes", []))
    positives = first.get("positive_patients", {})
    lines = [
        "| class | positive patients | " + " | ".join(c[2] for c in columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for name in sorted(positives, key=lambda n: -positives[n]):
        cells = []
        for variant, setting, _ in columns:
            values = [
                100 * float(r["per_class"][name]["value"])
                for r in _runs(results, variant, setting)
                if r.get("per_class", {}).get(name, {}).get("value") is not None
            ]
            cells.append(mean_and_range(values))
        mark = " (learnable)" if name in learnable else ""
        lines.append(f"| {name}{mark} | {positives[name]} | " + " | ".join(cells) + " |")
    return lines


def render_xray(results: dict[str, Any]) -> list[str]:
    """Return the X-ray section's Markdown lines (none without results)."""
    runs = [r for r in results.get("runs", []) if "error" not in r]
    if not runs:
        return []
    recipe = results.get("recipe", {})
    protocol = runs[0].get("protocol", {})
    seconds = sum(float(r.get("seconds", 0.0)) for r in runs)
    wall = sum(float(i.get("seconds", 0.0)) for i in results.get("invocations", []))
    failed = [r["key"] for r in results.get("runs", []) if "error" in r]
    lines = [
        "## Chest X-rays: NIH1000, cross-validated by patient",
        "",
        "Generated by `make bench-xray` (`python benchmarks/xray.py`) from "
        "`benchmarks/results/xray.json`. Protocol (`docs/evaluation.md`): "
        f"{protocol.get('images', '?')} films of {protocol.get('patients', '?')} patients, "
        f"{recipe.get('folds', '?')}-fold cross-validation grouped by patient; every film is "
        "scored by the model of the fold that did not train on it, and the metrics come from "
        "the pooled out-of-fold scores. Learnable classes: those with at least 20 positive "
        f"patients ({', '.join(runs[0].get('learnable_classes', []))}). "
        f"Federated runs: {recipe.get('sites', '?')} sites that own their patients (label "
        "skew drawn per patient), secure aggregation on. Recipe: "
        f"{recipe.get('backbone', '?')}, {recipe.get('image_size', '?')} px, last "
        f"{recipe.get('train_blocks', 'all')} blocks and the head trained, "
        f"{recipe.get('rounds', '?')} rounds (epochs for one site) of batch "
        f"{recipe.get('batch_size', '?')} at learning rate {recipe.get('lr', '?')}, "
        "the round chosen on each fold's validation patients.",
        "",
        "Each cell is the mean over seeds (range in brackets); a seed fixes the folds, the sites' "
        "patients and the initialisation, so the comparisons below are paired over seeds "
        "(Student-t 95% intervals). AUC in percent.",
        "",
        *_headline(results),
        "",
        "Paired differences (points of AUC):",
        "",
        *_comparisons(results),
        "",
        "What each hospital gains by joining: each site's own held-out patients, scored by its "
        "local-only model and by the federated model (learnable-class macro-AUC over the "
        "classes with positives at that site; paired over seeds):",
        "",
        *_site_gains(results),
        "",
        "Per-class AUC (mean over seeds):",
        "",
        *_per_class(results),
        "",
        f"Cost: {seconds / 60:.1f} worker-minutes for {len(runs)} cross-validated runs, "
        f"{wall / 60:.1f} minutes of wall time on this machine's cores.",
    ]
    if failed:
        lines += ["", f"Failed cells (recorded, not in the tables): {', '.join(failed)}."]
    if NOTES.is_file():
        lines += ["", NOTES.read_text().strip()]
    return lines
