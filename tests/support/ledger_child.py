"""A site process for the fault-injection test: trains DP rounds until it is killed.

    python -m tests.support.ledger_child STATE_DIR TRUTH_FILE

It uses the real DP-SGD trainer and SiteLedger with a tiny linear model (so each step takes
milliseconds). Before every optimizer step it appends "noise rate" to TRUTH_FILE and fsyncs, so
the truth file counts every step that may have been taken. It prints "ready" once set up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clinfl.algorithms.base import Algorithm, ModelSpec
from clinfl.config import MethodConfig
from clinfl.config.policy import DPPolicy
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import RoundSettings
from clinfl.model.networks import NetOutput
from clinfl.privacy.settings import DPSettings
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16 * 16, 4)

    def forward(self, images: torch.Tensor) -> NetOutput:
        return NetOutput(self.fc(images.flatten(1)))


class TinyAlgorithm(Algorithm):
    name = "tiny"
    summary = "a linear model for the fault-injection test"

    def build_model(self, spec: ModelSpec) -> nn.Module:
        torch.manual_seed(spec.init_seed)
        return TinyNet()

    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            output.logits, targets, reduction="none"
        ).sum(dim=1)


def main() -> None:
    state_dir, truth_path = Path(sys.argv[1]), Path(sys.argv[2])
    rng = np.random.default_rng(0)
    data = ImageSet(
        images=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8),
        targets=(rng.random((40, 4)) < 0.3).astype(np.uint8),
        groups=np.arange(40, dtype=np.int64),
        class_names=("a", "b", "c", "d"),
    )
    algorithm = TinyAlgorithm(MethodConfig(name="fedavg"))
    spec = ModelSpec(num_classes=4, image_size=16, federation_seed=1, init_seed=0)
    ledger = SiteLedger(state_dir)
    site = private_trainer(
        "site-1",
        data,
        algorithm,
        spec,
        dp=DPSettings.from_policy(DPPolicy(epsilon_budget=1e6), grad_sample_mode="hooks"),
        ledger=ledger,
        run_id=f"pid-{os.getpid()}",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
    )
    optimizer = site.strategy.optimizer
    original_step = optimizer.step
    truth = open(truth_path, "a")  # noqa: SIM115 - kept open for the process's life

    def step_with_truth(*args: object, **kwargs: object) -> object:
        truth.write(f"{site.strategy.noise_multiplier} {site.strategy.sample_rate}\n")
        truth.flush()
        os.fsync(truth.fileno())
        return original_step(*args, **kwargs)

    optimizer.step = step_with_truth
    state = algorithm.travelling_state(algorithm.build_model(spec))
    ledger.epsilon(delta=1e-5, accountant="rdp")  # warm up the accountant's imports
    print("ready", flush=True)
    round_number = len(ledger.rounds()) + 1
    while True:
        update = site.train_round(state, RoundSettings(round_number, 1, 8, 1e-2))
        site.update_sent(secagg=True)
        state = {k: state[k] + update.delta[k] for k in state}
        round_number += 1


if __name__ == "__main__":
    main()
