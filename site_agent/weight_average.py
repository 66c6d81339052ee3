"""Parameter averaging over one round's local steps: an exponential moving average (EMA).

With ``federation.ema_decay = d`` a site keeps, during a round, ``a_0 = w_global`` and after
every local step ``t`` ``a_t = d * a_{t-1} + (1 - d) * w_t`` over its trainable parameters; the
update it sends is ``a_T - w_global`` instead of ``w_T - w_global``. The average is computed from
the parameters alone, after DP-SGD's noise, so it is post-processing and costs no privacy. Its
horizon is about ``1 / (1 - d)`` steps: a decay whose horizon is longer than a round's steps
keeps the update close to zero (the average starts at the global model every round).
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's trainable parameters, from their values now."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        """Start the average at ``model``'s current trainable parameters.

        Raises:
            ValueError: if ``decay`` is not strictly between 0 and 1.
        """
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must be in (0, 1), not {decay}")
        self._decay = decay
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._average = [p.detach().clone() for p in self._params]

    def update(self) -> None:
        """Fold the parameters' current values in: ``a = d * a + (1 - d) * w``."""
        with torch.no_grad():
            for average, param in zip(self._average, self._params, strict=True):
                average.mul_(self._decay).add_(param.detach(), alpha=1.0 - self._decay)

    def apply(self) -> None:
        """Write the average into the model's parameters (the round's local model)."""
        with torch.no_grad():
            for average, param in zip(self._average, self._params, strict=True):
                param.copy_(average)
