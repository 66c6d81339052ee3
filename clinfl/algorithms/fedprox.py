"""FedProx: FedAvg plus the proximal term (mu/2)·||w - w_global||² in the local loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clinfl.algorithms.fedavg import FedAvg
from clinfl.algorithms.registry import register_algorithm


@register_algorithm
class FedProx(FedAvg):
    """Li et al. 2020: the local objective is pulled towards the round's global weights."""

    name = "fedprox"
    summary = "FedProx: FedAvg + (mu/2)||w - w_global||^2 (--prox-mu)"

    def regulariser(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """Return ``(mu/2) * sum ||w - w_global||^2`` over the trainable parameters."""
        mu = self.method.prox_mu
        if mu == 0:
            return None
        terms = [
            (param - global_state[name]).pow(2).sum()
            for name, param in model.named_parameters()
            if param.requires_grad and name in global_state
        ]
        return 0.5 * mu * torch.stack(terms).sum()
