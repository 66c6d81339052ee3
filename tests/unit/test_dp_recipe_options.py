"""The DP recipe's run options: augmentation multiplicity, weight averaging, trained blocks.

Multiplicity averages each sample's views' gradients before clipping (checked against a float64
brute force) and leaves the ledger's charge alone; the moving average is the hand-computed one;
a ResNet-18 with frozen leading blocks trains under DP-SGD in every mode ``auto`` may pick.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import FederationConfig, MethodConfig, PrivacyConfig, RunConfig
from clinfl.config.policy import DPPolicy
from clinfl.config.validation import validate_run_config
from clinfl.data.imageset import ImageSet
from clinfl.errors import ConfigError, ValidationError
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.settings import DPSettings, opacus_grad_sample_mode, resolve_grad_sample_mode
from site_agent import private_training
from site_agent.augmentation import average_view_gradients, max_shift, translated_views
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.training import plain_trainer, simulation_random_bytes

SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=3, init_seed=0)
SETTINGS = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-2)


def _algorithm(name: str = "fedncalign", **changes: object):
    method = MethodConfig(name=name, lambda_rej=1.0, width=8, **changes)  # type: ignore[arg-type]
    return create_algorithm(method)


def _images(count: int, size: int = 16, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    targets = (rng.random((count, 4)) < 0.4).astype(np.uint8)
    groups = np.arange(count, dtype=np.int64)
    return ImageSet(images=images, targets=targets, groups=groups, class_names=("a", "b", "c", "d"))


def _dp(mode: str = "hooks") -> DPSettings:
    return DPSettings.from_policy(DPPolicy(epsilon_budget=50.0), grad_sample_mode=mode)


def _private(tmp_path: Path, algorithm, *, views: int = 1, ema: float | None = None, **extra):
    return private_trainer(
        "site-1",
        _images(24),
        algorithm,
        SPEC,
        dp=extra.pop("dp", _dp()),
        ledger=SiteLedger(tmp_path),
        run_id="run-a",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        random_bytes=simulation_random_bytes(1),
        augment_multiplicity=views,
        ema_decay=ema,
        **extra,
    )


# --- the views ------------------------------------------------------------------------------


def test_each_view_is_its_sample_translated_by_at_most_the_shift() -> None:
    images = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    views = translated_views(images, 5, torch.Generator().manual_seed(0))
    shift = max_shift(16, 16)
    assert shift == 2 and views.shape == (15, 2, 16, 16)
    padded = torch.nn.functional.pad(images, (shift,) * 4, mode="replicate")
    offsets = set()
    for row, view in enumerate(views):
        sample = padded[row // 5]
        found = [
            (dy, dx)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
            if torch.equal(view, sample[:, dy : dy + 16, dx : dx + 16])
        ]
        assert len(found) == 1  # a crop of its own sample, at one offset within the shift
        offsets.add(found[0])
    assert len(offsets) > 3  # the views differ
    empty = translated_views(images[:0], 5, torch.Generator())
    assert empty.shape == (0, 2, 16, 16)


def test_the_views_come_from_the_generator_alone() -> None:
    images = torch.randn(4, 1, 32, 32)
    first = translated_views(images, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global generator plays no part
    again = translated_views(images, 3, torch.Generator().manual_seed(7))
    other = translated_views(images, 3, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


# --- multiplicity under DP-SGD against brute force --------------------------------------------


def _view_gradients(model, algorithm, views: torch.Tensor, targets: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for row in range(views.shape[0]):
        loss = algorithm.per_sample_loss(model(views[row : row + 1]), targets[row : row + 1])
        grads.append(torch.autograd.grad(loss.sum(), params))
    return grads


def _clipped_mean_of_view_means(grads, samples: int, views: int, clip: float, divisor: float):
    """sum over samples of clip(mean over its views of each view's gradient), / divisor."""
    total = [torch.zeros_like(g) for g in grads[0]]
    for sample in range(samples):
        own = grads[sample * views : (sample + 1) * views]
        mean = [torch.stack(parts).mean(0) for parts in zip(*own, strict=True)]
        norm = torch.sqrt(sum((g**2).sum() for g in mean)).item()
        factor = min(1.0, clip / (norm + 1e-6))
        total = [t + g * factor for t, g in zip(total, mean, strict=True)]
    return [t / divisor for t in total]


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch"])
def test_a_sample_s_clipped_gradient_is_the_clipped_mean_of_its_views(mode: str) -> None:
    from opacus import PrivacyEngine

    samples, views, clip = 3, 3, 0.05  # small enough that every sample is clipped differently
    algorithm = _algorithm()
    model = algorithm.build_model(SPEC).double()
    reference = algorithm.build_model(SPEC).double()
    reference.load_state_dict(model.state_dict())
    data = _images(samples)
    x = ((torch.from_numpy(data.images).double() / 255.0 - 0.5) / 0.25).unsqueeze(1)
    y = torch.from_numpy(data.targets).double()
    view_x = translated_views(x, views, torch.Generator().manual_seed(0))
    view_y = y.repeat_interleave(views, dim=0)
    grads = _view_gradients(reference, algorithm, view_x, view_y)
    expected = _clipped_mean_of_view_means(grads, samples, views, clip, divisor=samples)
    unaveraged = _clipped_mean_of_view_means(grads, samples * views, 1, clip, samples * views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped, optimizer, _ = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=samples),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode=opacus_grad_sample_mode(mode),
        )
        algorithm.per_sample_loss(wrapped(view_x), view_y).mean().backward()
        average_view_gradients(wrapped._module.parameters(), views)
        optimizer.pre_step()
    got = [p.grad for p in wrapped._module.parameters() if p.requires_grad]
    scale = max(e.abs().max().item() for e in expected)
    worst = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
    apart = max((u - e).abs().max().item() for u, e in zip(unaveraged, expected, strict=True))
    assert scale > 0 and worst <= 1e-9 * max(1.0, scale)
    assert apart > 1e-3 * scale  # clipping each view alone would give another answer


def test_a_site_s_dp_step_with_views_uses_the_clipped_mean_of_each_sample_s_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    algorithm = _algorithm()
    site = _private(tmp_path, algorithm, views=3)
    strategy = site.strategy
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(images, targets, views, generator):
        made = private_training_view_batch(images, targets, views, generator)
        seen.append(made)
        return made

    private_training_view_batch = private_training.view_batch
    monkeypatch.setattr(private_training, "view_batch", spy)
    strategy.optimizer.noise_multiplier = 0.0  # the ledger still charges 1.0; no noise to compare
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    strategy.begin_round(SETTINGS)
    from site_agent.model_state import load_travelling_state

    load_travelling_state(strategy.model, state)
    images, targets = next(b for b in strategy.batches(SETTINGS) if b[0].shape[0] > 1)
    before = algorithm.build_model(SPEC)
    before.load_state_dict(strategy.model.state_dict())
    loss = strategy.loss(images, targets, state, {})
    strategy.step(loss, state, {}, SETTINGS.lr)  # end_round would drop the gradients
    (view_x, view_y) = seen[-1]
    assert view_x.shape[0] == 3 * images.shape[0]
    assert torch.equal(view_y, targets.repeat_interleave(3, dim=0))
    grads = _view_gradients(before, algorithm, view_x, view_y)
    divisor = strategy.optimizer.expected_batch_size
    expected = _clipped_mean_of_view_means(
        grads, images.shape[0], 3, strategy._dp.max_grad_norm, divisor
    )
    got = [p.grad for p in strategy.model.parameters() if p.requires_grad]
    scale = max(e.abs().max().item() for e in expected)
    worst = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
    assert scale > 0 and worst <= 1e-4 * scale


def test_multiplicity_leaves_the_ledger_s_charge_as_it_was(tmp_path: Path) -> None:
    charged = {}
    for views in (1, 3):
        algorithm = _algorithm()
        site = _private(tmp_path / str(views), algorithm, views=views)
        state = algorithm.travelling_state(algorithm.build_model(SPEC))
        update = site.train_round(state, SETTINGS)
        assert all(bool(torch.isfinite(v).all()) for v in update.delta.values())
        (row,) = SiteLedger(tmp_path / str(views)).rounds()
        charged[views] = (row.noise_multiplier, row.sample_rate, row.steps, row.epsilon)
    assert charged[1] == charged[3]


def test_multiplicity_refuses_a_mode_without_per_sample_gradients(tmp_path: Path) -> None:
    for mode in ("ghost", "mixed-ghost", "bookkeeping"):
        with pytest.raises(ConfigError, match="needs per-sample gradients") as caught:
            _private(tmp_path, _algorithm(), views=2, dp=_dp(mode))
        assert "--dp-mode auto or hooks" in caught.value.remedy
    _private(tmp_path, _algorithm(), views=1, dp=_dp("bookkeeping"))  # K = 1: any mode


def test_auto_means_hooks_with_multiplicity_and_the_measured_table_without() -> None:
    assert resolve_grad_sample_mode("auto", 64) == "bookkeeping"
    assert resolve_grad_sample_mode("auto", 224) == "ew"
    assert resolve_grad_sample_mode("auto", 64, augment_multiplicity=2) == "hooks"
    assert resolve_grad_sample_mode("auto", 224, augment_multiplicity=4) == "hooks"
    assert resolve_grad_sample_mode("ew", 64, augment_multiplicity=4) == "ew"


def test_the_config_checks_both_options_and_names_the_fix() -> None:
    def config(**federation: object) -> RunConfig:
        return RunConfig(federation=FederationConfig(**federation))  # type: ignore[arg-type]

    validate_run_config(
        config(augment_multiplicity=4, ema_decay=0.9), known_methods=("fedncalign",)
    )
    for bad, field in (
        (config(augment_multiplicity=0), "augment_multiplicity"),
        (config(ema_decay=1.0), "ema_decay"),
        (config(ema_decay=0.0), "ema_decay"),
    ):
        with pytest.raises(ValidationError, match=field):
            validate_run_config(bad, known_methods=("fedncalign",))
    ghost = RunConfig(
        federation=FederationConfig(augment_multiplicity=2),
        privacy=PrivacyConfig(grad_sample_mode="bookkeeping"),
    )
    with pytest.raises(ValidationError, match=r"grad_sample_mode.*--dp-mode auto"):
        validate_run_config(ghost, known_methods=("fedncalign",))


def test_plain_training_with_views_takes_the_mean_loss_over_the_views(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    algorithm = _algorithm("fedavg")
    rows: list[int] = []
    local_loss = algorithm.local_loss

    def counting(model, images, targets, reference, memory):
        rows.append(int(images.shape[0]))
        return local_loss(model, images, targets, reference, memory)

    monkeypatch.setattr(algorithm, "local_loss", counting)
    site = plain_trainer(
        "site-1",
        _images(16),
        algorithm,
        SPEC,
        weight_decay=0.0,
        random_bytes=simulation_random_bytes(2),
        augment_multiplicity=3,
    )
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    update = site.train_round(state, SETTINGS)
    assert rows == [24, 24] and update.steps == 2  # 2 batches of 8 samples, 3 views each
    assert any(float(v.abs().max()) > 0 for v in update.delta.values())


def test_one_view_and_no_average_train_exactly_as_before(tmp_path: Path) -> None:
    """K = 1 and no EMA draw the same randomness and give bit-identical updates."""
    algorithm = _algorithm("fedavg")
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    updates = []
    for explicit in (False, True):
        options = {"augment_multiplicity": 1, "ema_decay": None} if explicit else {}
        site = plain_trainer(
            "s",
            _images(16),
            algorithm,
            SPEC,
            weight_decay=0.0,
            random_bytes=simulation_random_bytes(2),
            **options,  # type: ignore[arg-type]
        )
        updates.append(site.train_round(state, SETTINGS).delta)
    assert all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])
    draws: dict[int, int] = {}
    for views in (1, 2):
        source = simulation_random_bytes(2)
        count = [0]

        def counted(n: int, source=source, count=count) -> bytes:
            count[0] += 1
            return source(n)

        site = plain_trainer(
            "s",
            _images(16),
            algorithm,
            SPEC,
            weight_decay=0.0,
            random_bytes=counted,
            augment_multiplicity=views,
        )
        site.train_round(state, SETTINGS)
        draws[views] = count[0]
    assert draws[2] == draws[1] + 1  # K = 1 draws nothing for views


# --- the moving average -----------------------------------------------------------------------


@pytest.mark.parametrize("private", [False, True])
def test_the_sent_update_is_the_moving_average_of_the_steps(tmp_path: Path, private: bool) -> None:
    decay = 0.6
    algorithm = _algorithm("fedavg")
    state = algorithm.travelling_state(algorithm.build_model(SPEC))
    snapshots: list[dict[str, torch.Tensor]] = []
    sites = []

    def record(site_id: str, taken: int, total: int) -> None:
        params = sites[0].model.named_parameters()
        snapshots.append({n: p.detach().clone() for n, p in params if p.requires_grad})

    for ema in (decay, None):
        snapshots.clear()
        sites.clear()
        if private:
            site = _private(tmp_path / str(ema), algorithm, ema=ema, on_step=record)
        else:
            site = plain_trainer(
                "s",
                _images(24),
                algorithm,
                SPEC,
                weight_decay=0.0,
                random_bytes=simulation_random_bytes(2),
                on_step=record,
                ema_decay=ema,
            )
        sites.append(site)
        update = site.train_round(state, SETTINGS)
        assert len(snapshots) == update.steps >= 2
        for name, after in snapshots[-1].items():
            if ema is None:  # the last step's parameters, as always
                assert torch.equal(update.delta[name], after - state[name])
                continue
            average = state[name].clone()
            for step in snapshots:
                average = decay * average + (1 - decay) * step[name]
            assert torch.allclose(update.delta[name], average - state[name], atol=1e-6)
            assert not torch.allclose(average, after)  # not the last step's parameters


# --- trained blocks under DP-SGD ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "views"), [("hooks", 1), ("bookkeeping", 1), ("ew", 1), ("hooks", 2)]
)
def test_a_resnet_trains_only_its_last_blocks_under_dp_in_every_auto_mode(
    tmp_path: Path, mode: str, views: int
) -> None:
    """hooks (below 32 px, or any size with views), bookkeeping (32-128 px), ew (above)."""
    method = MethodConfig(name="fedncalign", backbone="small", width=8, train_blocks=3)
    algorithm = create_algorithm(method)
    spec = ModelSpec(num_classes=4, image_size=32, federation_seed=3, init_seed=0)
    site = private_trainer(
        "site-1",
        _images(16, size=32),
        algorithm,
        spec,
        dp=_dp(mode),
        ledger=SiteLedger(tmp_path),
        run_id="run-a",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        random_bytes=simulation_random_bytes(1),
        augment_multiplicity=views,
    )
    model = site.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(
        n.startswith("backbone.layer4") for n, p in model.named_parameters() if p.requires_grad
    )
    assert frozen and all(not n.startswith("backbone.layer4") for n in frozen)
    state = algorithm.travelling_state(algorithm.build_model(spec))
    update = site.train_round(state, SETTINGS)
    assert not set(update.delta) & set(frozen)  # frozen blocks never travel
    assert any(float(d.abs().max()) > 0 for d in update.delta.values())
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
    assert all(getattr(after[n], "grad_sample", None) is None for n in frozen)
