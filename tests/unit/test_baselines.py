"""SCAFFOLD, FedCurv and SphereFed: each one's defining property, and its sums fit the clip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.algorithms.base import RoundContext, is_auxiliary
from clinfl.algorithms.fedcurv import FISHER_PREFIX, TRAVEL_SCALE, WEIGHTED_PREFIX
from clinfl.algorithms.scaffold import VARIATE_SCALE, variate_key
from clinfl.algorithms.spherefed import feature_statistics
from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig, SecAggConfig
from clinfl.data.imageset import ImageSet
from clinfl.federation.messages import RoundSettings
from clinfl.model.sphere import SphereNet, augmented, calibrated_classifier
from clinfl.secagg.settings import largest_safe_scale
from clinfl.simulation import run_simulation
from site_agent.model_state import load_travelling_state
from site_agent.training import SiteTrainer, plain_trainer, simulation_random_bytes

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=7, init_seed=3)
SETTINGS = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)


def _data(seed: int, n: int = 24) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    targets = (rng.random((n, 4)) < 0.4).astype(np.uint8)
    targets[:, 0] = 1 - targets[:, 1]  # every sample has a label, every class both values
    return ImageSet(images, targets, np.arange(n), ("a", "b", "c", "d"))


def _site(method: str, data: ImageSet, **options: float) -> tuple[SiteTrainer, object]:
    algorithm = create_algorithm(MethodConfig(name=method, **options))  # type: ignore[arg-type]
    site = plain_trainer(
        "site-1", data, algorithm, SPEC, weight_decay=0.01, random_bytes=simulation_random_bytes(5)
    )
    return site, algorithm


def test_scaffold_with_zero_variates_is_fedavg() -> None:
    data = _data(0)
    fedavg, avg_algorithm = _site("fedavg", data)
    scaffold, scaffold_algorithm = _site("scaffold", data)
    plain_state = avg_algorithm.initial_state(avg_algorithm.build_model(SPEC))  # type: ignore[attr-defined]
    state = scaffold_algorithm.initial_state(scaffold_algorithm.build_model(SPEC))  # type: ignore[attr-defined]
    assert any(is_auxiliary(name) for name in state) and all(
        float(v.abs().max()) == 0 for n, v in state.items() if is_auxiliary(n)
    )
    avg_update = fedavg.train_round(plain_state, SETTINGS)
    update = scaffold.train_round(state, SETTINGS)
    for name, value in avg_update.delta.items():
        torch.testing.assert_close(update.delta[name], value, rtol=0, atol=1e-7)
    # c_i became the round's mean gradient; its change travels scaled, within the clip
    change = update.delta[variate_key("fc.bias")]
    assert float(change.abs().max()) > 0
    assert max(float(v.abs().max()) for n, v in update.delta.items() if is_auxiliary(n)) < 0.5
    torch.testing.assert_close(scaffold._memory[variate_key("fc.bias")] * VARIATE_SCALE, change)


def test_scaffold_correction_is_c_minus_ci() -> None:
    algorithm = create_algorithm(MethodConfig(name="scaffold"))
    model = algorithm.build_model(SPEC)
    state = algorithm.initial_state(model)
    state[variate_key("fc.bias")] = torch.full((4,), 0.5) * VARIATE_SCALE
    memory = {variate_key("fc.bias"): torch.full((4,), 0.2)}
    penalty = algorithm.regulariser(model, state, memory)
    assert penalty is not None
    (grad,) = torch.autograd.grad(penalty, [model.fc.bias])  # type: ignore[union-attr]
    torch.testing.assert_close(grad, torch.full((4,), 0.3))


def test_fedcurv_penalty_is_smallest_at_the_fisher_weighted_mean() -> None:
    algorithm = create_algorithm(MethodConfig(name="fedcurv", fedcurv_lambda=2.0))
    model = algorithm.build_model(SPEC)
    state = algorithm.initial_state(model)
    generator = torch.Generator().manual_seed(0)
    optimum = {}
    for name, param in model.named_parameters():
        fisher = torch.rand(param.shape, generator=generator) + 0.1
        centre = torch.randn(param.shape, generator=generator)
        state[FISHER_PREFIX + name] = fisher * TRAVEL_SCALE
        state[WEIGHTED_PREFIX + name] = fisher * centre * TRAVEL_SCALE
        optimum[name] = centre
    load_travelling_state(model, optimum)
    params = list(model.parameters())
    penalty = algorithm.regulariser(model, state, {})
    assert penalty is not None
    grads = torch.autograd.grad(penalty, params)
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    with torch.no_grad():
        params[0].add_(0.1)
    moved = algorithm.regulariser(model, state, {})
    assert moved is not None and float(moved.detach()) > float(penalty.detach())


def test_fedcurv_sends_max_normalised_fisher_and_lambda_zero_is_fedavg() -> None:
    data = _data(1)
    site, algorithm = _site("fedcurv", data)
    state = algorithm.initial_state(algorithm.build_model(SPEC))  # type: ignore[attr-defined]
    update = site.train_round(state, SETTINGS)
    fisher = [v for n, v in update.delta.items() if n.startswith(FISHER_PREFIX)]
    assert abs(max(float(v.max()) for v in fisher) - TRAVEL_SCALE) < 1e-6
    assert min(float(v.min()) for v in fisher) >= 0
    off, off_algorithm = _site("fedcurv", data, fedcurv_lambda=0.0)
    avg, avg_algorithm = _site("fedavg", data)
    a = off.train_round(off_algorithm.initial_state(off_algorithm.build_model(SPEC)), SETTINGS)  # type: ignore[attr-defined]
    b = avg.train_round(avg_algorithm.initial_state(avg_algorithm.build_model(SPEC)), SETTINGS)  # type: ignore[attr-defined]
    for name, value in b.delta.items():
        torch.testing.assert_close(a.delta[name], value, rtol=0, atol=0)


def test_spherefed_classifier_is_fixed_orthonormal_and_shared() -> None:
    data = _data(2)
    site, algorithm = _site("spherefed", data)
    model = site.model
    assert isinstance(model, SphereNet)
    rows = model.classifier.clone()
    torch.testing.assert_close(rows @ rows.T, torch.eye(4), atol=1e-5, rtol=0)
    other = algorithm.build_model(dataclasses.replace(SPEC, init_seed=99))  # type: ignore[attr-defined]
    torch.testing.assert_close(other.classifier, rows)
    state = algorithm.initial_state(algorithm.build_model(SPEC))  # type: ignore[attr-defined]
    assert "classifier" not in state
    site.train_round(state, SETTINGS)
    torch.testing.assert_close(model.classifier, rows, rtol=0, atol=0)


def test_spherefed_calibration_from_summed_statistics_is_pooled_least_squares() -> None:
    algorithm = create_algorithm(MethodConfig(name="spherefed"))
    model = algorithm.build_model(SPEC)
    assert isinstance(model, SphereNet)
    parts = [_data(3, 16), _data(4, 40)]
    stats = []
    for part in parts:
        x = torch.from_numpy(part.images).float().unsqueeze(1) / 255
        y = torch.from_numpy(part.targets).float()
        context = RoundContext(steps=1, lr=1e-3, batches=lambda x=x, y=y: [(x, y)])
        stats.append(feature_statistics(model, context))
    weights = [len(p) for p in parts]
    gram = sum(w * s[0] for w, s in zip(weights, stats, strict=True)) / sum(weights)
    cross = sum(w * s[1] for w, s in zip(weights, stats, strict=True)) / sum(weights)
    federated = calibrated_classifier(gram, cross)
    model.eval()
    with torch.no_grad():
        images = torch.cat([torch.from_numpy(p.images).float().unsqueeze(1) / 255 for p in parts])
        h = augmented(model.features(images)).double()
    targets = torch.cat([torch.from_numpy(p.targets) for p in parts]).double() * 2 - 1
    n = h.shape[0]
    pooled = torch.linalg.solve(
        h.T @ h / n + 1e-3 * torch.eye(h.shape[1]).double(), h.T @ targets / n
    )
    torch.testing.assert_close(federated.double(), pooled, atol=1e-3, rtol=1e-3)


def test_spherefed_solves_its_classifier_once_per_statistics() -> None:
    model = create_algorithm(MethodConfig(name="spherefed")).build_model(SPEC)
    assert isinstance(model, SphereNet)
    with torch.no_grad():
        model.calibration_gram.copy_(torch.eye(model.calibration_gram.shape[0]) * 0.25)
        model.calibration_cross.fill_(0.01)
    with torch.inference_mode():
        first = model.calibrated_weights()
    assert model.calibrated_weights() is first  # same statistics: no new solve
    expected = calibrated_classifier(model.calibration_gram * 4, model.calibration_cross * 4)
    torch.testing.assert_close(first, expected)
    with torch.no_grad():
        model.calibration_cross.fill_(0.02)
    changed = model.calibrated_weights()
    assert changed is not first
    torch.testing.assert_close(changed, 2 * first)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scaffold", "fedcurv", "spherefed"])
def test_secure_aggregation_gives_the_plain_result(method: str, tmp_path: Path) -> None:
    """Every travelling entry (model and algorithm state) fits the clip and sums exactly."""
    config = RunConfig(
        data=DataConfig(rho=0.6, max_samples=120, composites_per_pair=1),
        method=MethodConfig(name=method),
        federation=FederationConfig(sites=3, rounds=1, batch_size=32, seed=0),
        secagg=SecAggConfig(min_sites=2),
    )
    secure = run_simulation(config, tmp_path / "secure")
    plain = run_simulation(
        dataclasses.replace(config, secagg=SecAggConfig(enabled=False)), tmp_path / "plain"
    )
    settings = SecAggConfig()
    scale = largest_safe_scale(sites=3, weight_cap=settings.weight_cap, clip=settings.clip, bits=32)
    final_secure, final_plain = secure.outcome.final_state, plain.outcome.final_state
    assert any(is_auxiliary(n) for n in final_plain) or method == "spherefed"
    for name in final_plain:
        worst = float((final_secure[name] - final_plain[name]).abs().max())
        assert worst <= 1 / scale + 1e-6, name  # a clipped entry would be off by far more
