"""What the selected global model does on held-out data: thresholds, their test behaviour, CIs.

Computed where the validation and test data live. Thresholds come from the validation set only;
the test set is then scored at them (sensitivity and specificity per class) and its per-class
ROC-AUC gets a bootstrap 95% confidence interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clinfl.confidence import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_auc_intervals
from clinfl.thresholds import choose_thresholds, sensitivity_specificity
from clinfl.typing import StateDict
from site_agent.evaluation import HeldOutEvaluator


def describe_selected_model(
    evaluator: HeldOutEvaluator,
    state: StateDict,
    class_names: tuple[str, ...],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """Return the selected model's operating thresholds and test behaviour as JSON types.

    Keys: ``rule``, ``chosen_on`` (always ``validation``), ``classes`` (per class: threshold,
    flagged when validation had no positive, test sensitivity and specificity at the threshold,
    test AUC and its bootstrap interval), ``bootstrap`` (resamples, level, seed).

    Raises:
        FederationError: if ``state`` does not fit the evaluator's model.
    """
    rule = evaluator.threshold_rule
    val_probs = evaluator.probabilities(state, "validation")
    chosen = choose_thresholds(evaluator.targets("validation"), val_probs, rule)
    test_targets = evaluator.targets("test")
    test_probs = evaluator.probabilities(state, "test")
    thresholds = np.asarray(chosen.thresholds)
    sensitivity, specificity = sensitivity_specificity(test_targets, test_probs, thresholds)
    intervals = bootstrap_auc_intervals(test_targets, test_probs, resamples=resamples, seed=seed)
    classes = {
        name: {
            "threshold": chosen.thresholds[k],
            "flagged": chosen.flagged[k],
            "validation_positives": int(evaluator.targets("validation")[:, k].sum()),
            "test_sensitivity": sensitivity[k],
            "test_specificity": specificity[k],
            "test_auc_ci": None if intervals[k] is None else list(intervals[k]),  # type: ignore[arg-type]
        }
        for k, name in enumerate(class_names)
    }
    return {
        "rule": rule.text,
        "chosen_on": "validation",
        "classes": classes,
        "bootstrap": {"resamples": resamples, "level": DEFAULT_LEVEL, "seed": seed},
    }
