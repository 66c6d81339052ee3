"""The default demo data: scikit-learn's bundled handwritten digits as multi-label composites.

The 1,797 8x8 digits ship inside scikit-learn, so a plain install has them and nothing downloads.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from clinfl.data.composites import build_composites
from clinfl.data.imageset import ImageSet, SplitData
from clinfl.data.labels import DIGIT_CLASSES

DEFAULT_DIGITS_SIZE = 16


def _stratified_split(
    classes: np.ndarray, fractions: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    val_fraction, test_fraction = fractions
    train, val, test = [], [], []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        n_test = round(test_fraction * members.size)
        n_val = round(val_fraction * members.size)
        test.append(members[:n_test])
        val.append(members[n_test : n_test + n_val])
        train.append(members[n_test + n_val :])
    return np.concatenate(train), np.concatenate(val), np.concatenate(test)


def load_digit_composites(
    *,
    seed: int,
    image_size: int = DEFAULT_DIGITS_SIZE,
    per_pair: int = 12,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
) -> SplitData:
    """Build train/validation/test digit composites from disjoint source digits.

    Train, validation and test each keep their single digits and add ``per_pair`` composites for
    each of the 45 digit pairs (fewer for the smaller splits, in proportion to their size).
    """
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # [1797, 8, 8] in 0..16
    sources = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    classes = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val_idx, test_idx = _stratified_split(classes, (val_fraction, test_fraction), rng)
    train_fraction = 1.0 - val_fraction - test_fraction
    sets: list[ImageSet] = []
    next_group = 0
    for indices, fraction in (
        (train_idx, train_fraction),
        (val_idx, val_fraction),
        (test_idx, test_fraction),
    ):
        pair_count = max(1, round(per_pair * fraction / train_fraction)) if per_pair else 0
        images, targets = build_composites(
            sources[indices],
            classes[indices],
            num_classes=len(DIGIT_CLASSES),
            per_pair=pair_count,
            image_size=image_size,
            rng=rng,
        )
        groups = np.arange(next_group, next_group + len(images), dtype=np.int64)
        next_group += len(images)
        sets.append(ImageSet(images, targets, groups, DIGIT_CLASSES))
    train, val, test = sets
    description = (
        f"sklearn digits composites at {image_size}px: {len(train)} train / {len(val)} val / "
        f"{len(test)} test ({per_pair} train composites per digit pair)"
    )
    return SplitData(train=train, val=val, test=test, description=description)
