"""Evaluating the global model on held-out data kept where the data lives."""

from __future__ import annotations

import numpy as np
import torch

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.data.batching import ordered_batches, to_input_tensor
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import EvaluationReport
from clinfl.metrics import multilabel_metrics
from clinfl.model.diagnostics import ladm_diagnostics
from clinfl.thresholds import DEFAULT_RULE, ThresholdRule, operating_point, parse_rule
from clinfl.typing import StateDict
from site_agent.model_state import load_travelling_state

EVAL_BATCH = 256


class HeldOutEvaluator:
    """Holds validation and test sets and a local copy of the model (ETF derived locally).

    Each evaluation also chooses per-class operating thresholds on the validation set by
    ``threshold_rule`` and scores the test set at them; test labels never choose them.
    """

    def __init__(
        self,
        validation: ImageSet,
        test: ImageSet,
        algorithm: Algorithm,
        spec: ModelSpec,
        *,
        device: torch.device | None = None,
        threshold_rule: ThresholdRule | None = None,
    ) -> None:
        self.threshold_rule = threshold_rule or parse_rule(DEFAULT_RULE)
        self._device = torch.device("cpu") if device is None else device
        self._model = algorithm.build_model(spec).to(self._device)
        self._tau = algorithm.method.tau_rej
        self._sets = {
            "validation": (to_input_tensor(validation.images), validation.targets),
            "test": (to_input_tensor(test.images), test.targets),
        }

    def probabilities(self, global_state: StateDict, split: str) -> np.ndarray:
        """Return the global model's sigmoid outputs on ``split`` (``validation`` or ``test``)."""
        load_travelling_state(self._model, global_state)
        return self._predict(split)

    def _predict(self, split: str) -> np.ndarray:
        self._model.eval()
        inputs, _ = self._sets[split]
        outputs = []
        with torch.inference_mode():
            for window in ordered_batches(inputs.shape[0], batch_size=EVAL_BATCH):
                logits = self._model(inputs[window].to(self._device)).logits
                outputs.append(torch.sigmoid(logits).cpu())
        return torch.cat(outputs).numpy().astype(np.float64)

    def targets(self, split: str) -> np.ndarray:
        """Return the multi-hot labels of ``split`` (``validation`` or ``test``)."""
        return self._sets[split][1]

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Return validation and test metrics of the global model (loaded once).

        The report's operating point holds thresholds chosen on validation only; its model
        diagnostics (LADM models only) are measured on validation images.
        """
        load_travelling_state(self._model, global_state)
        val_probs, test_probs = self._predict("validation"), self._predict("test")
        val_targets, test_targets = self.targets("validation"), self.targets("test")
        images, labels = self._sets["validation"]
        diagnostics = ladm_diagnostics(
            self._model,
            images[:EVAL_BATCH].to(self._device),
            torch.as_tensor(labels[:EVAL_BATCH]),
            tau=self._tau,
        )
        return EvaluationReport(
            model_diagnostics=None if diagnostics is None else diagnostics.to_json_dict(),
            validation=multilabel_metrics(val_targets, val_probs),
            test=multilabel_metrics(test_targets, test_probs),
            operating=operating_point(
                val_targets, val_probs, test_targets, test_probs, self.threshold_rule
            ),
        )
