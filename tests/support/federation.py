"""Test doubles: trainers with fixed updates, and site agents around them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.federation.messages import RoundSettings
from clinfl.secagg.settings import SecAggRequirements
from clinfl.typing import StateDict
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.training import LocalUpdate
from tests.support.secagg_round import CONFIG_HASH

SETTINGS = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)


class FixedTrainer:
    """Returns a preset update (delta and sample count) every round."""

    def __init__(self, site_id: str, delta: StateDict, num_samples: int) -> None:
        self.site_id = site_id
        self.delta = delta
        self.num_samples = num_samples

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        return LocalUpdate(dict(self.delta), self.num_samples, mean_loss=0.5, steps=1)

    def update_sent(self, *, secagg: bool) -> None:
        self.sent = secagg

    def aggregate_size(self, sites: int) -> None:
        self.sum_of = sites


def random_deltas(
    count: int, template: StateDict, *, scale: float = 0.05, seed: int = 0
) -> list[StateDict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            name: torch.randn(value.shape, generator=generator) * scale
            for name, value in template.items()
        }
        for _ in range(count)
    ]


def make_agents(
    deltas: Sequence[StateDict],
    samples: Sequence[int],
    *,
    requirements: SecAggRequirements | None = None,
    audit: Callable[[str, str], None] | None = None,
) -> list[SiteAgent]:
    ids = [f"site-{k + 1}" for k in range(len(deltas))]
    identities = [SiteIdentity(i, Ed25519PrivateKey.generate()) for i in ids]
    directory = {i.site_id: i.signing_key.public_key() for i in identities}
    agents = []
    for identity, delta, n in zip(identities, deltas, samples, strict=True):

        def hook(round_id: int, message: str, site: str = identity.site_id) -> None:
            if audit is not None:
                audit(site, message)

        agents.append(
            SiteAgent(
                FixedTrainer(identity.site_id, delta, n),
                identity=identity,
                directory=directory,
                requirements=requirements or SecAggRequirements(),
                config_hash=CONFIG_HASH,
                audit=hook,
                report_loss=True,
                report_counts=True,
            )
        )
    return agents
