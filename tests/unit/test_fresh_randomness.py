"""Every local training call draws fresh randomness (SECAGG.md, "Version 3", R10).

The attack (an attacker's review): after a re-join, a site trained the same global model into
the same update, because its shuffling was seeded from the run's seed; two secure rounds, one
with the victim and one without, then gave its update exactly. Now shuffling and sampling draw
from the operating system's cryptographic source on every call, and only the in-process
simulation may pass a seeded source (``simulation_seed``), to keep its runs reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import FederationConfig, MethodConfig
from clinfl.config.policy import DPPolicy, SitePolicy
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.settings import DPSettings
from clinfl.typing import StateDict
from site_agent.agent import SiteIdentity
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.setup import setup_site
from site_agent.training import RandomBytes, SiteTrainer, plain_trainer

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=3, init_seed=0)
METHOD = MethodConfig(name="fedavg", backbone="small", width=8)
SETTINGS = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-2)


def _images(count: int = 24) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
    targets = (rng.random((count, 4)) < 0.4).astype(np.uint8)
    return ImageSet(images, targets, np.arange(count, dtype=np.int64), ("a", "b", "c", "d"))


def _constant(size: int) -> bytes:
    """A fixed source: every call gets the same bytes."""
    return bytes(size)


def _same(a: StateDict, b: StateDict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def _plain(random_bytes: RandomBytes | None = None) -> SiteTrainer:
    extra = {} if random_bytes is None else {"random_bytes": random_bytes}
    algorithm = create_algorithm(METHOD)
    return plain_trainer("site-1", _images(), algorithm, SPEC, weight_decay=0.0, **extra)


def _initial() -> StateDict:
    algorithm = create_algorithm(METHOD)
    return algorithm.initial_state(algorithm.build_model(SPEC))


def _round_order(trainer: SiteTrainer) -> list[torch.Tensor]:
    """The batches one training call would take (drawn as train_round draws them)."""
    trainer.strategy.begin_round(SETTINGS)
    return [images for images, _ in trainer.strategy.batches(SETTINGS)]


def test_every_call_draws_fresh_bytes_and_a_fixed_source_repeats_the_order() -> None:
    drawn: list[bytes] = []

    def counting(size: int) -> bytes:
        drawn.append(os.urandom(size))
        return drawn[-1]

    trainer = _plain(counting)
    before = len(drawn)
    first, second = _round_order(trainer), _round_order(trainer)
    assert len(drawn) == before + 2  # one fresh draw per training call
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))
    fixed = _plain(_constant)
    first, second = _round_order(fixed), _round_order(fixed)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_same_trainer_given_the_same_model_twice_returns_different_updates() -> None:
    trainer, state = _plain(), _initial()  # the default source: os.urandom
    first = trainer.train_round(state, SETTINGS).delta
    second = trainer.train_round(state, RoundSettings(2, 1, 8, 1e-2)).delta
    assert not _same(first, second)
    fixed = _plain(_constant)  # no state outlives a round, so only the randomness differed
    first = fixed.train_round(state, SETTINGS).delta
    assert _same(first, fixed.train_round(state, RoundSettings(2, 1, 8, 1e-2)).delta)


def _rejoin(tmp_path: Path, simulation_seed: int | None) -> StateDict:
    """A site joins a run (as a deployed site does: no simulation seed) and trains round 1."""
    ready = setup_site(
        SiteIdentity("site-1", Ed25519PrivateKey.generate()),
        _images(),
        SitePolicy(dp=DPPolicy(required=False)),
        create_algorithm(METHOD),
        SPEC,
        federation=FederationConfig(batch_size=8),
        directory={},
        state_dir=tmp_path,
        run_id="run",
        config_hash=b"\0" * 32,
        grad_sample_mode="hooks",
        **({} if simulation_seed is None else {"simulation_seed": simulation_seed}),
    )
    return ready.trainer.train_round(_initial(), SETTINGS).delta


def test_a_rejoined_site_does_not_train_the_same_model_into_the_same_update(
    tmp_path: Path,
) -> None:
    assert not _same(_rejoin(tmp_path / "a", None), _rejoin(tmp_path / "b", None))
    # the simulation's explicitly named seed keeps its runs reproducible
    assert _same(_rejoin(tmp_path / "c", 7), _rejoin(tmp_path / "d", 7))


def _dp(tmp_path: Path, random_bytes: RandomBytes | None) -> StateDict:
    """A DP-SGD trainer whose noise comes from torch's generator, seeded alike for every call
    here: its update then depends on the Poisson sampling alone."""
    extra = {} if random_bytes is None else {"random_bytes": random_bytes}
    algorithm = create_algorithm(METHOD)
    policy = DPPolicy(epsilon_budget=1e6, secure_rng=False)
    trainer = private_trainer(
        "site-1",
        _images(),
        algorithm,
        SPEC,
        dp=DPSettings.from_policy(policy, grad_sample_mode="hooks"),
        ledger=SiteLedger(tmp_path),
        run_id="run",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        **extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the noise (a test's choice; the site's noise is the OS's)
        return trainer.train_round(_initial(), SETTINGS).delta


def test_dp_sampling_is_fresh_unless_a_fixed_source_is_injected(tmp_path: Path) -> None:
    assert not _same(_dp(tmp_path / "a", None), _dp(tmp_path / "b", None))
    assert _same(_dp(tmp_path / "c", _constant), _dp(tmp_path / "d", _constant))
