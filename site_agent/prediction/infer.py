"""Probabilities and positive findings of a model on uint8 images, as the evaluator computes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from clinfl.data.batching import ordered_batches, to_input_tensor
from site_agent.evaluation import EVAL_BATCH

Progress = Callable[[str, int, int], None]


def probabilities(
    model: nn.Module,
    images: np.ndarray,
    *,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Return the sigmoid outputs ``[N, C]`` (float64) of ``model`` on ``[N, H, W]`` uint8 images.

    Batches, normalisation and dtype are those of
    :class:`~site_agent.evaluation.HeldOutEvaluator`, so the same images give the same numbers.
    """
    device = device or torch.device("cpu")
    inputs = to_input_tensor(images)
    outputs = []
    model.eval()
    with torch.inference_mode():
        for window in ordered_batches(inputs.shape[0], batch_size=EVAL_BATCH):
            logits = model(inputs[window].to(device)).logits
            outputs.append(torch.sigmoid(logits).cpu())
            if progress is not None:
                progress("predicting", window.stop, inputs.shape[0])
    if not outputs:
        return np.zeros((0, 0), dtype=np.float64)
    return torch.cat(outputs).numpy().astype(np.float64)


def positive_findings(
    probs: np.ndarray, thresholds: tuple[float, ...], class_names: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """Return each image's findings at or above their operating threshold, in class order."""
    above = probs >= np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    return [tuple(name for name, hit in zip(class_names, row, strict=True) if hit) for row in above]
