"""The fold plan: patients to folds, patients to sites, and each fold's train/validation/test.

* **Folds.** Every patient (group) goes to one of K folds, seeded and roughly balanced: patients
  are dealt rarest finding first, each to the fold holding the fewest patients with that
  finding (then the fewest patients), so rare findings spread over the folds.
* **Sites.** The whole data set's patients are partitioned into sites by label skew at the
  patient level (:func:`~clinfl.data.partition.partition_label_skew` on each patient's label
  set, the union over their images); every image follows its patient. Ownership does not depend
  on the fold or on K. A patient whose label set fits no site's class subset (the per-image
  partitioner drops such images; by patient that would drop 422 of NIH1000's 1,000 images at
  rho 0.5, its 26 most-imaged patients) goes to the site whose subset holds most of their
  findings (ties: seeded draw), so every patient trains somewhere. One site owns everyone.
* **Fold k.** Test: fold k's patients (each image keeps its owner). Each site trains on its own
  other patients minus a validation part taken by patient (``val_fraction``); the federation's
  validation set is the union of those parts.

Fold assignment, ownership and validation parts draw from separate streams of ``seed`` (the
run's ``cv_seed``), so runs with other site counts share folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinfl.data.imageset import ImageSet, SplitData, split_by_group
from clinfl.data.partition import Partition, partition_label_skew
from clinfl.errors import DataError, PartitionError

FOLD_STREAM, VALIDATION_STREAM, ADOPT_STREAM = 1, 2, 3


def patient_targets(groups: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return each patient's label set ``[P, C]``: the union over their images (groups 0..P-1)."""
    out = np.zeros((int(groups.max()) + 1, targets.shape[1]), dtype=np.uint8)
    np.maximum.at(out, groups, targets.astype(np.uint8))
    return out


def assign_folds(labels: np.ndarray, num_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Return each patient's fold (``[P]``) from the patients' label sets ``labels`` ``[P, C]``."""
    count, _ = labels.shape
    frequency = labels.sum(axis=0)
    rarest = np.where(labels.any(axis=1), np.where(labels > 0, frequency, np.inf).argmin(1), -1)
    rarity = np.where(rarest >= 0, frequency[np.maximum(rarest, 0)], np.inf)
    order = np.lexsort((np.asarray(rng.random(count)), rarity))
    folds = np.full(count, -1, dtype=np.int64)
    sizes = np.zeros(num_folds, dtype=np.int64)
    positives = np.zeros((num_folds, labels.shape[1]), dtype=np.int64)
    for patient in order:
        key = positives[:, rarest[patient]] if rarest[patient] >= 0 else np.zeros(num_folds)
        best = np.flatnonzero(key == key.min())
        best = best[sizes[best] == sizes[best].min()]
        fold = int(rng.choice(best))
        folds[patient] = fold
        sizes[fold] += 1
        positives[fold] += labels[patient]
    return folds


def _adopt_unowned(
    owners: np.ndarray,
    labels: np.ndarray,
    subsets: tuple[tuple[int, ...], ...],
    rng: np.random.Generator,
) -> None:
    """Give each unowned patient (owner -1) the site whose class subset holds most findings."""
    membership = np.zeros((len(subsets), labels.shape[1]), dtype=np.int64)
    for site, subset in enumerate(subsets):
        membership[site, list(subset)] = 1
    for patient in np.flatnonzero(owners < 0):
        overlap = membership @ labels[patient].astype(np.int64)
        owners[patient] = int(rng.choice(np.flatnonzero(overlap == overlap.max())))


@dataclass(frozen=True)
class FoldPlan:
    """Each image's fold and owning site, and the sites' class subsets."""

    folds: np.ndarray
    owners: np.ndarray
    num_folds: int
    num_sites: int
    class_subsets: tuple[tuple[int, ...], ...]


def plan_folds(
    images: ImageSet, *, num_folds: int, num_sites: int, alpha: float, rho: float, seed: int
) -> FoldPlan:
    """Assign ``images``' patients (``groups``, numbered 0..P-1) to folds and sites.

    Raises:
        PartitionError: for label-skew settings that cannot partition (see the partitioner).
        DataError: if a patient would land in two folds or two sites (a bug, never expected).
    """
    labels = patient_targets(images.groups, images.targets)
    patient_folds = assign_folds(labels, num_folds, np.random.default_rng([seed, FOLD_STREAM]))
    if num_sites == 1:
        patient_owner = np.zeros(labels.shape[0], dtype=np.int64)
        subsets: tuple[tuple[int, ...], ...] = (tuple(range(labels.shape[1])),)
    else:
        partition = partition_label_skew(
            labels, num_sites=num_sites, alpha=alpha, rho=rho, seed=seed
        )
        patient_owner = np.full(labels.shape[0], -1, dtype=np.int64)
        for site, members in enumerate(partition.site_indices):
            patient_owner[members] = site
        subsets = partition.class_subsets
        _adopt_unowned(patient_owner, labels, subsets, np.random.default_rng([seed, ADOPT_STREAM]))
    plan = FoldPlan(
        folds=patient_folds[images.groups],
        owners=patient_owner[images.groups],
        num_folds=num_folds,
        num_sites=num_sites,
        class_subsets=subsets,
    )
    for name, values in (("fold", plan.folds), ("site", plan.owners)):
        if any(np.unique(values[images.groups == g]).size != 1 for g in np.unique(images.groups)):
            raise DataError(
                f"a patient's images were given to two {name}s",
                remedy="report this as a clinfl bug",
            )
    return plan


@dataclass(frozen=True)
class FoldSplit:
    """Pool indices of one fold: each site's training and validation parts, and the test set."""

    fold: int
    site_train: tuple[np.ndarray, ...]
    site_val: tuple[np.ndarray, ...]
    test: np.ndarray


def evaluable(targets: np.ndarray) -> bool:
    """Whether some class has both positive and negative images (an AUC is defined)."""
    truth = targets.astype(bool)
    return bool(len(truth)) and bool((truth.any(axis=0) & (~truth).any(axis=0)).any())


def _evaluable_validation(
    train: np.ndarray,
    val: np.ndarray,
    groups: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Move whole patients from ``train`` to ``val`` until ``val`` can be scored.

    A site that trains alone selects its round on its own validation patients, which needs a
    finding with both outcomes among them; a small site's share may have none. Patients move
    in a seeded random order, and at least one stays in training.
    """
    if evaluable(targets[val]):
        return train, val
    for patient in rng.permutation(np.unique(groups[train]))[:-1]:
        moving = groups[train] == patient
        val, train = np.concatenate([val, train[moving]]), train[~moving]
        if evaluable(targets[val]):
            break
    return train, val


def split_fold(
    plan: FoldPlan,
    groups: np.ndarray,
    fold: int,
    *,
    val_fraction: float,
    seed: int,
    targets: np.ndarray | None = None,
) -> FoldSplit:
    """Return fold ``fold``'s parts (see the module docstring).

    With ``targets``, a site whose validation share holds no finding with both outcomes gets
    more of its own patients in it until it does (:func:`_evaluable_validation`), so that it
    can select a round when it trains alone.

    Raises:
        DataError: if a patient would be in training or validation and test (checked, not
            assumed).
    """
    test = np.flatnonzero(plan.folds == fold)
    trains, vals = [], []
    for site in range(plan.num_sites):
        own = np.flatnonzero((plan.folds != fold) & (plan.owners == site))
        rng = np.random.default_rng([seed, VALIDATION_STREAM, fold, site])
        train, val = split_by_group(groups[own], fraction=val_fraction, rng=rng)
        site_train, site_val = own[train], own[val]
        if targets is not None:
            site_train, site_val = _evaluable_validation(site_train, site_val, groups, targets, rng)
        trains.append(site_train)
        vals.append(site_val)
    split = FoldSplit(fold, tuple(trains), tuple(vals), test)
    check_split(split, groups)
    return split


def check_split(split: FoldSplit, groups: np.ndarray) -> None:
    """Refuse a split with a patient in two of: any site's training, any validation, test.

    Raises:
        DataError: naming how many patients are shared.
    """
    parts = [*split.site_train, *split.site_val, split.test]
    seen: set[int] = set()
    for part in parts:
        patients = {int(g) for g in np.unique(groups[part])}
        shared = seen & patients
        if shared:
            raise DataError(
                f"fold {split.fold + 1}: {len(shared)} patient(s) are in two parts of the split",
                remedy="report this as a clinfl bug",
            )
        seen |= patients


def _partition(
    images: ImageSet, sizes: list[int], subsets: tuple[tuple[int, ...], ...], dropped: int
) -> Partition:
    bounds = np.cumsum([0, *sizes])
    site_indices = tuple(np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes)))
    positive = images.targets.astype(bool)
    return Partition(
        site_indices=site_indices,
        class_subsets=subsets,
        counts=np.stack([images.targets[i].sum(axis=0) for i in site_indices]).astype(np.int64),
        samples=np.array(sizes, dtype=np.int64),
        no_label=np.array([int((~positive[i].any(axis=1)).sum()) for i in site_indices]),
        dropped=dropped,
    )


def fold_data(
    images: ImageSet, plan: FoldPlan, split: FoldSplit, *, site: int | None = None
) -> tuple[SplitData, Partition, np.ndarray]:
    """Return a fold's data for a run, its site partition, and the test images' pool indices.

    ``site=None``: the federation (every site's training part, the union of validation parts,
    every test image). ``site=s``: site ``s`` alone (local-only training), scored on its own
    held-out patients. Its run still scores the whole fold's test set (a site's own few
    held-out patients may hold no finding with both outcomes, on which its run could compute
    no test metric); the returned indices are its own test images, which come first in the
    run's test set.

    Raises:
        PartitionError: if a site has no training images, or validation is empty.
    """
    sites = range(plan.num_sites) if site is None else (site,)
    trains = [split.site_train[s] for s in sites]
    val = np.concatenate([split.site_val[s] for s in sites])
    test = split.test if site is None else split.test[plan.owners[split.test] == site]
    scored = test if site is None else np.concatenate([test, np.setdiff1d(split.test, test)])
    empty = [f"site-{s + 1}" for s, t in zip(sites, trains, strict=True) if t.size == 0]
    if empty or val.size == 0:
        raise PartitionError(
            f"fold {split.fold + 1}: {', '.join(empty) or 'validation'} received no images",
            remedy="use fewer --sites or --cv folds, a larger --rho or --alpha, or more data",
        )
    train_index = np.concatenate(trains)
    train = images.subset(train_index)
    in_training = np.isin(np.flatnonzero(plan.folds != split.fold), train_index)
    dropped = int((plan.owners[plan.folds != split.fold] < 0).sum()) if site is None else 0
    subsets = plan.class_subsets if site is None else (plan.class_subsets[site],)
    partition = _partition(train, [t.size for t in trains], subsets, dropped)
    who = "all sites" if site is None else f"site-{site + 1} alone"
    description = (
        f"fold {split.fold + 1} of {plan.num_folds} ({who}): {train_index.size} train / "
        f"{val.size} val / {test.size} test images; "
        f"{int(in_training.sum())} of {int((plan.folds != split.fold).sum())} non-test images train"
    )
    data = SplitData(train, images.subset(val), images.subset(scored), description)
    return data, partition, test
