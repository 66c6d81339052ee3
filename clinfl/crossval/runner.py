"""Run a configured federation once per fold and pool its out-of-fold predictions.

Layout of the run folder: ``run_config.json`` (for ``--resume``), ``fold-K/`` (each a normal
run folder with its ``results.json``; local-only training has ``fold-K/site-S/`` per site),
``oof.npz`` (:mod:`clinfl.crossval.predictions`), ``cv.json`` and ``cv.md``
(:mod:`clinfl.crossval.report`). Each fold's (or site's) selected-model test scores are kept in
``fold_scores.npz`` beside its ``results.json``; a resumed run skips the parts that have them
and resumes a part cut off mid-run from its last checkpointed round.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clinfl.algorithms import available_algorithms
from clinfl.config import RunConfig, validate_run_config
from clinfl.config.presets import resolve_defaults
from clinfl.crossval.bootstrap import DRAWS
from clinfl.crossval.folds import FoldPlan, evaluable, fold_data, plan_folds, split_fold
from clinfl.crossval.pool import CvPool, load_cv_pool
from clinfl.crossval.predictions import OOF_FILE, OofPredictions
from clinfl.crossval.report import cv_report, report_markdown
from clinfl.errors import DataError
from clinfl.files import write_atomically, write_json
from clinfl.simulation.resume import CONFIG_FILE, save_run_config
from clinfl.simulation.runner import PreparedData, SimulationListener, run_simulation
from clinfl.weights.provenance import weights_provenance

CV_FILE = "cv.json"
CV_TABLE = "cv.md"
SCORES_FILE = "fold_scores.npz"
NO_SKILL_SCORE = 0.5
"""The score of every class for an image whose site, alone, had nothing to learn from."""

FoldCallback = Callable[[int, int, str], None]
"""``(done, total, label)``: ``done`` of ``total`` fold runs finished; ``label`` the next."""


@dataclass(frozen=True)
class CrossValResult:
    """A finished cross-validated run: its pooled predictions, report and files."""

    config: RunConfig
    pool_description: str
    oof: OofPredictions
    report: dict[str, Any]
    report_path: Path
    table_path: Path
    predictions_path: Path


@dataclass(frozen=True)
class _Part:
    label: str
    folder: Path
    config: RunConfig
    prepared: PreparedData
    test_index: np.ndarray


def _parts(
    config: RunConfig,
    pool: CvPool,
    plan: FoldPlan,
    run_dir: Path,
    unlearnable: list[str],
    constant: list[np.ndarray],
) -> list[_Part]:
    """Return the runs a cross-validation needs.

    A site that trains alone and whose own patients hold no finding with both outcomes (even
    after its validation share grew, :func:`~clinfl.crossval.folds.split_fold`) has nothing to
    learn or select on: it is not run; its label goes to ``unlearnable`` and its test images to
    ``constant`` (they are scored with the no-skill constant).
    """
    data, fed = config.data, config.federation
    parts = []
    for fold in range(plan.num_folds):
        split = split_fold(
            plan,
            pool.images.groups,
            fold,
            val_fraction=data.val_fraction,
            seed=data.cv_seed,
            targets=pool.images.targets,
        )
        folder = run_dir / f"fold-{fold + 1}"
        if fed.training == "federated":
            split_data, partition, test = fold_data(pool.images, plan, split)
            prepared = PreparedData(split_data, partition)
            parts.append(_Part(f"fold {fold + 1}", folder, config, prepared, test))
            continue
        for site in range(plan.num_sites):
            if not (plan.owners[split.test] == site).any():
                continue  # nothing of this site's to score in this fold
            split_data, partition, test = fold_data(pool.images, plan, split, site=site)
            if not evaluable(split_data.val.targets):
                # nothing to learn: no finding has both outcomes in the site's own patients
                unlearnable.append(f"fold {fold + 1} site-{site + 1}")
                constant.append(test)
                continue
            alone = _site_alone(config, site)
            prepared = PreparedData(split_data, partition)
            label = f"fold {fold + 1} site-{site + 1}"
            parts.append(_Part(label, folder / f"site-{site + 1}", alone, prepared, test))
    return parts


def _site_alone(config: RunConfig, site: int) -> RunConfig:
    """Return the configuration of one site training alone (its own policy, no dropouts)."""
    privacy = config.privacy
    if privacy.policy_dir is not None:
        privacy = replace(
            privacy, policy=privacy.policy_dir / f"site-{site + 1}.toml", policy_dir=None
        )
    federation = replace(config.federation, sites=1)
    return replace(config, federation=federation, privacy=privacy, drops=())


def _run_part(part: _Part, listener: SimulationListener | None, resume: bool) -> np.ndarray:
    """Return the part's selected-model scores on its test images, running it if needed.

    Raises:
        DataError: if no round was selected, or saved scores do not fit this plan.
        ClinflError: any error of the run itself.
    """
    saved = part.folder / SCORES_FILE
    if resume and saved.is_file():
        with np.load(saved, allow_pickle=False) as stored:
            index, scores = stored["index"], stored["scores"]
        if not np.array_equal(index, part.test_index):
            raise DataError(
                f"{saved} scored other images than this run's plan",
                remedy="resume the folder with the configuration it saved, or start afresh",
            )
        return np.asarray(scores, dtype=np.float64)
    started = resume and (part.folder / CONFIG_FILE).is_file()
    result = run_simulation(
        part.config, part.folder, listener=listener, resume=started, prepared=part.prepared
    )
    if result.test_scores is None:
        raise DataError(
            f"{part.label}: every round was abandoned, so no model was selected",
            remedy="check the run's federation report and rerun",
        )
    buffer = io.BytesIO()
    own = result.test_scores[: part.test_index.size]  # a site alone scores its own images first
    np.savez(buffer, index=part.test_index, scores=own)
    write_atomically(saved, buffer.getvalue())
    return np.asarray(own, dtype=np.float64)


def run_cross_validation(
    config: RunConfig,
    run_dir: Path,
    *,
    listener: SimulationListener | None = None,
    on_fold: FoldCallback | None = None,
    resume: bool = False,
    draws: int = DRAWS,
) -> CrossValResult:
    """Cross-validate the configured run by patient (``config.data.cv_folds`` folds).

    Writes each fold's run under ``run_dir`` and the pooled ``oof.npz``, ``cv.json`` and
    ``cv.md``. With ``resume``, finished folds are read back instead of rerun.

    Raises:
        ValidationError: for invalid settings, a missing group column, more folds than patients.
        ClinflError: any data, partition, federation or checkpoint error of a fold.
    """
    config = resolve_defaults(validate_run_config(config, known_methods=available_algorithms()))
    data, fed = config.data, config.federation
    if data.cv_folds is None:
        raise DataError("the configuration sets no cv_folds", remedy="pass --cv K")
    weights_provenance(config.method)  # a missing weights file or cache: before any image
    pool = load_cv_pool(config, progress=listener.images_read if listener else None)
    plan = plan_folds(
        pool.images,
        num_folds=data.cv_folds,
        num_sites=fed.sites,
        alpha=data.alpha,
        rho=data.rho,
        seed=data.cv_seed,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_run_config(run_dir, config)
    unlearnable: list[str] = []
    constant: list[np.ndarray] = []
    parts = _parts(config, pool, plan, run_dir, unlearnable, constant)
    scores = np.full(pool.images.targets.shape, np.nan)
    for index in constant:
        scores[index] = NO_SKILL_SCORE
    for done, part in enumerate(parts):
        if on_fold is not None:
            on_fold(done, len(parts), part.label)
        scores[part.test_index] = _run_part(part, listener, resume)
    if on_fold is not None:
        on_fold(len(parts), len(parts), "done")
    oof = OofPredictions(
        ids=np.array(pool.ids, dtype=str),
        patients=np.array(pool.patients, dtype=str),
        sites=plan.owners,
        folds=plan.folds,
        scores=scores,
        targets=pool.images.targets,
        class_names=pool.images.class_names,
        ages=pool.ages,
    )
    predictions_path = run_dir / OOF_FILE
    oof.save(predictions_path)
    protocol = {
        "folds": data.cv_folds,
        "cv_seed": data.cv_seed,
        "group_by": pool.group_by,
        "training": fed.training,
        "unlearnable_sites": unlearnable,
        "sites": fed.sites,
        "method": config.method.name,
        "secure_aggregation": config.secagg.enabled,
        "data": pool.description,
        "unowned_images": int((plan.owners < 0).sum()),
    }
    report = cv_report(oof, protocol=protocol, draws=draws, seed=data.cv_seed)
    report_path, table_path = run_dir / CV_FILE, run_dir / CV_TABLE
    write_json(report_path, report)
    write_atomically(table_path, report_markdown(report))
    return CrossValResult(
        config, pool.description, oof, report, report_path, table_path, predictions_path
    )


def load_cv_report(run_dir: Path) -> dict[str, Any]:
    """Read a cross-validated run's ``cv.json``.

    Raises:
        DataError: if the folder has no readable ``cv.json``.
    """
    try:
        document: dict[str, Any] = json.loads((run_dir / CV_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{run_dir / CV_FILE} is missing or unreadable: {exc}",
            remedy="give a folder written by `clinfl simulate --cv`",
        ) from exc
    return document
