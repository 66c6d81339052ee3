"""Evaluating the global model on held-out data kept where the data lives."""

from __future__ import annotations

import numpy as np
import torch

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.data.batching import ordered_batches, to_input_tensor
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import EvaluationReport
from clinfl.metrics import MultiLabelMetrics, multilabel_metrics
from clinfl.typing import StateDict
from site_agent.model_state import load_travelling_state

EVAL_BATCH = 256


class HeldOutEvaluator:
    """Holds validation and test sets and a local copy of the model (ETF derived locally)."""

    def __init__(
        self,
        validation: ImageSet,
        test: ImageSet,
        algorithm: Algorithm,
        spec: ModelSpec,
        *,
        device: torch.device | None = None,
    ) -> None:
        self._device = torch.device("cpu") if device is None else device
        self._model = algorithm.build_model(spec).to(self._device)
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

    def _metrics(self, split: str) -> MultiLabelMetrics:
        return multilabel_metrics(self._sets[split][1], self._predict(split))

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Return validation and test metrics of the global model (loaded once)."""
        load_travelling_state(self._model, global_state)
        return EvaluationReport(validation=self._metrics("validation"), test=self._metrics("test"))
