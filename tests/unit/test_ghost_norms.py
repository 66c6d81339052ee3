"""Ghost norms for convolutions and GroupNorm (mixed-ghost DP-SGD) against brute force in float64.

Every per-sample gradient norm and clipped gradient sum Opacus' ghost-clipping path computes with
clinfl's norm samplers must equal a one-sample-at-a-time autograd computation (relative error
1e-6 or better; float64 gives about 1e-15).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import MethodConfig
from clinfl.privacy.ghost_norms import (
    enable_mixed_ghost,
    ghost_norm_is_cheaper,
    layer_choices,
    register_ghost_norm_samplers,
    set_norm_choice,
)
from clinfl.privacy.settings import opacus_grad_sample_mode
from site_agent.ledger import SiteLedger
from site_agent.private_training import _PerSampleCriterion

from .test_private_training import SETTINGS, _site

TOLERANCE = 1e-6
CLIP = 0.05  # small enough that every sample is clipped, each by its own factor


class TinyConvNet(nn.Module):
    """Conv (the case under test) -> GroupNorm -> ReLU -> 1x1 conv -> pool -> Linear."""

    def __init__(self, *, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, stride=stride, padding=padding, bias=True)
        self.norm = nn.GroupNorm(1, 3)
        self.mix = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return two logits per image."""
        hidden = self.mix(torch.relu(self.norm(self.conv(x))))
        out: torch.Tensor = self.head(hidden.mean(dim=(2, 3)))
        return out


class _BCE(nn.Module):
    """Per-sample binary cross-entropy summed over the outputs: ``[B]``."""

    reduction = "mean"

    def forward(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return each sample's loss."""
        losses = nn.functional.binary_cross_entropy_with_logits(output, targets, reduction="none")
        return losses.sum(dim=1)


def _per_sample_grads(
    model: nn.Module, loss_of: object, x: torch.Tensor, y: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """Each sample's gradient, one sample at a time."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = []
    for i in range(x.shape[0]):
        loss = loss_of(model(x[i : i + 1]), y[i : i + 1]).sum()  # type: ignore[operator]
        values = torch.autograd.grad(loss, list(params.values()))
        grads.append(dict(zip(params, values, strict=True)))
    return grads


def _clipped_sum(grads: list[dict[str, torch.Tensor]], clip: float) -> dict[str, torch.Tensor]:
    total = {name: torch.zeros_like(value) for name, value in grads[0].items()}
    for grad in grads:
        norm = torch.sqrt(sum((g**2).sum() for g in grad.values()))
        factor = min(1.0, clip / (norm.item() + 1e-6))  # Opacus' rule
        for name, value in grad.items():
            total[name] += factor * value
    return total


def _ghost_clip(
    model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float = CLIP
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Run Opacus' ghost clipping on ``model``; return the wrapper and the clipped sums."""
    from opacus import PrivacyEngine

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode=opacus_grad_sample_mode("mixed-ghost"),
            criterion=criterion,
        )
        made[2](made[0](x), y).backward()
    sums = {n: p.grad.detach().clone() for n, p in made[0]._module.named_parameters()}
    return made[0], sums


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-300))


def _tiny_case(size: int, stride: int, padding: int, seed: int = 0):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyConvNet(stride=stride, padding=padding).double()
    reference = TinyConvNet(stride=stride, padding=padding).double()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, size, size, generator=generator, dtype=torch.float64)
    y = (torch.rand(2, 2, generator=generator) < 0.5).double()
    return model, reference, x, y


@pytest.mark.parametrize("choice", ["ghost", "instantiate"])
@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_conv_and_group_norm_norms_and_clipped_sum_equal_brute_force(
    choice: str, size: int, stride: int, padding: int
) -> None:
    model, reference, x, y = _tiny_case(size, stride, padding)
    set_norm_choice(model, choice)  # type: ignore[arg-type]
    grads = _per_sample_grads(reference, _BCE(), x, y)
    wrapped, sums = _ghost_clip(model, _BCE(), x, y)
    inner = dict(wrapped._module.named_parameters())
    for name in grads[0]:  # conv weight and bias, GroupNorm weight and bias, 1x1 conv, Linear
        expected = torch.stack([g[name].flatten().norm() for g in grads])
        assert _relative_error(inner[name]._norm_sample, expected) <= TOLERANCE, name
    expected_sums = _clipped_sum(grads, CLIP)
    for name, expected in expected_sums.items():
        assert _relative_error(sums[name], expected) <= TOLERANCE, name


def _fedncalign(image_size: int, batch: int = 2, **method: object):  # type: ignore[no-untyped-def]
    """FedNCAlign-ML (or ``name=...``) in float64 with a batch; ``method`` changes its config."""
    config = {"name": "fedncalign", "lambda_rej": 1.0, **method}
    algorithm = create_algorithm(MethodConfig(**config))  # type: ignore[arg-type]
    spec = ModelSpec(num_classes=4, image_size=image_size, federation_seed=3, init_seed=0)
    torch.manual_seed(0)
    model = algorithm.build_model(spec).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, image_size, image_size, generator=generator, dtype=torch.float64)
    y = (torch.rand(batch, 4, generator=generator) < 0.4).double()
    return algorithm, model, x, y


@pytest.mark.parametrize(("image_size", "choices"), [(16, ("mixed",)), (64, ("mixed", "ghost"))])
def test_every_layer_of_the_model_matches_brute_force(
    image_size: int, choices: tuple[str, ...]
) -> None:
    """ResNet-18 (small stem at 16 px, standard from 64), GroupNorm, LADM's Linear layers and
    the ETF bias layer; ``ghost`` forces ghost norms on every convolution."""
    algorithm, reference, x, y = _fedncalign(image_size)
    kinds = {type(m) for m in reference.modules() if any(True for _ in m.parameters(False))}
    assert kinds == {nn.Conv2d, nn.GroupNorm, nn.Linear}

    def loss_of(output: object, targets: torch.Tensor) -> torch.Tensor:
        return algorithm.per_sample_loss(output, targets)

    grads = _per_sample_grads(reference, loss_of, x, y)
    totals = torch.stack([torch.sqrt(sum((g**2).sum() for g in grad.values())) for grad in grads])
    expected_sums = _clipped_sum(grads, CLIP)
    scale = max(float(e.abs().max()) for e in expected_sums.values())
    for choice in choices:
        model = copy.deepcopy(reference)
        set_norm_choice(model, choice)  # type: ignore[arg-type]
        wrapped, sums = _ghost_clip(model, _PerSampleCriterion(algorithm), x, y)
        assert _relative_error(wrapped.per_sample_gradient_norms, totals) <= TOLERANCE
        inner = dict(wrapped._module.named_parameters())
        # per layer, relative to each sample's whole gradient norm: LADM's key bias has a
        # gradient of exactly zero (softmax ignores a shift), which Opacus' Linear norm sampler
        # gives as about 1e-10
        worst = max(
            float(
                ((inner[n]._norm_sample - torch.stack([g[n].norm() for g in grads])) / totals)
                .abs()
                .max()
            )
            for n in grads[0]
        )
        assert worst <= TOLERANCE, choice
        error = max(float((sums[n] - e).abs().max()) for n, e in expected_sums.items())
        assert error <= TOLERANCE * scale, choice


def test_a_samples_clipped_contribution_does_not_depend_on_its_batchmates() -> None:
    """S({a, b}) - S({b}) == S({a, c}) - S({c}): a's clipped gradient is its own."""
    algorithm, template, x, y = _fedncalign(16, batch=1)
    other_x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(9)).double()
    other_y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float64)

    def clipped_sum(xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(template)
        enable_mixed_ghost(model)
        return _ghost_clip(model, _PerSampleCriterion(algorithm), xs, ys)[1]

    a_with_b = clipped_sum(torch.cat([x, other_x[:1]]), torch.cat([y, other_y[:1]]))
    b_alone = clipped_sum(other_x[:1], other_y[:1])
    a_with_c = clipped_sum(torch.cat([x, other_x[1:]]), torch.cat([y, other_y[1:]]))
    c_alone = clipped_sum(other_x[1:], other_y[1:])
    first = {name: value - b_alone[name] for name, value in a_with_b.items()}
    second = {name: a_with_c[name] - c_alone[name] for name in a_with_b}
    scale = max(float(value.abs().max()) for value in second.values())
    assert scale > 0
    assert max(float((first[n] - second[n]).abs().max()) for n in first) <= TOLERANCE * scale


def test_the_ledger_epsilon_does_not_depend_on_the_mode(tmp_path: Path) -> None:
    epsilons = []
    for mode in ("hooks", "mixed-ghost", "bookkeeping"):
        site, algorithm = _site(tmp_path / mode, mode=mode)
        state = algorithm.travelling_state(algorithm.build_model(site_spec()))
        update = site.train_round(state, SETTINGS)
        site.update_sent(secagg=True)
        assert update.steps == 3 and all(torch.isfinite(v).all() for v in update.delta.values())
        ledger = SiteLedger(tmp_path / mode)
        assert ledger.rounds()[0].grad_sample_mode == mode
        epsilons.append((ledger.epsilon(delta=1e-5, accountant="rdp"), site.epsilon()))
    assert all(e == epsilons[0] for e in epsilons)
    assert epsilons[0][0] == pytest.approx(epsilons[0][1])


def site_spec() -> ModelSpec:
    """The model spec the private-training tests' sites use."""
    from .test_private_training import SPEC

    return SPEC


def test_the_mixed_rule_picks_ghost_norms_for_the_late_stages() -> None:
    assert ghost_norm_is_cheaper(positions=4, fan_in=4608, fan_out=512)  # layer4 at 64 px
    assert not ghost_norm_is_cheaper(positions=1024, fan_in=27, fan_out=64)  # small stem, 32 px
    algorithm = create_algorithm(MethodConfig(name="fedncalign"))
    model = algorithm.build_model(ModelSpec(14, 128, federation_seed=1, init_seed=0))
    choices = dict(layer_choices(model, 128))
    assert choices["backbone.conv1"] == "instantiate" and choices["backbone.layer1.0.conv1"] == (
        "instantiate"
    )
    assert all(v == "ghost" for k, v in choices.items() if k.startswith("backbone.layer4"))


def test_registering_the_samplers_is_idempotent_and_unknown_choices_are_refused() -> None:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as Hooks

    register_ghost_norm_samplers()
    register_ghost_norm_samplers()
    assert {nn.Conv2d, nn.GroupNorm, nn.Linear} <= set(Hooks.NORM_SAMPLERS)
    with pytest.raises(ValueError, match="unknown norm choice"):
        set_norm_choice(nn.Conv2d(1, 1, 1), "sometimes")  # type: ignore[arg-type]
