"""Fixed-step local training: a site's work per round does not follow its size (R7').

A site whose policy keeps sample counts at the site declines a run that trains by epochs (its
steps per round, and so its latency, would follow its sample count); with ``local_steps`` every
site takes exactly that many steps on full batches, plainly or under DP-SGD, whatever its size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clinfl.algorithms import ModelSpec
from clinfl.config import FederationConfig, MethodConfig, RunConfig, validate_run_config
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import DPPolicy, ReportingPolicy, SitePolicy, TrainingBounds, parse_policy
from clinfl.data.batching import wrapped_batches
from clinfl.data.imageset import ImageSet
from clinfl.errors import PolicyViolation, ValidationError
from clinfl.federation.digests import round_settings_digest
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.settings import DPSettings
from clinfl.roster import announce
from clinfl.simulation.local_steps import simulation_local_steps
from clinfl.training_bounds import round_settings_violations
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.wire import encode
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.setup import SiteData, policy_for_run
from site_agent.training import SiteTrainer, plain_trainer
from tests.unit.test_deployed_join import BUNDLE, HONEST, KEY, ROSTER
from tests.unit.test_site_trainer import BatchSizedLoss  # the batch's size as its loss

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=3, init_seed=0)
METHOD = MethodConfig(name="fedavg", backbone="small", width=8)
KEEPS_COUNTS = SitePolicy(reporting=ReportingPolicy(metrics=()))
SHARES_COUNTS = SitePolicy(reporting=ReportingPolicy(metrics=("counts",)))


def _images(count: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
    targets = (rng.random((count, 4)) < 0.4).astype(np.uint8)
    return ImageSet(images, targets, np.arange(count, dtype=np.int64), ("a", "b", "c", "d"))


def test_wrapped_batches_are_full_and_read_whole_random_passes_in_turn() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = list(wrapped_batches(5, batch_size=8, steps=5, generator=generator))
    assert [len(rows) for rows in batches] == [8] * 5  # a site smaller than a batch fills it
    flat = torch.cat(batches)
    for start in range(0, 40, 5):  # 40 rows = 8 whole passes, each a permutation of range(5)
        assert sorted(flat[start : start + 5].tolist()) == [0, 1, 2, 3, 4]
    passes = {tuple(flat[start : start + 5].tolist()) for start in range(0, 40, 5)}
    assert len(passes) > 1  # each pass is reshuffled


@pytest.mark.parametrize("samples", [5, 40])
def test_plain_fixed_steps_take_the_same_steps_on_full_batches_at_every_size(samples: int) -> None:
    algorithm = BatchSizedLoss(METHOD)
    trainer = plain_trainer("site-1", _images(samples), algorithm, SPEC, weight_decay=0.0)
    state = algorithm.initial_state(algorithm.build_model(SPEC))
    settings = RoundSettings(round=1, local_epochs=3, batch_size=8, lr=1e-3, local_steps=3)
    update = trainer.train_round(state, settings)
    assert update.steps == 3  # not local_epochs x ceil(N / 8)
    assert update.mean_loss == pytest.approx(8.0)  # every batch held exactly 8 samples
    by_epochs = trainer.train_round(
        state, RoundSettings(round=2, local_epochs=1, batch_size=8, lr=1e-3)
    )
    assert by_epochs.steps == -(-samples // 8)  # by epochs the steps follow the size


def test_the_auxiliary_pass_reads_as_many_full_batches_as_the_round_took_steps() -> None:
    algorithm = BatchSizedLoss(METHOD)
    for samples in (5, 40):
        trainer = plain_trainer("site-1", _images(samples), algorithm, SPEC, weight_decay=0.0)
        state = algorithm.initial_state(algorithm.build_model(SPEC))
        trainer.train_round(state, RoundSettings(1, 1, 8, 1e-3, local_steps=2))
        assert [len(images) for images, _ in trainer.strategy.data_batches()] == [8, 8]


def _dp_trainer(
    tmp_path: Path, samples: int, *, local_steps: int, per_round: float | None = None
) -> tuple[SiteTrainer, BatchSizedLoss]:
    algorithm = BatchSizedLoss(METHOD)
    policy = DPPolicy(
        epsilon_budget=1e6,
        noise_multiplier=None if per_round is not None else 1.0,
        target_epsilon_per_round=per_round,
        secure_rng=False,
    )
    trainer = private_trainer(
        "site-1",
        _images(samples),
        algorithm,
        SPEC,
        dp=DPSettings.from_policy(policy, grad_sample_mode="hooks"),
        ledger=SiteLedger(tmp_path),
        run_id="run-a",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        local_steps=local_steps,
    )
    return trainer, algorithm


@pytest.mark.parametrize("samples", [16, 48])
def test_dp_fixed_steps_take_and_reserve_exactly_local_steps_at_every_size(
    tmp_path: Path, samples: int
) -> None:
    trainer, algorithm = _dp_trainer(tmp_path, samples, local_steps=4)
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    update = trainer.train_round(state, RoundSettings(1, 1, 8, 1e-3, local_steps=4))
    assert update.steps == 4
    [reserved] = SiteLedger(tmp_path).rounds()
    assert reserved.steps == 4  # accounted as 4 Poisson steps at rate 1 / ceil(N / 8)
    assert reserved.sample_rate == pytest.approx(1 / -(-samples // 8))


def test_a_dp_target_calibrated_for_local_steps_refuses_more_steps(tmp_path: Path) -> None:
    trainer, algorithm = _dp_trainer(tmp_path, 24, local_steps=2, per_round=1.0)
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    with pytest.raises(PolicyViolation) as caught:
        trainer.train_round(state, RoundSettings(1, 1, 8, 1e-3, local_steps=5))
    assert "5 local steps would cost epsilon" in caught.value.message
    assert "(2 local steps, 2 steps)" in caught.value.message
    assert "at most 2 local steps" in caught.value.remedy
    assert trainer.train_round(state, RoundSettings(1, 1, 8, 1e-3, local_steps=2)).steps == 2


def test_a_policy_that_keeps_counts_declines_a_run_by_epochs_naming_the_fix() -> None:
    by_epochs = RunConfig()
    with pytest.raises(PolicyViolation) as caught:
        policy_for_run(KEEPS_COUNTS, by_epochs)
    assert caught.value.message.startswith("federation.local_steps=None is invalid")
    assert "reporting.metrics lists no 'counts'" in caught.value.message
    assert "clinfl simulate --local-steps" in caught.value.message
    steps = RunConfig(federation=FederationConfig(local_steps=5))
    assert policy_for_run(KEEPS_COUNTS, steps).reporting.metrics == ()
    for config in (by_epochs, steps):  # a site that lets counts leave follows the run
        policy_for_run(SHARES_COUNTS, config)


def test_a_deployed_site_that_keeps_counts_declines_a_run_by_epochs_at_join(
    tmp_path: Path,
) -> None:
    """The refusal comes before the site reads its export (there is none here): it depends on
    the policy and the run configuration only."""
    policy = parse_policy(
        "[dp]\nrequired = false\n[secagg]\nmin_sites = 2\n[reporting]\nmetrics = []\n"
    )
    site = DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=policy,
        roster=ROSTER,
        data=SiteData(
            tmp_path / "no-export", None, IngestOptions(image_size=16, label_space="digits")
        ),
        state_dir=tmp_path / "state",
    )
    config: dict[str, Any] = {name: dict(table) for name, table in HONEST.items()}
    request = JoinRequest("run-1", announce(config, ROSTER.digest), send_initial_state=False)
    reply = site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(request),
    )
    refusal = read_refusal(reply)
    assert refusal is not None and isinstance(refusal.error, PolicyViolation)
    assert "site-1 declines the run: federation.local_steps=None" in refusal.error.message
    assert not (tmp_path / "state" / "ingest").exists()


def test_round_settings_carry_local_steps_into_their_hash_and_bounds() -> None:
    settings = RoundSettings.for_round(FederationConfig(local_steps=7, local_epochs=2), 3)
    assert (settings.local_steps, settings.local_epochs) == (7, 2)
    digests = {
        round_settings_digest(RoundSettings(1, 1, 8, 1e-3, local_steps=steps))
        for steps in (None, 1, 7)
    }
    assert len(digests) == 3
    bounds = TrainingBounds(max_local_epochs=2, max_local_steps=10)
    assert (
        round_settings_violations(RoundSettings(1, 99, 8, 1e-3, local_steps=10), bounds=bounds)
        == []
    )
    [violation] = round_settings_violations(
        RoundSettings(1, 1, 8, 1e-3, local_steps=11), bounds=bounds
    )
    assert violation.field == "local_steps"
    assert violation.allowed == "1..10 (training.max_local_steps)"


def test_local_steps_is_validated_and_read_from_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_run_config(
            RunConfig(federation=FederationConfig(local_steps=0)), known_methods=("fedavg",)
        )
    [violation] = [v for v in caught.value.violations if v.field == "local_steps"]
    assert (violation.value, violation.allowed) == (0, ">= 1")
    assert "leave it unset" in violation.fix
    config = run_config_from_mapping({"federation": {"local_steps": 12}}, base=tmp_path)
    assert config.federation.local_steps == 12


def test_the_simulation_derives_local_steps_only_where_a_site_keeps_counts() -> None:
    fed = FederationConfig(local_epochs=2, batch_size=16)
    sizes = [40, 100, 61]  # mean 67 -> ceil(67 / 16) = 5 steps per epoch
    derived = simulation_local_steps(fed, sizes, {"site-1": SHARES_COUNTS, "site-2": KEEPS_COUNTS})
    assert derived is not None and derived.steps == 10 and derived.sites == ("site-2",)
    assert "10 local steps per round" in derived.describe(fed)
    assert simulation_local_steps(fed, sizes, {"site-1": SHARES_COUNTS}) is None
    fixed = FederationConfig(local_steps=3)
    assert simulation_local_steps(fixed, sizes, {"site-1": KEEPS_COUNTS}) is None
