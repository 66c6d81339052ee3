"""The whole data set of a cross-validated run, unsplit: images, labels, patients, ages."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from clinfl.config import RunConfig
from clinfl.config.checks import Problems
from clinfl.data.chestxray14 import (
    INDEX_COLUMN,
    PATH_COLUMN,
    PATH_COLUMNS,
    PATIENT_COLUMN,
    ProgressCallback,
    load_chestxray14_pool,
    read_label_table,
)
from clinfl.data.digits import load_digit_composites
from clinfl.data.imageset import ImageSet
from clinfl.data.label_space import resolve_label_space
from clinfl.errors import InternalError

AGE_COLUMNS = ("Age", "Patient Age")


@dataclass(frozen=True)
class CvPool:
    """Every image of the data set with its id, patient and (when the table has it) age.

    ``images.groups`` numbers the patients 0..P-1; ``patients`` holds their names per image.
    ``ages`` is NaN where unknown, None when the data has no age column.
    """

    images: ImageSet
    ids: tuple[str, ...]
    patients: tuple[str, ...]
    ages: np.ndarray | None
    group_by: str
    description: str

    @property
    def num_patients(self) -> int:
        """How many distinct patients (groups) the pool holds."""
        return int(np.unique(self.images.groups).size)


def _parse_age(text: str | None) -> float:
    """Read an age such as ``58`` or NIH's ``058Y``; NaN when absent or unreadable."""
    match = re.match(r"\s*(\d+(?:\.\d+)?)", text or "")
    return float(match.group(1)) if match else math.nan


def _group_column(config: RunConfig, header: list[str]) -> str | None:
    """Return the patient column to group by (None: each image its own group).

    Raises:
        ValidationError: when ``group_by`` names a column the labels table lacks.
    """
    data = config.data
    if data.group_by is None:
        return PATIENT_COLUMN if PATIENT_COLUMN in header else None
    if data.group_by not in header:
        problems = Problems()
        problems.add(
            "group_by",
            data.group_by,
            "a column of the labels table",
            "name the patient column, one of: " + ", ".join(header),
        )
        problems.raise_if_any("cross-validation setting")
    return data.group_by


def _digits_pool(config: RunConfig) -> CvPool:
    data = config.data
    if data.image_size is None:
        raise InternalError("data.image_size is not resolved (resolve_defaults sets it)")
    split = load_digit_composites(
        seed=data.cv_seed,
        image_size=data.image_size,
        per_pair=data.composites_per_pair,
        val_fraction=data.val_fraction,
    )
    parts = (split.train, split.val, split.test)
    images = ImageSet(
        images=np.concatenate([p.images for p in parts]),
        targets=np.concatenate([p.targets for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        class_names=split.train.class_names,
    )
    if data.max_samples is not None and len(images) > data.max_samples:
        rng = np.random.default_rng([data.cv_seed, 7])
        images = images.subset(np.sort(rng.choice(len(images), data.max_samples, replace=False)))
    _, groups = np.unique(images.groups, return_inverse=True)
    images = replace(images, groups=groups.astype(np.int64))
    ids = tuple(f"digits-{i}" for i in range(len(images)))
    patients = tuple(f"composite-{g}" for g in images.groups)
    description = (
        f"sklearn digits composites at {data.image_size}px: {len(images)} images, each its own "
        "group (a composite shares source digits with others: folds are not leak-free)"
    )
    return CvPool(images, ids, patients, None, "composite", description)


def load_cv_pool(config: RunConfig, progress: ProgressCallback | None = None) -> CvPool:
    """Load the configured data set whole (``config`` must have its defaults resolved).

    Raises:
        ValidationError: for a ``group_by`` column the table lacks, or more folds than patients.
        DataError: for missing or unusable data (see the loaders).
    """
    data = config.data
    if data.image_size is None or data.cv_folds is None:
        raise InternalError("data.image_size and data.cv_folds must be resolved")
    if data.dataset == "digits":
        pool = _digits_pool(config)
    else:
        if data.images is None or data.labels is None:
            raise InternalError(
                "data.images and data.labels must be set (validation requires them)"
            )
        header, _ = read_label_table(data.labels)
        column = _group_column(config, header)
        images, rows = load_chestxray14_pool(
            data.images,
            data.labels,
            image_size=data.image_size,
            group_column=column,
            seed=data.cv_seed,
            max_samples=data.max_samples,
            progress=progress,
            space=resolve_label_space(data.label_space, data.label_columns),
            uncertain=data.uncertain_labels,
        )
        id_column = next((c for c in (INDEX_COLUMN, *PATH_COLUMNS) if c in header), PATH_COLUMN)
        ids = tuple((row.get(id_column) or "").strip() for row in rows)
        named = column or id_column
        patients = tuple((row.get(named) or "").strip() for row in rows)
        age_column = next((c for c in AGE_COLUMNS if c in header), None)
        ages = None
        if age_column is not None:
            ages = np.array([_parse_age(row.get(age_column)) for row in rows], dtype=np.float64)
        grouping = column or "image (no patient column)"
        pool = CvPool(
            images,
            ids,
            patients,
            ages,
            grouping,
            f"ChestX-ray14 at {data.image_size}px from {data.images.name}: {len(images)} images "
            f"of {int(np.unique(images.groups).size)} patients (grouped by '{grouping}')",
        )
    if data.cv_folds > pool.num_patients:
        problems = Problems()
        problems.add(
            "cv_folds",
            data.cv_folds,
            f"at most the number of patients ({pool.num_patients})",
            f"use --cv {min(5, pool.num_patients)} or more data",
        )
        problems.raise_if_any("cross-validation setting")
    return pool
