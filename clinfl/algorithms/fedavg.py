"""FedAvg: ResNet-18 with a learnable linear head, trained with BCE; updates averaged by count."""

from __future__ import annotations

import torch
from torch import nn

from clinfl.algorithms.base import Algorithm, ModelSpec, build_backbone
from clinfl.algorithms.registry import register_algorithm
from clinfl.config.presets import or_library_default
from clinfl.model.losses import bce_per_sample
from clinfl.model.networks import LinearHeadNet, NetOutput


@register_algorithm
class FedAvg(Algorithm):
    """McMahan et al. 2017: local BCE training, sample-weighted mean of the updates."""

    name = "fedavg"
    summary = "FedAvg: linear head, BCE, sample-weighted mean of updates"

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """Build backbone + linear head, initialised from ``spec.init_seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            return LinearHeadNet(
                build_backbone(self.method, spec),
                spec.num_classes,
                head_bias=or_library_default(self.method.head_bias, "method.head_bias"),
            )

    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        """Return the summed per-class BCE of each sample."""
        return bce_per_sample(output.logits, targets)
