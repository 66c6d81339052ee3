"""R7's training bounds, attacked and played to the end: a batch of one is one sample's gradient.

A site trains a round only if its settings lie within its policy's ``[training]`` bounds
(:func:`~clinfl.training_bounds.check_round_settings`, called by
:meth:`~site_agent.agent.SiteAgent.train_round` before any training step). The shipped
policies' ``min_batch_size`` keeps one sample from being a whole step's gradient.

The attack: a site whose policy lets it upload in the clear (``secagg.required = false``)
trains a linear layer. The coordinator asks for one local step (fixed-step mode, allowed by
every policy) on a batch of one. The update is then ``-lr * g x^T`` for the weights and
``-lr * g`` for the bias, so any weight row divided by its bias entry is the training sample
``x`` itself. With the bound in place the site refuses before training, and the coordinator
gets nothing; without it (``tools/mutation_check.py`` removes the call) the coordinator
recovers a training sample exactly, which these tests assert cannot happen.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.config.policy import load_policy
from clinfl.errors import FederationError, PolicyViolation
from clinfl.federation.messages import RoundSettings, SiteContribution
from clinfl.secagg.settings import SecAggRequirements
from clinfl.training_bounds import check_round_settings
from clinfl.typing import StateDict
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.training import LocalUpdate
from tests.support.secagg_round import CONFIG_HASH

POLICIES = Path(__file__).resolve().parents[2] / "policies"
FEATURES, CLASSES, SAMPLES = 12, 3, 40
SITE = "site-0"


class LinearTrainer:
    """A site's local training of one linear layer (MSE), honest to the settings it is given.

    Each step draws ``batch_size`` of its private samples with fresh randomness; a round takes
    ``local_steps`` steps (or ``local_epochs`` passes over the data).
    """

    def __init__(self, samples: torch.Tensor, targets: torch.Tensor) -> None:
        self.site_id = SITE
        self.samples = samples
        self.targets = targets
        self.num_samples = len(samples)
        self.calls = 0

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        self.calls += 1
        weight = global_state["w"].clone().requires_grad_(True)
        bias = global_state["b"].clone().requires_grad_(True)
        per_epoch = -(-self.num_samples // settings.batch_size)
        steps = settings.local_steps or settings.local_epochs * per_epoch
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big"))
        losses = []
        for _ in range(steps):
            chosen = torch.randperm(self.num_samples, generator=generator)[: settings.batch_size]
            predicted = self.samples[chosen] @ weight.T + bias
            loss = ((predicted - self.targets[chosen]) ** 2).mean()
            weight_grad, bias_grad = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():
                weight -= settings.lr * weight_grad
                bias -= settings.lr * bias_grad
            losses.append(float(loss.detach()))
        delta = {"w": weight.detach() - global_state["w"], "b": bias.detach() - global_state["b"]}
        return LocalUpdate(delta, self.num_samples, sum(losses) / len(losses), steps)

    def update_sent(self, *, secagg: bool) -> None:
        pass

    def aggregate_size(self, sites: int) -> None:
        pass


def _site(policy_file: str) -> tuple[SiteAgent, LinearTrainer, list[str]]:
    generator = torch.Generator().manual_seed(7)
    samples = torch.rand(SAMPLES, FEATURES, generator=generator)
    targets = torch.rand(SAMPLES, CLASSES, generator=generator)
    trainer = LinearTrainer(samples, targets)
    policy = load_policy(POLICIES / policy_file)
    identity = SiteIdentity(SITE, Ed25519PrivateKey.generate())
    audit: list[str] = []
    agent = SiteAgent(
        trainer,
        identity=identity,
        directory={SITE: identity.signing_key.public_key()},
        requirements=SecAggRequirements(required=False, min_sites=1),  # may upload in the clear
        config_hash=CONFIG_HASH,
        run_id="run",
        audit=lambda round_id, message: audit.append(message),
        check_settings=partial(check_round_settings, bounds=policy.training, site_id=SITE),
    )
    return agent, trainer, audit


GLOBAL = {"w": torch.zeros(CLASSES, FEATURES), "b": torch.zeros(CLASSES)}


def _coordinator(agent: SiteAgent, settings: RoundSettings) -> SiteContribution | None:
    """Ask for a round with ``settings`` and collect the clear upload, if the site sends one."""
    with contextlib.suppress(PolicyViolation):
        agent.train_round(GLOBAL, settings)
    try:
        return agent.upload_plain()
    except FederationError:  # no trained update: the site refused the round
        return None


def _invert(contribution: SiteContribution) -> torch.Tensor:
    """The gradient-inversion step: a weight row over its bias entry (exact for one sample)."""
    delta_w, delta_b = contribution.weighted_delta["w"], contribution.weighted_delta["b"]
    row = int(delta_b.abs().argmax())
    return delta_w[row] / delta_b[row]


def _recovered(contribution: SiteContribution | None, trainer: LinearTrainer) -> list[int]:
    """The site's samples the coordinator computed exactly from what it collected."""
    if contribution is None:
        return []
    guess = _invert(contribution)
    return [
        index
        for index, sample in enumerate(trainer.samples)
        if torch.allclose(guess, sample, rtol=1e-4, atol=1e-5)
    ]


BATCH_OF_ONE = RoundSettings(round=1, local_epochs=1, batch_size=1, lr=0.05, local_steps=1)


@pytest.mark.parametrize("policy_file", ["default.toml", "research.toml", "strict.toml"])
def test_a_batch_of_one_is_refused_and_no_training_sample_is_recovered(policy_file: str) -> None:
    agent, trainer, audit = _site(policy_file)
    contribution = _coordinator(agent, BATCH_OF_ONE)
    recovered = _recovered(contribution, trainer)
    assert recovered == [], f"the coordinator recovered training sample(s) {recovered} exactly"
    assert contribution is None
    assert trainer.calls == 0, "the site trained before checking the settings"
    assert any("batch_size=1 is invalid" in message for message in audit), audit


def test_the_inversion_needs_the_batch_of_one() -> None:
    """Control: the smallest batch the shipped policy allows, one step, recovers no sample."""
    agent, trainer, audit = _site("default.toml")
    smallest = load_policy(POLICIES / "default.toml").training.min_batch_size
    assert smallest > 1
    allowed = RoundSettings(round=1, local_epochs=1, batch_size=smallest, lr=0.05, local_steps=1)
    contribution = _coordinator(agent, allowed)
    assert contribution is not None and trainer.calls == 1 and audit == []
    assert _recovered(contribution, trainer) == []


def test_the_harness_recovers_a_sample_from_a_batch_of_one_without_the_bound() -> None:
    """Control: the same site without the settings check gives the coordinator one sample."""
    agent, trainer, _ = _site("default.toml")
    agent._check_settings = None  # the rule taken out
    contribution = _coordinator(agent, BATCH_OF_ONE)
    assert contribution is not None
    assert len(_recovered(contribution, trainer)) == 1
