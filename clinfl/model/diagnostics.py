"""What LADM does on real images: attention entropy and how far one image's class features differ.

Two numbers, measured on the validation images after every round:

- ``attention_entropy``: the mean entropy (nats) of each class query's attention over the feature
  map's ``h*w`` positions, over images, heads and classes. ``uniform_entropy = log(h*w)`` is its
  ceiling: an entropy at the ceiling means every class attends to the average token.
- ``class_feature_cosine``: the mean cosine between the C class features of one image, over every
  pair of classes and every image. At 1.000 the C features are one vector, so LADM disentangles
  nothing and the per-class logits differ only through the ETF prototypes.

With the images' labels, three more show what L_rej does (METHOD.md section 3):

- ``rejection_active``: the share of negative (image, class) pairs whose class feature looks like
  some class, ``sigmoid(max_j logit_j(f_k)) > tau``: the pairs L_rej pushes down.
- ``positive_probability`` and ``negative_probability``: the mean predicted probability of the
  positive and of the negative pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from clinfl.errors import InternalError
from clinfl.model.losses import strongest_logit
from clinfl.model.networks import FedNCAlignNet

DIAGNOSTIC_IMAGES = 256
"""Validation images the diagnostics are measured on (the first ones, the same every round)."""


@dataclass(frozen=True)
class LadmDiagnostics:
    """LADM's attention entropy (and its uniform ceiling) and the class-feature cosine."""

    attention_entropy: float
    uniform_entropy: float
    class_feature_cosine: float
    rejection_active: float | None = None
    positive_probability: float | None = None
    negative_probability: float | None = None

    def to_json_dict(self) -> dict[str, float]:
        """Return the numbers measured, under their names."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Return the mean cosine over every pair of distinct rows, averaged over the batch.

    ``features`` is ``[B, C, d]`` with ``C >= 2``.
    """
    unit = F.normalize(features.double(), dim=2)
    gram = unit @ unit.transpose(1, 2)  # [B, C, C]
    classes = features.shape[1]
    off_diagonal = gram.sum(dim=(1, 2)) - torch.diagonal(gram, dim1=1, dim2=2).sum(dim=1)
    return float((off_diagonal / (classes * (classes - 1))).mean())


def ladm_diagnostics(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    tau: float = 0.3,
) -> LadmDiagnostics | None:
    """Measure LADM on ``images`` (at most :data:`DIAGNOSTIC_IMAGES` of them).

    With ``targets`` (``[N, C]`` multi-hot), also measure what L_rej sees at threshold ``tau``.
    Returns None for a model without LADM (a linear-head baseline, or ``--no-ladm``).
    """
    if not isinstance(model, FedNCAlignNet) or model.ladm is None:
        return None
    images = images[:DIAGNOSTIC_IMAGES]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            feature_map = model.backbone(images)  # once, for the attention and the outputs
            queries = model.etf() if model.queries is None else model.queries()
            weights = model.ladm.attention_weights(queries, feature_map).double()  # [B, H, C, T]
            entropy = -(weights * torch.log(weights.clamp_min(1e-30))).sum(dim=-1).mean()
            output = model.head(feature_map)
            # inside inference mode: a learnable classifier's prototypes require grad
            strongest = (
                None
                if output.prototypes is None or output.class_features is None
                else strongest_logit(output.class_features, output.prototypes, output.bias)
            )
    finally:
        model.train(was_training)
    if output.class_features is None:
        raise InternalError("the ETF network returned no class features")
    positions = feature_map.shape[2] * feature_map.shape[3]
    diagnostics = LadmDiagnostics(
        attention_entropy=float(entropy),
        uniform_entropy=math.log(positions),
        class_feature_cosine=mean_pairwise_cosine(output.class_features),
    )
    if targets is None or strongest is None:
        return diagnostics
    labels = targets[: images.shape[0]].to(output.logits.device, torch.float64)
    looks_like_a_class = torch.sigmoid(strongest) > tau
    probabilities = torch.sigmoid(output.logits).double()
    negatives, positives = (1 - labels), labels
    return replace(
        diagnostics,
        rejection_active=_share(looks_like_a_class.double(), negatives),
        positive_probability=_share(probabilities, positives),
        negative_probability=_share(probabilities, negatives),
    )


def _share(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    total = float(mask.sum())
    return None if total == 0 else float((values * mask).sum()) / total
