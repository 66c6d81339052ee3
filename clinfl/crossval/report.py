"""``cv.json`` and its Markdown table: pooled out-of-fold metrics, baselines, sites, folds."""

from __future__ import annotations

from typing import Any

import numpy as np

from clinfl.crossval.baselines import age_scores, no_skill_scores
from clinfl.crossval.bootstrap import DRAWS, LEVEL, Estimate
from clinfl.crossval.predictions import OofPredictions
from clinfl.crossval.scoring import (
    ABNORMAL,
    ALL_CLASSES,
    CLASS_PREFIX,
    LEARNABLE,
    MIN_POSITIVE_PATIENTS,
    learnable_classes,
    positive_patients,
    summarize,
)

ABNORMAL_RULE = "an image's abnormality score is its largest class score"
HEADLINES = ((LEARNABLE, "learnable-class macro-AUC"), (ABNORMAL, "abnormal vs normal AUC"))


def _as_json(estimates: dict[str, Estimate]) -> dict[str, Any]:
    return {name: e.to_json_dict() for name, e in estimates.items()}


def site_name(site: int) -> str:
    """Return a site's name (``site-1`` ...; -1 is ``no site``)."""
    return "no site" if site < 0 else f"site-{site + 1}"


def cv_report(
    oof: OofPredictions, *, protocol: dict[str, Any], draws: int = DRAWS, seed: int = 0
) -> dict[str, Any]:
    """Return the cross-validation report of pooled predictions ``oof`` (see docs/evaluation.md).

    Metrics cover the images a model scored; baselines are scored on the same images.
    """
    names = oof.class_names
    learnable = learnable_classes(oof.targets, oof.patients)
    counts = positive_patients(oof.targets, oof.patients)
    scored = oof.scored
    targets, patients = oof.targets[scored], oof.patients[scored]

    def score(values: np.ndarray, abnormal: np.ndarray | None = None) -> dict[str, Estimate]:
        return summarize(
            targets,
            values,
            patients,
            class_names=names,
            learnable=learnable,
            abnormal=abnormal,
            draws=draws,
            seed=seed,
        )

    rows = {
        "model": score(oof.scores[scored]),
        "no-skill": score(no_skill_scores(int(scored.sum()), len(names))),
    }
    if oof.ages is not None and not np.isnan(oof.ages).all():
        per_class, abnormal = age_scores(oof.ages, oof.targets, oof.folds)
        rows["age-only"] = score(per_class[scored], abnormal[scored])
    per_site = {}
    for site in np.unique(oof.sites[scored]):
        here = scored & (oof.sites == site)
        estimates = summarize(
            oof.targets[here],
            oof.scores[here],
            oof.patients[here],
            class_names=names,
            learnable=learnable,
            draws=draws,
            seed=seed,
        )
        site_truth = oof.targets[here].astype(bool)
        per_site[site_name(int(site))] = {
            "images": int(here.sum()),
            "patients": int(np.unique(oof.patients[here]).size),
            "learnable_classes_scored": [
                names[k] for k in learnable if site_truth[:, k].any() and not site_truth[:, k].all()
            ],
            LEARNABLE: estimates[LEARNABLE].to_json_dict(),
            ABNORMAL: estimates[ABNORMAL].to_json_dict(),
            ALL_CLASSES: estimates[ALL_CLASSES].to_json_dict(),
        }
    per_fold: list[dict[str, Any]] = []
    for fold in np.unique(oof.folds):
        here = scored & (oof.folds == fold)
        points = summarize(
            oof.targets[here],
            oof.scores[here],
            oof.patients[here],
            class_names=names,
            learnable=learnable,
            draws=0,
        )
        per_fold.append(
            {
                "fold": int(fold) + 1,
                "images": int(here.sum()),
                "patients": int(np.unique(oof.patients[here]).size),
                **{key: points[key].value for key in (LEARNABLE, ABNORMAL, ALL_CLASSES)},
            }
        )
    fold_mean: dict[str, float | None] = {}
    for key in (LEARNABLE, ABNORMAL, ALL_CLASSES):
        values = [value for f in per_fold if (value := f[key]) is not None]
        fold_mean[key] = float(np.mean(values)) if values else None
    return {
        "protocol": {
            **protocol,
            "images": int(oof.ids.size),
            "patients": int(np.unique(oof.patients).size),
            "scored_images": int(scored.sum()),
            "plan_digest": oof.plan_digest(),
        },
        "min_positive_patients": MIN_POSITIVE_PATIENTS,
        "learnable_classes": [names[k] for k in learnable],
        "positive_patients": {name: int(c) for name, c in zip(names, counts, strict=True)},
        "abnormal_score": ABNORMAL_RULE,
        "bootstrap": {"draws": draws, "seed": seed, "level": LEVEL, "resampled": "patients"},
        "rows": {row: _as_json(estimates) for row, estimates in rows.items()},
        "per_site": per_site,
        "per_fold": per_fold,
        "per_fold_mean": fold_mean,
    }


def _cell(value: dict[str, Any]) -> str:
    return Estimate(value["value"], value["low"], value["high"], value["draws"]).percent()


def report_markdown(report: dict[str, Any]) -> str:
    """Render a report from :func:`cv_report` as Markdown tables (AUC in percent, 95% CI)."""
    rows: dict[str, dict[str, Any]] = report["rows"]
    columns = list(rows)
    count = len(report["positive_patients"])
    protocol = report["protocol"]
    lines = [
        f"Patient-grouped {protocol['folds']}-fold cross-validation, pooled out-of-fold: "
        f"{protocol['scored_images']} of {protocol['images']} images scored, "
        f"{protocol['patients']} patients; AUC in percent with patient-bootstrap 95% intervals.",
        "",
        "| metric | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    learnable = ", ".join(report["learnable_classes"]) or "none"
    labels = {
        LEARNABLE: f"learnable-class macro-AUC ({learnable})",
        ABNORMAL: "abnormal vs normal AUC",
        ALL_CLASSES: f"all-class ({count}) macro-AUC",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(_cell(rows[c][key]) for c in columns) + " |")
    mean = report["per_fold_mean"]
    shown = {k: "n/a" if v is None else f"{100 * v:.1f}" for k, v in mean.items()}
    lines += [
        "",
        f"Model, mean of the {len(report['per_fold'])} per-fold AUCs (no interval): "
        f"learnable-class {shown[LEARNABLE]}, abnormal vs normal {shown[ABNORMAL]}, all-class "
        f"{shown[ALL_CLASSES]}. Pooled AUC falls below these when the folds' models are "
        "calibrated differently (docs/evaluation.md).",
    ]
    lines += [
        "",
        "| class | positive patients | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for name, positives in report["positive_patients"].items():
        cells = " | ".join(_cell(rows[c][CLASS_PREFIX + name]) for c in columns)
        lines.append(f"| {name} | {positives} | {cells} |")
    lines += [
        "",
        "| site | patients | images | learnable-class macro-AUC | abnormal vs normal |",
        "| --- | --- | --- | --- | --- |",
    ]
    for site, entry in report["per_site"].items():
        lines.append(
            f"| {site} | {entry['patients']} | {entry['images']} | {_cell(entry[LEARNABLE])} | "
            f"{_cell(entry[ABNORMAL])} |"
        )
    return "\n".join(lines) + "\n"
