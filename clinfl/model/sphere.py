"""SphereFed's network and its closed-form calibration.

Features on the unit sphere, a fixed random orthogonal classifier, and a calibrated classifier
computed from (summed) feature statistics.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn import functional

from clinfl.model.backbones.base import FeatureBackbone
from clinfl.model.networks import ClassBias, NetOutput

LOGIT_SCALE = 10.0
"""Cosine similarities lie in [-1, 1]; the fixed classifier's logits are scaled by this."""
STATISTICS_SCALE = 0.25
"""The calibration statistics are stored (and travel) times this, within the 0.5 clip."""
RIDGE = 1e-3


def orthogonal_classifier(num_classes: int, dim: int, *, seed: int) -> torch.Tensor:
    """Return ``[C, d]`` orthonormal rows drawn from ``seed`` (the same at every site).

    Raises:
        ValueError: if ``num_classes > dim``.
    """
    if num_classes > dim:
        raise ValueError(f"{num_classes} orthonormal rows need dim >= {num_classes}, got {dim}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    rows: torch.Tensor = q.T.contiguous().to(torch.float32)
    return rows


def augmented(features: torch.Tensor) -> torch.Tensor:
    """Return ``[h, 1]``: the calibration fits a bias through the constant column."""
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def calibrated_classifier(gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Solve ``(G + ridge * I) W = X`` for the ``[d + 1, C]`` least-squares classifier.

    ``gram`` is the mean of ``[h, 1][h, 1]^T`` and ``cross`` the mean of ``[h, 1] (2y - 1)^T``.
    """
    g = gram.to(torch.float64)
    eye = torch.eye(g.shape[0], dtype=torch.float64, device=g.device)
    solution: torch.Tensor = torch.linalg.solve(g + RIDGE * eye, cross.to(torch.float64))
    return solution.to(torch.float32)


class SphereNet(nn.Module):
    """Backbone -> pooled feature -> unit sphere -> fixed orthogonal classifier (+ class bias).

    In training mode the logits are ``LOGIT_SCALE * <h / |h|, w_k> + b_k`` with the fixed
    ``w``. In evaluation mode, once the calibration statistics are set (``ready > 0``), the
    logits are ``[h / |h|, 1] @ W*`` with ``W*`` the closed-form least-squares classifier.
    """

    classifier: torch.Tensor
    calibration_gram: torch.Tensor
    calibration_cross: torch.Tensor
    calibration_ready: torch.Tensor

    def __init__(self, backbone: FeatureBackbone, classifier: torch.Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        classes, dim = classifier.shape
        self.register_buffer("classifier", classifier, persistent=False)
        self.bias = ClassBias(classes)
        self.register_buffer("calibration_gram", torch.zeros(dim + 1, dim + 1))
        self.register_buffer("calibration_cross", torch.zeros(dim + 1, classes))
        self.register_buffer("calibration_ready", torch.zeros(1))
        self._solved: tuple[bytes, torch.Tensor] | None = None  # (statistics digest, W*)

    def calibrated_weights(self) -> torch.Tensor:
        """Return ``W*`` for the current statistics, solved once per distinct statistics."""
        digest = hashlib.blake2b(digest_size=16)
        for statistic in (self.calibration_gram, self.calibration_cross):
            digest.update(statistic.detach().cpu().contiguous().numpy().tobytes())
        key = digest.digest()
        if self._solved is None or self._solved[0] != key:
            # an ordinary tensor even when first asked for under inference mode
            with torch.inference_mode(False), torch.no_grad():
                weights = calibrated_classifier(
                    self.calibration_gram / STATISTICS_SCALE,
                    self.calibration_cross / STATISTICS_SCALE,
                )
            self._solved = (key, weights)
        return self._solved[1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the unit-norm pooled features ``[B, d]``."""
        pooled = self.backbone(images).mean(dim=(2, 3))
        return functional.normalize(pooled, dim=1)

    def forward(self, images: torch.Tensor) -> NetOutput:
        """Return the logits (calibrated in evaluation mode when statistics are set)."""
        features = self.features(images)
        if not self.training and float(self.calibration_ready) > 0:
            return NetOutput(augmented(features) @ self.calibrated_weights())
        logits = LOGIT_SCALE * features @ self.classifier.T + self.bias(images)
        return NetOutput(logits)
