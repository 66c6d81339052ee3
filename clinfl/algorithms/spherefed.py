"""SphereFed: a fixed random orthogonal classifier on the unit sphere, then closed-form calibration.

Dong et al. 2022. Every site derives the same orthonormal classifier rows from the federation
seed and trains its backbone (and a per-class bias, which multi-label BCE needs to reject every
class) against them; the classifier never changes and never travels. After its local training
each site computes the statistics of its unit-norm features ``h``: the mean of ``[h, 1][h, 1]^T``
and of ``[h, 1](2y - 1)^T``. The coordinator's weighted mean of those is the pooled statistics of
every site's data, from which the evaluated global model solves its least-squares classifier
(:func:`~clinfl.model.sphere.calibrated_classifier`). Only sums travel, so secure aggregation
covers them. Computing the statistics reads local data after training, which DP-SGD does not
cover, so a site whose policy requires DP refuses SphereFed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clinfl.algorithms.base import Algorithm, ModelSpec, RoundContext, SiteMemory, build_backbone
from clinfl.algorithms.registry import register_algorithm
from clinfl.errors import InternalError
from clinfl.model.losses import bce_per_sample
from clinfl.model.networks import NetOutput
from clinfl.model.sphere import STATISTICS_SCALE, SphereNet, augmented, orthogonal_classifier
from clinfl.typing import StateDict

STATISTICS = ("calibration_gram", "calibration_cross", "calibration_ready")


def feature_statistics(model: SphereNet, context: RoundContext) -> tuple[torch.Tensor, ...]:
    """Return the means of ``[h, 1][h, 1]^T`` and ``[h, 1](2y - 1)^T`` over the site's data."""
    was_training = model.training
    model.eval()
    gram = torch.zeros_like(model.calibration_gram, dtype=torch.float64)
    cross = torch.zeros_like(model.calibration_cross, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for images, targets in context.batches():
            h = augmented(model.features(images)).to(torch.float64)
            gram += h.T @ h
            cross += h.T @ (2 * targets.to(torch.float64) - 1)
            count += images.shape[0]
    model.train(was_training)
    count = max(count, 1)
    return (gram / count).to(torch.float32), (cross / count).to(torch.float32)


@register_algorithm
class SphereFed(Algorithm):
    """SphereFed with a per-class bias, BCE, and calibration from summed feature statistics."""

    name = "spherefed"
    summary = "SphereFed: unit-sphere features, fixed orthogonal classifier, closed-form fit"
    dp_incompatibility = (
        "its feature statistics read the site's data after training, outside DP-SGD"
    )

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """Build the network; the classifier comes from ``spec.federation_seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            backbone = build_backbone(self.method, spec)
            classifier = orthogonal_classifier(
                spec.num_classes, backbone.out_dim, seed=spec.federation_seed
            )
            return SphereNet(backbone, classifier)

    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        """Return the summed per-class BCE of each sample."""
        return bce_per_sample(output.logits, targets)

    def travelling_state(self, model: nn.Module) -> StateDict:
        """The trainable tensors plus the calibration statistics (never the classifier)."""
        state = super().travelling_state(model)
        buffers = dict(model.named_buffers())
        for name in STATISTICS:
            state[name] = buffers[name].detach()
        return state

    def auxiliary_update(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
        context: RoundContext,
    ) -> StateDict:
        """Return the change that moves the global statistics to this site's (scaled)."""
        if not isinstance(model, SphereNet):
            raise InternalError(f"SphereFed trains a SphereNet, got a {type(model).__name__}")
        gram, cross = feature_statistics(model, context)
        new = {
            "calibration_gram": gram * STATISTICS_SCALE,
            "calibration_cross": cross * STATISTICS_SCALE,
            "calibration_ready": gram.new_full((1,), STATISTICS_SCALE),
        }
        return {name: new[name] - global_state[name] for name in STATISTICS}
