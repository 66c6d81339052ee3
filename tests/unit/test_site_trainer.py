"""The one site trainer: the loss it reports and its DP settings, whichever strategy steps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clinfl.algorithms import ModelSpec
from clinfl.algorithms.fedavg import FedAvg
from clinfl.config import MethodConfig
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import RoundSettings
from clinfl.model.networks import NetOutput
from clinfl.privacy.settings import DPSettings
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.training import SiteTrainer, plain_trainer, simulation_random_bytes

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=3, init_seed=0)


class BatchSizedLoss(FedAvg):
    """FedAvg whose batch loss is the batch's size (plain) and whose sample loss is 1 (DP)."""

    def local_loss(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        real = super().local_loss(model, images, targets, global_state, memory)
        return real * 0 + float(images.shape[0])

    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        return super().per_sample_loss(output, targets) * 0 + 1.0


def _images(count: int) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
    targets = (rng.random((count, 4)) < 0.4).astype(np.uint8)
    return ImageSet(images, targets, np.arange(count, dtype=np.int64), ("a", "b", "c", "d"))


def _dp(**changes: object) -> DPSettings:
    values: dict[str, object] = {
        "epsilon_budget": 1e6,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.0,
        "target_epsilon_per_round": None,
        "accountant": "rdp",
        "secure_rng": False,
        "grad_sample_mode": "hooks",
    }
    return DPSettings(**{**values, **changes})  # type: ignore[arg-type]


def _private(tmp_path: Path, algorithm: FedAvg, dp: DPSettings) -> SiteTrainer:
    return private_trainer(
        "site-1",
        _images(24),
        algorithm,
        SPEC,
        dp=dp,
        ledger=SiteLedger(tmp_path),
        run_id="run-a",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        random_bytes=simulation_random_bytes(1),
    )


def test_the_reported_loss_is_the_mean_over_the_samples_seen_not_over_the_steps() -> None:
    """10 samples in batches of 8 and 2 whose losses are 8 and 2: the mean per sample is 6.8.

    The plain trainer used to divide by the steps (5.0) while the DP-SGD one divided by the
    samples seen; both now report through the one trainer's tally.
    """
    algorithm = BatchSizedLoss(MethodConfig(name="fedavg"))
    trainer = plain_trainer(
        "site-1", _images(10), algorithm, SPEC, weight_decay=0.0, random_bytes=os.urandom
    )
    state = algorithm.initial_state(algorithm.build_model(SPEC))
    update = trainer.train_round(
        state, RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)
    )
    assert update.steps == 2
    assert update.mean_loss == pytest.approx((8 * 8 + 2 * 2) / 10)


def test_a_dp_trainer_reports_its_loss_through_the_same_tally(tmp_path: Path) -> None:
    """Every sample's loss is 1, so the mean over the (Poisson, uneven) batches is exactly 1."""
    algorithm = BatchSizedLoss(MethodConfig(name="fedavg"))
    trainer = _private(tmp_path, algorithm, _dp())
    state = algorithm.initial_state(algorithm.build_model(SPEC))
    update = trainer.train_round(
        state, RoundSettings(round=1, local_epochs=2, batch_size=8, lr=1e-3)
    )
    assert update.steps == 6
    assert update.mean_loss == pytest.approx(1.0)


def test_a_zero_noise_multiplier_is_a_setting_not_unset(tmp_path: Path) -> None:
    """``noise_multiplier = 0.0`` used to read as unset: the site calibrated noise for epsilon 1."""
    algorithm = FedAvg(MethodConfig(name="fedavg"))
    trainer = _private(tmp_path, algorithm, _dp(noise_multiplier=0.0))
    steps = trainer.strategy
    assert steps.noise_multiplier == 0.0  # type: ignore[attr-defined]
    assert steps.optimizer.noise_multiplier == 0.0  # type: ignore[attr-defined]
