"""Operating thresholds: chosen on validation only, by a rule; their F1 beside F1 at 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy_report import render_accuracy
from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.confidence import bootstrap_auc_intervals
from clinfl.config import FederationConfig, MethodConfig, RunConfig, validate_run_config
from clinfl.data.imageset import ImageSet
from clinfl.errors import ConfigError, ValidationError
from clinfl.federation.messages import EvaluationReport, RoundRecord
from clinfl.metrics import MultiLabelMetrics, binary_auc, f1_at_thresholds, multilabel_metrics
from clinfl.thresholds import (
    OperatingPoint,
    choose_thresholds,
    parse_rule,
    sensitivity_specificity,
)
from clinfl.transport.wire import decode, encode
from site_agent.evaluation import HeldOutEvaluator
from site_agent.selected_model import describe_selected_model

SPEC = ModelSpec(num_classes=3, image_size=16, federation_seed=7, init_seed=3)


def _random_case(seed: int, n: int = 60, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    scores = np.clip(0.3 * targets + rng.random((n, c)) * 0.7, 0, 1)
    return targets, np.round(scores, 2)  # rounding makes ties


def _brute_force(truth: np.ndarray, scores: np.ndarray, objective: str) -> float:
    best = -1.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = float((predicted & truth).sum())
        fp = float((predicted & ~truth).sum())
        fn = float((~predicted & truth).sum())
        if objective == "f1":
            value = 2 * tp / (2 * tp + fp + fn)
        else:
            value = tp / truth.sum() - fp / (~truth).sum()
        best = max(best, value)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_and_youden_thresholds_reach_the_best_value_on_validation(seed: int) -> None:
    targets, scores = _random_case(seed)
    truth = targets.astype(bool)
    for rule in ("f1", "youden"):
        chosen = choose_thresholds(targets, scores, parse_rule(rule))
        for k, t in enumerate(chosen.thresholds):
            predicted = scores[:, k] >= t
            tp = float((predicted & truth[:, k]).sum())
            fp = float((predicted & ~truth[:, k]).sum())
            fn = float((~predicted & truth[:, k]).sum())
            got = (
                2 * tp / (2 * tp + fp + fn)
                if rule == "f1"
                else tp / truth[:, k].sum() - fp / (~truth[:, k]).sum()
            )
            assert got == pytest.approx(_brute_force(truth[:, k], scores[:, k], rule))
            assert t not in scores[:, k] or t == scores[:, k].min()  # between two scores


def test_a_target_sensitivity_is_reached_with_the_highest_threshold() -> None:
    targets, scores = _random_case(7)
    chosen = choose_thresholds(targets, scores, parse_rule("sensitivity:0.8"))
    sensitivity, _ = sensitivity_specificity(targets, scores, np.array(chosen.thresholds))
    for k, value in enumerate(sensitivity):
        assert value is not None and value >= 0.8
        positives = scores[targets[:, k] == 1, k]
        lowest_kept = positives[positives >= chosen.thresholds[k]].min()
        assert (positives > lowest_kept).mean() < 0.8  # any higher cut misses the target


def test_a_class_without_validation_positive_keeps_half_and_is_flagged() -> None:
    targets, scores = _random_case(3)
    targets[:, 2] = 0
    chosen = choose_thresholds(targets, scores, parse_rule("f1"))
    assert chosen.thresholds[2] == 0.5 and chosen.flagged == (False, False, True, False)


@pytest.mark.parametrize("text", ["", "f2", "sensitivity", "sensitivity:0", "sensitivity:x"])
def test_unknown_rules_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown threshold rule"):
        parse_rule(text)
    config = RunConfig(federation=FederationConfig(threshold_rule=text))
    with pytest.raises(ValidationError, match="threshold_rule"):
        validate_run_config(config, known_methods=("fedncalign",))


def test_f1_at_half_everywhere_equals_the_metrics_f1() -> None:
    targets, scores = _random_case(11)
    metrics = multilabel_metrics(targets, scores)
    assert f1_at_thresholds(targets, scores, 0.5) == (metrics.macro_f1, metrics.micro_f1)


def _set(seed: int, n: int = 24) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    targets = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    targets[0], targets[1] = 1, 0
    return ImageSet(images, targets, np.arange(n), ("a", "b", "c"))


def test_thresholds_come_from_validation_and_never_from_test_labels() -> None:
    algorithm = create_algorithm(MethodConfig(name="fedncalign"))
    state = algorithm.initial_state(algorithm.build_model(SPEC))
    validation, test = _set(1), _set(2)
    flipped = ImageSet(test.images, 1 - test.targets, test.groups, test.class_names)
    first = HeldOutEvaluator(validation, test, algorithm, SPEC).evaluate(state).operating
    second = HeldOutEvaluator(validation, flipped, algorithm, SPEC).evaluate(state).operating
    assert first is not None and second is not None
    assert first.thresholds == second.thresholds  # test labels changed, thresholds did not
    assert (first.macro_f1, first.micro_f1) != (second.macro_f1, second.micro_f1)
    other = HeldOutEvaluator(_set(3), test, algorithm, SPEC).evaluate(state).operating
    assert other is not None and other.thresholds != first.thresholds  # validation decides
    summary = describe_selected_model(
        HeldOutEvaluator(validation, flipped, algorithm, SPEC), state, ("a", "b", "c"),
        resamples=50,
    )  # fmt: skip
    assert [c["threshold"] for c in summary["classes"].values()] == list(first.thresholds)
    assert summary["chosen_on"] == "validation"


def test_bootstrap_intervals_hold_the_auc_and_repeat_with_the_seed() -> None:
    targets, scores = _random_case(5, n=80)
    intervals = bootstrap_auc_intervals(targets, scores, resamples=200, seed=1)
    assert intervals == bootstrap_auc_intervals(targets, scores, resamples=200, seed=1)
    for k, interval in enumerate(intervals):
        auc = binary_auc(targets[:, k].astype(bool), scores[:, k])
        assert interval is not None and auc is not None and interval[0] <= auc <= interval[1]
    targets[:, 1] = 0
    assert bootstrap_auc_intervals(targets, scores, resamples=50)[1] is None


def test_the_operating_point_travels_and_is_recorded_beside_f1_at_half() -> None:
    metrics = MultiLabelMetrics(0.8, 0.7, 0.1, 0.2, (0.8, None))
    point = OperatingPoint("youden", (0.25, 0.5), (False, True), 0.4, 0.45)
    report = decode(encode(EvaluationReport(metrics, metrics, point)), EvaluationReport)
    assert report.operating == point
    old = decode(encode(EvaluationReport(metrics, metrics)), EvaluationReport)
    assert old.operating is None
    record = RoundRecord(1, EvaluationReport(metrics, metrics, point), 1.0, 3, 30, 0.5)
    row = record.to_json_dict()
    assert (row["macro_f1"], row["macro_f1_at_thresholds"]) == (0.1, 0.4)
    assert RoundRecord.from_full_json_dict(record.to_full_json_dict()) == record
    legacy = record.to_full_json_dict()
    del legacy["report"]["operating"]  # a control database written before thresholds
    assert RoundRecord.from_full_json_dict(legacy).report.operating is None


def _bench_run(method: str, seed: int, thresholded: bool) -> dict[str, object]:
    best: dict[str, object] = {
        "macro_auc": 0.8, "micro_auc": 0.8, "macro_f1": 0.0, "micro_f1": 0.1, "round": 2,
    }  # fmt: skip
    if thresholded:
        best |= {"macro_f1_at_thresholds": 0.42, "micro_f1_at_thresholds": 0.5}
    return {
        "key": f"digits/s1/{method}/{seed}", "dataset": "digits", "setting": "s1",
        "method": method, "seed": seed, "best": best,
    }  # fmt: skip


def test_the_benchmark_report_shows_thresholded_f1_when_the_results_carry_it() -> None:
    new = "\n".join(render_accuracy({"runs": [_bench_run("fedavg", 0, True)]}, {}))
    assert "macro-F1 @thr" in new and "| 42.00 ± 0.00 | 50.00 ± 0.00 |" in new
    old = "\n".join(render_accuracy({"runs": [_bench_run("fedavg", 0, False)]}, {}))
    assert "| macro-F1 @thr |" not in old and "| FedAvg | 1 | 80.00 ± 0.00 |" in old
    mixed = [_bench_run("fedavg", 0, True), _bench_run("fedavg", 1, False)]
    text = "\n".join(render_accuracy({"runs": mixed}, {}))
    assert "| 42.00 ± 0.00 (1 of 2 seeds) |" in text
