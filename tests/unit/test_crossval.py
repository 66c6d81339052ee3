"""Patient-grouped cross-validation: folds, site ownership, pooled metrics, baselines, pairing."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clinfl.config import DataConfig, FederationConfig, RunConfig, validate_run_config
from clinfl.crossval.baselines import age_scores, fit_logistic
from clinfl.crossval.bootstrap import Estimate, patient_weights, weighted_aucs
from clinfl.crossval.compare import compare_predictions
from clinfl.crossval.folds import FoldSplit, check_split, fold_data, plan_folds, split_fold
from clinfl.crossval.pool import CvPool, _group_column
from clinfl.crossval.predictions import OofPredictions
from clinfl.crossval.runner import _parts
from clinfl.crossval.scoring import (
    ABNORMAL,
    ALL_CLASSES,
    CLASS_PREFIX,
    LEARNABLE,
    learnable_classes,
    positive_patients,
    summarize,
)
from clinfl.data.chestxray14 import CXR14_SPACE, read_label_table
from clinfl.data.imageset import ImageSet
from clinfl.data.label_table import table_targets
from clinfl.data.labels import CXR14_LABELS
from clinfl.errors import DataError, ValidationError
from clinfl.metrics import binary_auc
from tests.conftest import shared_path

KNOWN = ("fedncalign", "fedavg")


def _table(patients: int = 24, seed: int = 0) -> ImageSet:
    """Patients with 1-4 images each and 4 classes; a patient's images share some labels."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(patients), rng.integers(1, 5, size=patients))
    base = rng.random((patients, 4)) < 0.35
    targets = (base[groups] & (rng.random((groups.size, 4)) < 0.8)).astype(np.uint8)
    images = np.zeros((groups.size, 2, 2), dtype=np.uint8)
    return ImageSet(images, targets, groups.astype(np.int64), ("a", "b", "c", "d"))


def test_no_patient_in_two_folds_and_folds_balanced() -> None:
    table = _table()
    plan = plan_folds(table, num_folds=4, num_sites=3, alpha=0.5, rho=0.5, seed=3)
    for g in np.unique(table.groups):
        assert np.unique(plan.folds[table.groups == g]).size == 1
        assert np.unique(plan.owners[table.groups == g]).size == 1
    per_fold = [np.unique(table.groups[plan.folds == k]).size for k in range(4)]
    assert per_fold == [6, 6, 6, 6]  # 24 patients over 4 folds
    assert (plan.owners >= 0).all()  # every patient trains at some site


def test_site_ownership_does_not_depend_on_folds() -> None:
    table = _table()
    three = plan_folds(table, num_folds=3, num_sites=3, alpha=0.5, rho=0.5, seed=3)
    five = plan_folds(table, num_folds=5, num_sites=3, alpha=0.5, rho=0.5, seed=3)
    assert np.array_equal(three.owners, five.owners)
    other_sites = plan_folds(table, num_folds=3, num_sites=2, alpha=0.5, rho=1.0, seed=3)
    assert np.array_equal(three.folds, other_sites.folds)  # folds do not follow the sites
    central = plan_folds(table, num_folds=3, num_sites=1, alpha=0.5, rho=0.5, seed=3)
    assert np.array_equal(central.folds, three.folds) and (central.owners == 0).all()


def test_fold_split_keeps_test_patients_out_of_training() -> None:
    table = _table()
    plan = plan_folds(table, num_folds=3, num_sites=3, alpha=0.5, rho=0.5, seed=1)
    for fold in range(3):
        split = split_fold(plan, table.groups, fold, val_fraction=0.2, seed=1)
        train = np.concatenate([*split.site_train, *split.site_val])
        assert set(table.groups[train]).isdisjoint(set(table.groups[split.test]))
        assert np.array_equal(np.sort(np.concatenate([train, split.test])), np.arange(len(table)))
        for site, part in enumerate(split.site_train):  # each site trains on its own patients
            assert (plan.owners[part] == site).all()
        data, partition, test = fold_data(table, plan, split)
        assert len(data.test) == test.size == (plan.folds == fold).sum()
        assert int(partition.samples.sum()) == len(data.train)
        alone, _, own_test = fold_data(table, plan, split, site=0)
        assert (plan.owners[own_test] == 0).all()
        # the site's run scores the whole fold's test set, its own images first
        assert len(alone.test) == split.test.size
        assert np.array_equal(alone.test.groups[: own_test.size], table.groups[own_test])


def test_split_check_refuses_a_shared_patient() -> None:
    groups = np.array([0, 0, 1, 2])
    bad = FoldSplit(0, (np.array([0]),), (np.array([2]),), np.array([1, 3]))
    check_split(replace(bad, test=np.array([3])), groups)  # disjoint: accepted
    with pytest.raises(DataError, match="two parts"):
        check_split(FoldSplit(0, (np.array([0]),), (np.array([2]),), np.array([1])), groups)


def test_weighted_auc_known_answers() -> None:
    truth = np.array([True, True, False, False])
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    assert weighted_aucs(truth, scores, np.ones((1, 4)))[0] == pytest.approx(0.75)
    # positive 0.9 counted twice: (2 * 2 + 1 * 1) / (3 * 2)
    assert weighted_aucs(truth, scores, np.array([[2.0, 1, 1, 1]]))[0] == pytest.approx(5 / 6)
    ties = np.array([0.5, 0.5, 0.5, 0.1])
    assert weighted_aucs(truth, ties, np.ones((1, 4)))[0] == pytest.approx(0.75)  # (1 + .5)/2
    assert np.isnan(weighted_aucs(truth, scores, np.array([[1.0, 1, 0, 0]]))[0])
    rng = np.random.default_rng(0)
    t, s = rng.random(200) < 0.3, np.round(rng.random(200), 1)
    assert weighted_aucs(t, s, np.ones((1, 200)))[0] == pytest.approx(binary_auc(t, s))


def test_patient_weights_resample_whole_patients() -> None:
    patients = np.array(["p", "p", "q", "r", "r", "r"])
    weights = patient_weights(patients, draws=50, seed=0)
    assert weights.shape == (50, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    assert np.allclose(weights[:, [0, 2, 3]].sum(axis=1), 3)  # three patients drawn each time


def test_pooled_metrics_known_answers() -> None:
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.uint8)
    scores = np.array([[0.9, 0.2], [0.4, 0.8], [0.5, 0.7], [0.1, 0.3]])
    patients = np.array(["a", "b", "c", "d"])
    result = summarize(targets, scores, patients, class_names=("x", "y"), learnable=(0,), draws=200)
    assert result[CLASS_PREFIX + "x"].value == pytest.approx(0.75)
    assert result[CLASS_PREFIX + "y"].value == pytest.approx(1.0)
    assert result[LEARNABLE].value == pytest.approx(0.75)
    assert result[ALL_CLASSES].value == pytest.approx(0.875)
    # abnormal: max scores 0.9, 0.8, 0.7 (abnormal) vs 0.3 (normal) -> 1.0
    assert result[ABNORMAL].value == pytest.approx(1.0)


def test_bootstrap_interval_contains_estimate_and_narrows() -> None:
    def width(patients: int) -> Estimate:
        rng = np.random.default_rng(1)
        groups = np.repeat(np.arange(patients), 3)
        truth = np.repeat(rng.random(patients) < 0.4, 3)
        scores = truth + rng.normal(0, 1.2, groups.size)
        return summarize(
            truth[:, None].astype(np.uint8),
            scores[:, None],
            groups,
            class_names=("x",),
            learnable=(0,),
            draws=400,
        )[LEARNABLE]

    small, large = width(30), width(600)
    for e in (small, large):
        assert e.low is not None and e.high is not None and e.value is not None
        assert e.low <= e.value <= e.high
    assert small.low is not None and small.high is not None
    assert large.low is not None and large.high is not None
    assert large.high - large.low < 0.5 * (small.high - small.low)


def test_learnable_classes_count_patients_not_images() -> None:
    patients = np.repeat(np.arange(30), 2)
    targets = np.zeros((60, 3), dtype=np.uint8)
    targets[:40, 0] = 1  # 20 patients, 40 images: learnable
    targets[:38, 1] = 1  # 19 patients: not
    targets[:30, 2] = 1
    targets[0, 2] = 1  # 15 patients with 30 images
    assert positive_patients(targets, patients).tolist() == [20, 19, 15]
    assert learnable_classes(targets, patients) == (0,)


def test_learnable_classes_on_nih1000() -> None:
    path = shared_path("nih1000", "labels.csv")
    header, rows = read_label_table(path)
    targets = table_targets(header, rows, CXR14_SPACE, source=path.name)
    patients = np.array([row["Patient ID"] for row in rows])
    names = {CXR14_LABELS[k] for k in learnable_classes(targets, patients)}
    expected = {"Infiltration", "Effusion", "Atelectasis", "Nodule", "Cardiomegaly", "Fibrosis"}
    assert names == expected


def test_age_baseline_is_fitted_on_training_folds_only() -> None:
    # fold 0: the old are positive; fold 1: the young. Fitting on the other fold predicts the
    # opposite of each fold's truth, so out-of-fold AUC is 0 (it would be 1 from test labels).
    ages = np.array([20, 30, 70, 80, 20, 30, 70, 80], dtype=np.float64)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    truth = np.array([0, 0, 1, 1, 1, 1, 0, 0], dtype=np.uint8)[:, None]
    per_class, abnormal = age_scores(ages, truth, folds)
    assert binary_auc(truth[:4, 0], per_class[:4, 0]) == 0.0
    assert binary_auc(truth[4:, 0], per_class[4:, 0]) == 0.0
    assert binary_auc(truth[:4, 0], abnormal[:4]) == 0.0
    _, slope = fit_logistic(np.array([-1.0, -0.5, 0.5, 1.0]), np.array([0, 0, 1, 1.0]))
    assert slope > 0


def _oof(scores: np.ndarray, sites: np.ndarray, folds: np.ndarray | None = None) -> OofPredictions:
    rng = np.random.default_rng(5)
    n = scores.shape[0]
    patients = np.repeat(np.arange(n // 2), 2).astype(str)
    targets = (rng.random((n, 2)) < 0.4).astype(np.uint8)
    folds = np.repeat(np.arange(n // 2) % 2, 2) if folds is None else folds
    return OofPredictions(
        ids=np.arange(n).astype(str),
        patients=patients,
        sites=sites,
        folds=folds,
        scores=scores,
        targets=targets,
        class_names=("x", "y"),
    )


def test_compare_pairs_runs_and_refuses_other_folds(tmp_path: object) -> None:
    rng = np.random.default_rng(2)
    sites = np.repeat(np.arange(40) % 2, 2)
    a = _oof(rng.random((80, 2)), sites)
    same = compare_predictions(a, a, draws=100)
    assert same.overall[ALL_CLASSES].value == 0.0
    assert same.overall[ALL_CLASSES].low == same.overall[ALL_CLASSES].high == 0.0
    assert set(same.per_site) == {"site-1", "site-2"}
    better = replace(a, scores=a.scores + 0.5 * a.targets)
    gain = compare_predictions(better, a, draws=200)
    assert gain.overall[ALL_CLASSES].low is not None and gain.overall[ALL_CLASSES].low > 0
    central = replace(a, sites=np.zeros(80, dtype=np.int64))
    assert set(compare_predictions(central, a, draws=50).per_site) == {"site-1", "site-2"}
    other_folds = replace(a, folds=1 - a.folds)
    with pytest.raises(DataError, match="do not share their folds"):
        compare_predictions(a, other_folds)


def test_predictions_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    scores = np.random.default_rng(0).random((6, 2))
    scores[0] = np.nan
    oof = replace(_oof(scores, np.zeros(6, dtype=np.int64)), ages=np.arange(6.0))
    oof.save(tmp_path / "oof.npz")
    back = OofPredictions.load(tmp_path / "oof.npz")
    assert back.plan_digest() == oof.plan_digest()
    assert back.scored.tolist() == [False, True, True, True, True, True]
    assert back.ages is not None and back.ages.tolist() == list(range(6))


def test_config_validation_of_cross_validation() -> None:
    bad = RunConfig(
        data=DataConfig(cv_folds=1),
        federation=FederationConfig(training="local"),
    )
    with pytest.raises(ValidationError, match="cv_folds=1"):
        validate_run_config(bad, known_methods=KNOWN)
    with pytest.raises(ValidationError, match="training='local'"):
        validate_run_config(
            RunConfig(federation=FederationConfig(training="local")), known_methods=KNOWN
        )
    with pytest.raises(ValidationError, match="group_by='Patient'"):
        validate_run_config(RunConfig(data=DataConfig(group_by="Patient")), known_methods=KNOWN)
    config = RunConfig(data=DataConfig(cv_folds=5, group_by="Patient"))
    with pytest.raises(ValidationError, match=r"group_by='Patient'.*Patient ID"):
        _group_column(config, ["path", "Patient ID", "Age"])
    assert _group_column(replace(config, data=DataConfig(cv_folds=5)), ["Patient ID"]) == (
        "Patient ID"
    )


def test_report_gives_per_fold_values_beside_pooled() -> None:
    from clinfl.crossval.report import cv_report, report_markdown

    # within each fold the scores rank perfectly, but fold 1's scores sit below fold 0's:
    # per-fold AUC is 1, pooled is lower
    truth = np.array([[0], [1], [0], [1], [0], [1], [0], [1]], dtype=np.uint8)
    scores = np.array([[0.6], [0.9], [0.6], [0.9], [0.1], [0.4], [0.1], [0.4]])
    oof = OofPredictions(
        ids=np.arange(8).astype(str),
        patients=np.arange(8).astype(str),
        sites=np.zeros(8, dtype=np.int64),
        folds=np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        scores=scores,
        targets=truth,
        class_names=("x",),
    )
    report = cv_report(oof, protocol={"folds": 2}, draws=50)
    assert report["per_fold_mean"]["all_class_macro_auc"] == 1.0
    # pooled: positives 0.9, 0.9, 0.4, 0.4 vs negatives 0.6, 0.6, 0.1, 0.1 -> 12/16
    assert report["rows"]["model"]["all_class_macro_auc"]["value"] == 0.75
    assert "per-fold" in report_markdown(report)


def test_a_sites_validation_grows_until_it_can_be_scored() -> None:
    # one site, 12 patients of 2 images; only patients 9 and 10 hold a positive. A 10%
    # validation share (one patient) is then rarely scorable on its own.
    patients = np.repeat(np.arange(12), 2)
    targets = np.zeros((24, 2), dtype=np.uint8)
    targets[patients == 9, 0] = 1
    targets[patients == 10, 1] = 1
    table = ImageSet(np.zeros((24, 2, 2), np.uint8), targets, patients, ("a", "b"))
    plan = plan_folds(table, num_folds=3, num_sites=1, alpha=0.5, rho=1.0, seed=0)
    grown = 0
    for fold in range(3):
        for seed in range(6):
            plain = split_fold(plan, table.groups, fold, val_fraction=0.1, seed=seed)
            split = split_fold(
                plan, table.groups, fold, val_fraction=0.1, seed=seed, targets=targets
            )
            check_split(split, table.groups)
            (val,), (train,) = split.site_val, split.site_train
            truth = targets[val].astype(bool)
            in_training = targets[np.concatenate([train, val])].astype(bool)
            if (in_training.any(axis=0) & (~in_training).any(axis=0)).any():
                assert (truth.any(axis=0) & (~truth).any(axis=0)).any()  # now scorable
            assert train.size > 0
            # whole patients moved from training to validation, nothing else changed
            assert set(np.concatenate([train, val])) == set(
                np.concatenate([plain.site_train[0], plain.site_val[0]])
            )
            assert set(plain.site_val[0]) <= set(val)
            grown += val.size > plain.site_val[0].size
    assert grown > 0  # the case arose


def test_a_site_with_nothing_to_learn_alone_is_scored_as_no_skill(tmp_path: Path) -> None:
    table = _table(patients=30, seed=2)
    plan = plan_folds(table, num_folds=2, num_sites=2, alpha=0.5, rho=1.0, seed=0)
    normal = ~table.targets.astype(bool).any(axis=1)
    patients_normal = np.array([normal[table.groups == g].all() for g in table.groups])
    # site 2 owns exactly the patients with no finding at all: alone it has nothing to learn
    owners = np.where(patients_normal, 1, 0)
    plan = dataclasses.replace(plan, owners=owners)
    pool = CvPool(table, tuple(map(str, range(len(table)))), tuple(map(str, table.groups)),
                  None, "patient", "synthetic")  # fmt: skip
    config = RunConfig(
        data=DataConfig(cv_folds=2),
        federation=FederationConfig(sites=2, training="local"),
    )
    unlearnable: list[str] = []
    constant: list[np.ndarray] = []
    parts = _parts(config, pool, plan, tmp_path, unlearnable, constant)
    assert unlearnable == ["fold 1 site-2", "fold 2 site-2"]
    assert all(part.label.endswith("site-1") for part in parts) and len(parts) == 2
    assert np.array_equal(np.sort(np.concatenate(constant)), np.flatnonzero(owners == 1))
