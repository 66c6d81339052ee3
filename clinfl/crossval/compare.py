"""Paired comparison of two cross-validated runs on the same folds: A minus B, by patient.

Both runs' pooled out-of-fold predictions are scored on the images both scored, under the same
patient resamples, so each draw's difference pairs the runs patient by patient; the interval is
the percentile interval of those differences. Per site, each site's own held-out patients are
compared: with a local-only run as B this is what each hospital gains by joining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinfl.crossval.bootstrap import DRAWS, Estimate, patient_weights
from clinfl.crossval.predictions import OOF_FILE, OofPredictions
from clinfl.crossval.report import site_name
from clinfl.crossval.scoring import (
    ABNORMAL,
    ALL_CLASSES,
    LEARNABLE,
    learnable_classes,
    metric_draws,
)
from clinfl.errors import DataError

HEADLINE_METRICS = (LEARNABLE, ABNORMAL, ALL_CLASSES)


@dataclass(frozen=True)
class CvComparison:
    """A minus B: overall and per site, each metric with its paired bootstrap interval."""

    images: int
    patients: int
    overall: dict[str, Estimate]
    per_site: dict[str, dict[str, Estimate]]
    site_note: str

    def to_json_dict(self) -> dict[str, Any]:
        """Return the comparison as plain JSON types."""
        return {
            "images": self.images,
            "patients": self.patients,
            "overall": {k: e.to_json_dict() for k, e in self.overall.items()},
            "per_site": {
                site: {k: e.to_json_dict() for k, e in metrics.items()}
                for site, metrics in self.per_site.items()
            },
            "site_note": self.site_note,
        }

    def markdown(self, name_a: str = "A", name_b: str = "B") -> str:
        """Render as a Markdown table of differences in AUC points (95% paired intervals)."""
        lines = [
            f"{name_a} minus {name_b} on {self.images} images of {self.patients} patients "
            "(AUC points, patient-paired bootstrap 95% intervals)",
            "",
            "| scope | learnable-class macro-AUC | abnormal vs normal | all-class macro-AUC |",
            "| --- | --- | --- | --- |",
        ]
        for scope, metrics in {"all patients": self.overall, **self.per_site}.items():
            cells = " | ".join(
                metrics[m].percent() if m in metrics else "-" for m in HEADLINE_METRICS
            )
            lines.append(f"| {scope} | {cells} |")
        if self.site_note:
            lines += ["", self.site_note]
        return "\n".join(lines) + "\n"


def _paired(
    a: OofPredictions,
    b: OofPredictions,
    mask: np.ndarray,
    learnable: tuple[int, ...],
    draws: int,
    seed: int,
) -> dict[str, Estimate]:
    weights = patient_weights(a.patients[mask], draws=draws, seed=seed)
    first, second = (
        metric_draws(
            run.targets[mask],
            run.scores[mask],
            weights,
            class_names=run.class_names,
            learnable=learnable,
        )
        for run in (a, b)
    )
    out = {}
    for name in first.points:
        pa, pb = first.points[name], second.points[name]
        point = None if pa is None or pb is None else pa - pb
        out[name] = Estimate.of(point, first.draws[name] - second.draws[name])
    return out


def _site_labels(a: OofPredictions, b: OofPredictions) -> tuple[np.ndarray | None, str]:
    single_a, single_b = np.unique(a.sites).size == 1, np.unique(b.sites).size == 1
    if np.array_equal(a.sites, b.sites) or single_b:
        return a.sites, ""
    if single_a:
        return b.sites, "sites are B's (A has one site)"
    return None, "no per-site comparison: the runs' sites own different patients"


def compare_predictions(
    a: OofPredictions, b: OofPredictions, *, draws: int = DRAWS, seed: int = 0
) -> CvComparison:
    """Return ``a`` minus ``b`` (see the module docstring).

    Raises:
        DataError: if the runs' folds, images or labels differ, or they share no scored image.
    """
    if a.plan_digest() != b.plan_digest():
        raise DataError(
            "the two runs do not share their folds (another data set, --cv, --cv-seed, "
            "--group-by or --max-samples)",
            remedy="compare runs made with the same data and cross-validation settings",
        )
    common = a.scored & b.scored
    if not common.any():
        raise DataError("the two runs scored no image in common", remedy="check the runs")
    learnable = learnable_classes(a.targets, a.patients)
    overall = _paired(a, b, common, learnable, draws, seed)
    labels, note = _site_labels(a, b)
    per_site = {}
    if labels is not None:
        for site in np.unique(labels[common]):
            here = common & (labels == site)
            metrics = _paired(a, b, here, learnable, draws, seed)
            per_site[site_name(int(site))] = {m: metrics[m] for m in HEADLINE_METRICS}
    return CvComparison(
        images=int(common.sum()),
        patients=int(np.unique(a.patients[common]).size),
        overall=overall,
        per_site=per_site,
        site_note=note,
    )


def compare_cv_runs(run_a: Path, run_b: Path, *, draws: int = DRAWS, seed: int = 0) -> CvComparison:
    """Compare two ``clinfl simulate --cv`` run folders: ``run_a`` minus ``run_b``.

    Raises:
        DataError: if a folder has no predictions or the runs' folds differ.
    """
    return compare_predictions(
        OofPredictions.load(run_a / OOF_FILE),
        OofPredictions.load(run_b / OOF_FILE),
        draws=draws,
        seed=seed,
    )
