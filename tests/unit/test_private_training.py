"""DP-SGD at the site: correct clipped per-sample gradients, accounting, restarts, noise."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import MethodConfig
from clinfl.config.policy import DPPolicy
from clinfl.data.imageset import ImageSet
from clinfl.errors import BudgetExhausted, ModelError, PolicyViolation
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.accounting import epsilon_of
from clinfl.privacy.bookkeeping import enable_bookkeeping
from clinfl.privacy.ghost_norms import enable_mixed_ghost
from clinfl.privacy.noise import secure_gaussian, use_secure_noise
from clinfl.privacy.settings import (
    GHOST_CLIPPING_MODES,
    DPSettings,
    default_grad_sample_mode,
    opacus_grad_sample_mode,
)
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.training import simulation_random_bytes

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=3, init_seed=0)


def _algorithm(name: str = "fedncalign", **changes: object):
    return create_algorithm(MethodConfig(name=name, lambda_rej=1.0, **changes))  # type: ignore[arg-type]


def _images(count: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
    targets = (rng.random((count, 4)) < 0.4).astype(np.uint8)
    groups = np.arange(count, dtype=np.int64)
    return ImageSet(images=images, targets=targets, groups=groups, class_names=("a", "b", "c", "d"))


def _brute_force_clipped_mean(model, algorithm, x, y, clip: float) -> dict[str, torch.Tensor]:
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(x.shape[0]):
        loss = algorithm.per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for (name, _), grad in zip(params.items(), grads, strict=True):
            total[name] += grad * factor
    return {n: t / x.shape[0] for n, t in total.items()}


@pytest.mark.parametrize("mode", ["hooks", "ew", "ghost", "mixed-ghost", "bookkeeping"])
def test_clipped_per_sample_gradients_equal_a_brute_force_computation(mode: str) -> None:
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    algorithm = _algorithm()
    model = algorithm.build_model(SPEC).double()
    reference = algorithm.build_model(SPEC).double()
    reference.load_state_dict(model.state_dict())
    data = _images(4)
    x = ((torch.from_numpy(data.images).double() / 255.0 - 0.5) / 0.25).unsqueeze(1)
    y = torch.from_numpy(data.targets).double()
    clip = 0.05  # small enough that every sample is clipped differently
    expected = _brute_force_clipped_mean(reference, algorithm, x, y, clip)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    extra = {}
    if mode in (*GHOST_CLIPPING_MODES, "bookkeeping"):
        from site_agent.private_training import _PerSampleCriterion

        extra["criterion"] = _PerSampleCriterion(algorithm)
    if mode == "mixed-ghost":
        enable_mixed_ghost(model)
    bookkeeping = enable_bookkeeping(model) if mode == "bookkeeping" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode=opacus_grad_sample_mode(mode),
            **extra,
        )
        wrapped, dp_optimizer = made[0], made[1]
        output = wrapped(x)
        if mode in GHOST_CLIPPING_MODES:
            loss = made[2](output, y)
        else:
            loss = algorithm.per_sample_loss(output, y).mean()
        if bookkeeping is not None:  # one pass that leaves the clipped sum in .grad
            bookkeeping.backward(loss, wrapped)
        else:
            loss.backward()
        dp_optimizer.pre_step()
    worst = max(
        (p.grad - expected[name]).abs().max().item()
        for name, p in wrapped._module.named_parameters()
        if p.requires_grad
    )
    scale = max(t.abs().max().item() for t in expected.values())
    assert scale > 0 and worst <= 1e-9 * max(1.0, scale)


def test_batch_normalised_loss_would_break_the_guarantee() -> None:
    """The reason losses are per sample: a batch-normalised term couples samples' gradients."""
    algorithm = _algorithm()
    model = algorithm.build_model(SPEC).double()
    data = _images(4)
    x = ((torch.from_numpy(data.images).double() / 255.0 - 0.5) / 0.25).unsqueeze(1)
    y = torch.from_numpy(data.targets).double()
    params = [p for p in model.parameters() if p.requires_grad]
    alone = torch.autograd.grad(algorithm.per_sample_loss(model(x[:1]), y[:1]).sum(), params)
    in_batch = torch.autograd.grad(algorithm.per_sample_loss(model(x), y)[0], params)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(alone, in_batch, strict=True))


def _site(
    tmp_path: Path,
    *,
    budget: float = 50.0,
    mode: str = "hooks",
    name: str = "fedncalign",
    per_round: float | None = None,
    secure_rng: bool = True,
):
    policy = DPPolicy(epsilon_budget=budget, secure_rng=secure_rng)
    if per_round is not None:
        policy = DPPolicy(
            epsilon_budget=budget,
            noise_multiplier=None,
            target_epsilon_per_round=per_round,
            secure_rng=secure_rng,
        )
    dp = DPSettings.from_policy(policy, grad_sample_mode=mode)
    algorithm = _algorithm(name)
    site = private_trainer(
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
    return site, algorithm


SETTINGS = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)


def test_ledger_and_opacus_report_the_same_epsilon_across_a_restart(tmp_path: Path) -> None:
    site, algorithm = _site(tmp_path)
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    update = site.train_round(state, SETTINGS)
    site.update_sent(secagg=True)
    assert update.steps == 3 and set(update.delta) == set(state)
    first = site.epsilon()
    ledger = SiteLedger(tmp_path)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(first)
    restarted, _ = _site(tmp_path)  # a new process: the engine continues the ledger
    assert restarted.epsilon() == pytest.approx(first)
    assert restarted.strategy.engine.accountant.history == []  # it counts its own steps only
    restarted.train_round(state, RoundSettings(2, 1, 8, 1e-3))
    counted = restarted.strategy.engine.accountant.history  # (noise, rate, steps) entries
    assert sum(steps for _, _, steps in counted) == 3  # the round's steps, by Opacus' hook
    assert restarted.epsilon() == pytest.approx(ledger.epsilon(delta=1e-5, accountant="rdp"))
    assert restarted.epsilon() > first
    assert [r.state for r in ledger.rounds()] == ["spent", "reserved"]


def test_round_over_budget_is_refused_before_any_step(tmp_path: Path) -> None:
    site, algorithm = _site(tmp_path, budget=0.5)
    model = algorithm.build_model(SPEC)
    state = algorithm.travelling_state(model)
    before = {k: v.clone() for k, v in site.model.state_dict().items()}
    with pytest.raises(BudgetExhausted, match=r"past the budget 0\.5"):
        site.train_round(state, SETTINGS)
    after = site.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(SiteLedger(tmp_path).refusals()) == 1


def test_more_local_epochs_than_calibrated_for_are_refused_before_any_step(
    tmp_path: Path,
) -> None:
    site, algorithm = _site(tmp_path, per_round=2.0)  # calibrated for 1 epoch = 3 steps
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    before = {k: v.clone() for k, v in site.model.state_dict().items()}
    with pytest.raises(PolicyViolation) as caught:
        site.train_round(state, RoundSettings(round=1, local_epochs=4, batch_size=8, lr=1e-3))
    assert not isinstance(caught.value, BudgetExhausted)
    message = caught.value.message
    assert "4 local epochs (12 steps)" in message and "per-round target 2 " in message
    assert (
        "(1 local epochs, 3 steps)" in message and "at most 1 local epochs" in caught.value.remedy
    )
    after = site.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ledger = SiteLedger(tmp_path)
    assert ledger.rounds() == [] and len(ledger.refusals()) == 1
    assert "past the per-round target 2" in ledger.refusals()[0].reason
    assert site.strategy.engine.accountant.history == []
    update = site.train_round(state, SETTINGS)  # the calibrated round still trains
    assert update.steps == 3 and [r.state for r in ledger.rounds()] == ["reserved"]
    assert ledger.epsilon(delta=1e-5, accountant="rdp") <= 2.0 * 1.01


def test_a_fixed_noise_multiplier_leaves_epochs_to_the_budget(tmp_path: Path) -> None:
    site, algorithm = _site(tmp_path)
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    update = site.train_round(state, RoundSettings(round=1, local_epochs=2, batch_size=8, lr=1e-3))
    assert update.steps == 6 and SiteLedger(tmp_path).refusals() == []


def test_fedprox_trains_under_dp_with_its_proximal_step(tmp_path: Path) -> None:
    site, algorithm = _site(tmp_path, name="fedprox")
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    update = site.train_round(state, SETTINGS)
    assert all(torch.isfinite(v).all() for v in update.delta.values())
    assert any(v.abs().max() > 0 for v in update.delta.values())


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        (MethodConfig(name="fedncalign", queries="learnable"), "no per-sample gradient"),
        (MethodConfig(name="scaffold"), "before DP noise"),
        (MethodConfig(name="fedcurv"), "Fisher information"),
        (MethodConfig(name="spherefed"), "feature statistics"),
    ],
)
def test_what_dp_cannot_cover_is_refused_with_the_reason(
    method: MethodConfig, reason: str, tmp_path: Path
) -> None:
    dp = DPSettings.from_policy(DPPolicy(), grad_sample_mode="hooks")
    with pytest.raises(ModelError, match=reason):
        private_trainer(
            "site-1",
            _images(8),
            create_algorithm(method),
            SPEC,
            dp=dp,
            ledger=SiteLedger(tmp_path),
            run_id="r",
            batch_size=4,
            local_epochs=1,
            weight_decay=0.0,
        )


def test_secure_noise_is_gaussian_with_the_right_scale() -> None:
    draws = secure_gaussian((200_000,), std=2.5, dtype=torch.float64)
    assert abs(draws.std().item() - 2.5) < 0.03
    assert stats.kstest(draws.numpy() / 2.5, "norm").pvalue > 1e-4
    assert not torch.equal(draws[:100], secure_gaussian((100,), std=2.5, dtype=torch.float64))


def test_secure_noise_replaces_opacus_noise_on_one_optimizer() -> None:
    class Fake:
        def __init__(self) -> None:
            self.noise_multiplier, self.max_grad_norm = 2.0, 0.5
            self.params = [torch.nn.Parameter(torch.zeros(50_000))]
            self.params[0].summed_grad = torch.full((50_000,), 3.0)

    fake = Fake()
    use_secure_noise(fake)
    fake.add_noise()
    grad = fake.params[0].grad
    assert abs(grad.mean().item() - 3.0) < 0.02 and abs(grad.std().item() - 1.0) < 0.02


def test_default_mode_follows_the_measured_table() -> None:
    assert default_grad_sample_mode(16) == "hooks"
    assert {default_grad_sample_mode(size) for size in (32, 64, 128)} == {"bookkeeping"}
    assert default_grad_sample_mode(224) == "ew"


def _planned_site(tmp_path: Path, *, rounds: int, budget: float):  # type: ignore[no-untyped-def]
    policy = DPPolicy(epsilon_budget=budget, noise_multiplier=None, planned_rounds=rounds)
    dp = DPSettings.from_policy(policy, grad_sample_mode="hooks")
    algorithm = _algorithm()
    site = private_trainer(
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
    return site, algorithm


def test_planned_rounds_spend_the_budget_exactly_and_no_round_more(tmp_path: Path) -> None:
    site, algorithm = _planned_site(tmp_path, rounds=3, budget=4.0)
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    ledger = SiteLedger(tmp_path)
    for number in (1, 2, 3):
        site.train_round(state, RoundSettings(number, 1, 8, 1e-3))
        site.update_sent(secagg=True)
    spent = ledger.epsilon(delta=1e-5, accountant="rdp")
    assert 4.0 * 0.99 <= spent <= 4.0  # the noise was set for the whole budget, never over it
    with pytest.raises(BudgetExhausted):
        site.train_round(state, RoundSettings(4, 1, 8, 1e-3))


def test_planned_noise_counts_what_the_ledger_has_already_spent(tmp_path: Path) -> None:
    fresh, _ = _planned_site(tmp_path / "fresh", rounds=2, budget=4.0)
    ledger = SiteLedger(tmp_path / "used")
    ledger.reserve(
        run_id="earlier",
        round_number=1,
        noise_multiplier=3.0,
        sample_rate=1 / 3,
        steps=3,
        budget=4.0,
        delta=1e-5,
        accountant="rdp",
        grad_sample_mode="hooks",
    )
    used, _ = _planned_site(tmp_path / "used", rounds=2, budget=4.0)
    assert used.strategy.noise_multiplier > fresh.strategy.noise_multiplier
    history = [*ledger.history(), (used.strategy.noise_multiplier, 1 / 3, 6)]
    assert epsilon_of(history, delta=1e-5, accountant="rdp") <= 4.0


def test_rdp_epsilon_is_opacus_accountant_stepped_through_the_history() -> None:
    from opacus.accountants import RDPAccountant

    history = [(1.1, 0.05, 40), (0.8, 0.25, 7), (1.1, 0.05, 13)]
    accountant = RDPAccountant()
    for noise, rate, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = accountant.get_epsilon(delta=1e-5)
    assert epsilon_of(history, delta=1e-5, accountant="rdp") == pytest.approx(expected, rel=1e-12)
