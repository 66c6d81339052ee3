"""FedCurv: FedAvg plus an EWC penalty that keeps the weights where the other sites' data need them.

Shoham et al. 2019. After local training each site estimates the diagonal Fisher information
``F_i`` of its loss at its trained weights ``w_i`` (normalised by its largest entry) and sends
``F_i`` and ``F_i * w_i`` with its update; the coordinator's weighted means ``u = mean F`` and
``v = mean F * w`` travel under ``aux/fedcurv/``. The local loss adds
``(lambda / 2) * sum(u * w**2 - 2 * v * w)``, which is ``(lambda / 2) * sum_j F_j (w - w_j)**2``
up to a constant and is smallest at the Fisher-weighted mean ``w = v / u``.

The sums include the site's own term (the coordinator sends means, not per-site terms). The
Fisher estimate reads local data after training, which DP-SGD does not cover, so a site whose
policy requires DP refuses FedCurv.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clinfl.algorithms.base import AUX_PREFIX, RoundContext, SiteMemory, zeros_per_trainable
from clinfl.algorithms.fedavg import FedAvg
from clinfl.algorithms.registry import register_algorithm
from clinfl.config.presets import or_library_default
from clinfl.typing import StateDict

FISHER_PREFIX = f"{AUX_PREFIX}fedcurv/u/"
WEIGHTED_PREFIX = f"{AUX_PREFIX}fedcurv/v/"
TRAVEL_SCALE = 1.0 / 8.0
"""``u`` and ``v`` travel multiplied by this, so a site's change stays within the 0.5 clip."""
FISHER_BATCHES = 8


@register_algorithm
class FedCurv(FedAvg):
    """FedCurv on FedAvg's network (linear head, BCE); ``--fedcurv-lambda`` sets lambda."""

    name = "fedcurv"
    summary = "FedCurv: FedAvg + EWC penalty from the summed Fisher information (--fedcurv-lambda)"
    dp_incompatibility = (
        "its Fisher information reads the site's data after training, outside DP-SGD"
    )

    def initial_state(self, model: nn.Module) -> StateDict:
        """The travelling tensors plus zero Fisher sums (no penalty in the first round)."""
        return (
            self.travelling_state(model)
            | zeros_per_trainable(model, FISHER_PREFIX)
            | zeros_per_trainable(model, WEIGHTED_PREFIX)
        )

    def regulariser(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """Return ``(lambda / 2) * sum(u * w**2 - 2 * v * w)`` over the trainable parameters."""
        strength = or_library_default(self.method.fedcurv_lambda, "method.fedcurv_lambda")
        if strength == 0:
            return None
        terms = []
        for name, param in model.named_parameters():
            if not param.requires_grad or FISHER_PREFIX + name not in global_state:
                continue
            fisher = global_state[FISHER_PREFIX + name] / TRAVEL_SCALE
            weighted = global_state[WEIGHTED_PREFIX + name] / TRAVEL_SCALE
            terms.append((fisher * param.pow(2) - 2 * weighted * param).sum())
        return 0.5 * strength * torch.stack(terms).sum() if terms else None

    def fisher_diagonal(self, model: nn.Module, context: RoundContext) -> StateDict:
        """Return the empirical Fisher diagonal (mean squared batch gradient), max-normalised."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        totals = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = model.training
        model.eval()
        for batches, (images, targets) in enumerate(context.batches(), start=1):
            loss = self.per_sample_loss(model(images), targets).mean()
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads, strict=True):
                if grad is not None:
                    totals[name] += grad.detach().pow(2)
            if batches == FISHER_BATCHES:
                break
        model.train(was_training)
        largest = max((float(t.max()) for t in totals.values()), default=0.0)
        scale = 1.0 / largest if largest > 0 else 0.0
        return {name: total * scale for name, total in totals.items()}

    def auxiliary_update(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
        context: RoundContext,
    ) -> StateDict:
        """Return the change that moves the global ``u``, ``v`` to this site's ``F``, ``F * w``."""
        changes: StateDict = {}
        fisher = self.fisher_diagonal(model, context)
        weights = dict(model.named_parameters())
        for name, value in fisher.items():
            new_u = value * TRAVEL_SCALE
            new_v = value * weights[name].detach() * TRAVEL_SCALE
            changes[FISHER_PREFIX + name] = new_u - global_state[FISHER_PREFIX + name]
            changes[WEIGHTED_PREFIX + name] = new_v - global_state[WEIGHTED_PREFIX + name]
        return changes
