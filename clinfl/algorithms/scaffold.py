"""SCAFFOLD: FedAvg with control variates that correct each site's drift.

Karimireddy et al. 2020. The global state carries the server variate ``c`` (one tensor per
trainable parameter, under ``aux/scaffold/c/``); each site keeps its own ``c_i``. Every local
step uses the gradient ``g - c_i + c``. After training the site sets ``c_i+`` to the mean of its
uncorrected gradients ``g`` over the round's steps and sends ``c_i+ - c_i`` with its model
update, so the coordinator's weighted mean moves ``c`` to the mean of the ``c_i`` (full
participation). With plain SGD this is exactly the paper's option II,
``c_i+ = c_i - c + (w_global - w_local) / (K * lr)``; written in gradient units it stays right
under AdamW, whose steps are not ``lr * g``. The variates travel multiplied by
:data:`VARIATE_SCALE`, so that a site's change stays inside the secure-aggregation clip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clinfl.algorithms.base import AUX_PREFIX, RoundContext, SiteMemory, zeros_per_trainable
from clinfl.algorithms.fedavg import FedAvg
from clinfl.algorithms.registry import register_algorithm
from clinfl.typing import StateDict

VARIATE_PREFIX = f"{AUX_PREFIX}scaffold/c/"
GRADIENT_SUM_PREFIX = "scaffold/gradient-sum/"
VARIATE_SCALE = 1.0 / 16.0
"""Travelling variates are ``c * VARIATE_SCALE``, so gradients up to 4 in size keep a site's
change within the 0.5 clip."""


def variate_key(parameter: str) -> str:
    """Return the global-state key of a parameter's control variate."""
    return VARIATE_PREFIX + parameter


@register_algorithm
class Scaffold(FedAvg):
    """SCAFFOLD on FedAvg's network (linear head, BCE)."""

    name = "scaffold"
    summary = "SCAFFOLD: FedAvg + control variates (local step uses g - c_i + c)"
    dp_incompatibility = (
        "its control variate is built from the round's gradients before DP noise is added"
    )

    def initial_state(self, model: nn.Module) -> StateDict:
        """The model's travelling tensors plus a zero server variate per trainable parameter."""
        return self.travelling_state(model) | zeros_per_trainable(model, VARIATE_PREFIX)

    @staticmethod
    def _correction(
        name: str, global_state: Mapping[str, torch.Tensor], memory: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        key = variate_key(name)
        if key not in global_state:
            return None
        correction = global_state[key] / VARIATE_SCALE
        return correction - memory[key] if key in memory else correction

    def regulariser(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """Return ``sum <w, c - c_i>``, whose gradient is the correction ``c - c_i``."""
        terms = []
        for name, param in model.named_parameters():
            correction = self._correction(name, global_state, memory)
            if param.requires_grad and correction is not None:
                terms.append((param * correction.detach()).sum())
        return torch.stack(terms).sum() if terms else None

    def after_step(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
    ) -> None:
        """Add the step's uncorrected gradient ``g`` to the round's running sum."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                correction = self._correction(name, global_state, memory)
                if param.grad is None or correction is None:
                    continue
                key = GRADIENT_SUM_PREFIX + name
                raw = param.grad - correction
                memory[key] = memory[key] + raw if key in memory else raw.clone()

    def auxiliary_update(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
        context: RoundContext,
    ) -> StateDict:
        """Set ``c_i`` to the round's mean gradient and return its change (scaled)."""
        changes: StateDict = {}
        for name, _ in model.named_parameters():
            key, total = variate_key(name), memory.pop(GRADIENT_SUM_PREFIX + name, None)
            if key not in global_state or total is None or context.steps == 0:
                continue
            own = memory.get(key, torch.zeros_like(total))
            updated = total / context.steps
            memory[key] = updated
            changes[key] = (updated - own) * VARIATE_SCALE
        return changes
