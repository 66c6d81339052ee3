"""The FedNCAlign-ML local loss, computed per sample (then averaged by the caller).

``L = sum_k BCE(logit_k, y_k) + lambda_rej * L_rej + lambda_con * L_con`` (METHOD.md section 3).
Everything is vectorised over ``[B, C]``; no term is normalised over the batch, so one sample's
gradient never depends on its batchmates (a requirement of DP-SGD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossTerms:
    """Per-sample loss terms, each of shape ``[B]``; ``total`` is their weighted sum."""

    bce: torch.Tensor
    rejection: torch.Tensor
    contrastive: torch.Tensor
    total: torch.Tensor


def bce_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return ``sum_k BCE(logit_k, y_k)`` for each sample: ``[B, C] -> [B]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


def rejection_per_sample(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    *,
    tau: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative-feature rejection: ``sum_{k: y_k=0} max(0, sigmoid(max_j logit_j(f_k)) - tau)``.

    ``logit_j(f) = <f, w_j> (+ b_j)``: the classifier applied to class feature ``f_k``.
    ``features`` is ``[B, C, d]``, ``prototypes`` ``[C, d]``, ``targets`` ``[B, C]`` in {0, 1},
    ``bias`` ``[C]``, ``[B, C]`` (per sample) or None.
    """
    strongest = torch.sigmoid(strongest_logit(features, prototypes, bias))  # [B, C]
    return (F.relu(strongest - tau) * (1.0 - targets)).sum(dim=1)


def strongest_logit(
    features: torch.Tensor, prototypes: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Return ``max_j logit_j(f_k)`` for every class feature: ``[B, C, d] -> [B, C]``.

    ``logit_j(f) = <f, w_j> (+ b_j)``: the classifier applied to class feature ``f_k``; ``bias``
    is ``[C]``, ``[B, C]`` (per sample) or None. L_rej's hinge is on its sigmoid.
    """
    all_logits = features @ prototypes.T  # [B, C(k), C(j)]
    if bias is not None:
        all_logits = all_logits + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    return all_logits.max(dim=2).values


def contrastive_per_sample(
    features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Positive-feature contrast: ``sum_{k: y_k=1} CE(cos(f_k, w_.) / T, target k)``."""
    cosine = F.normalize(features, dim=2) @ F.normalize(prototypes, dim=1).T  # [B, C, C]
    log_prob = F.log_softmax(cosine / temperature, dim=2)
    own = torch.diagonal(log_prob, dim1=1, dim2=2)  # [B, C]: log p(k | f_k)
    return -(own * targets).sum(dim=1)


def fedncalign_loss(
    logits: torch.Tensor,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    *,
    lambda_rej: float,
    lambda_con: float,
    tau: float,
    temperature: float,
    bias: torch.Tensor | None = None,
) -> LossTerms:
    """Return the FedNCAlign-ML loss terms per sample (average ``total`` for the batch loss)."""
    bce = bce_per_sample(logits, targets)
    zero = torch.zeros_like(bce)
    rejection = (
        rejection_per_sample(features, prototypes, targets, tau=tau, bias=bias)
        if lambda_rej > 0
        else zero
    )
    contrastive = (
        contrastive_per_sample(features, prototypes, targets, temperature=temperature)
        if lambda_con > 0
        else zero
    )
    total = bce + lambda_rej * rejection + lambda_con * contrastive
    return LossTerms(bce=bce, rejection=rejection, contrastive=contrastive, total=total)
