"""Book-keeping DP-SGD (``--dp-mode bookkeeping``) against brute force and against mixed-ghost.

The clipped gradient sum book-keeping forms from its one backward pass must equal a
one-sample-at-a-time clip-and-sum in float64 (relative error 1e-6 or better), and, with the same
noise, give the same update as ``mixed-ghost``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clinfl.algorithms import available_algorithms
from clinfl.config import GRAD_SAMPLE_CHOICES, PrivacyConfig, RunConfig, validate_run_config
from clinfl.errors import ModelError
from clinfl.privacy.bookkeeping import enable_bookkeeping
from clinfl.privacy.ghost_norms import NormChoice, enable_mixed_ghost
from clinfl.privacy.settings import GRAD_SAMPLE_MODES, opacus_grad_sample_mode
from site_agent.private_training import _PerSampleCriterion

from .test_ghost_norms import (
    _BCE,
    CLIP,
    TOLERANCE,
    _clipped_sum,
    _fedncalign,
    _per_sample_grads,
    _relative_error,
    _tiny_case,
)
from .test_private_training import SETTINGS, SPEC, _site


def _make_private(
    model: nn.Module,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    clip: float = CLIP,
    noise: float = 0.0,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    """Opacus' ghost-clipping module, optimizer (SGD) and loss wrapper around ``model``."""
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=x.shape[0]),
            noise_multiplier=noise,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode=opacus_grad_sample_mode("bookkeeping"),
            criterion=criterion,
            noise_generator=torch.Generator().manual_seed(seed),
        )


def _bookkeeping_sums(
    model: nn.Module,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    choice: NormChoice = "mixed",
) -> dict[str, torch.Tensor]:
    """One book-keeping backward pass; return every parameter's clipped gradient sum."""
    bookkeeping = enable_bookkeeping(model, choice)
    wrapped = _make_private(model, criterion, x, y)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bookkeeping.reset()
        bookkeeping.backward(criterion(wrapped(x), y).mean(), wrapped)
    return {n: p.grad.detach().clone() for n, p in wrapped._module.named_parameters()}


@pytest.mark.parametrize("choice", ["mixed", "ghost", "instantiate"])
@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_a_convolution_s_clipped_sum_equals_brute_force(
    choice: NormChoice, stride: int, padding: int
) -> None:
    """Conv2d with bias (the case under test), GroupNorm, a 1x1 conv and a Linear layer."""
    model, reference, x, y = _tiny_case(16, stride, padding)
    expected = _clipped_sum(_per_sample_grads(reference, _BCE(), x, y), CLIP)
    sums = _bookkeeping_sums(model, _BCE(), x, y, choice)
    assert set(sums) == set(expected)
    for name, value in expected.items():
        assert _relative_error(sums[name], value) <= TOLERANCE, name


@pytest.mark.parametrize(
    ("image_size", "method"),
    [
        (16, {}),
        (32, {}),
        (64, {}),  # an 8x8 LADM map; the mixed rule takes ghost norms for more layers
        (16, {"query_scaling": "layernorm"}),  # LayerNorm on LADM's queries and tokens
        (32, {"name": "fedavg"}),  # a Linear head with a bias
    ],
)
def test_the_whole_model_s_clipped_sum_equals_brute_force(
    image_size: int, method: dict[str, object]
) -> None:
    """ResNet-18 (GroupNorm, small stem), LADM's Linear layers and the ETF bias layer."""
    algorithm, reference, x, y = _fedncalign(image_size, batch=3, width=16, **method)
    criterion = _PerSampleCriterion(algorithm)
    grads = _per_sample_grads(reference, algorithm.per_sample_loss, x, y)
    expected = _clipped_sum(grads, CLIP)
    sums = _bookkeeping_sums(copy.deepcopy(reference), criterion, x, y)
    assert set(sums) == set(expected)
    scale = max(float(value.abs().max()) for value in expected.values())
    assert scale > 0
    # relative to the largest entry: LADM's key bias has a gradient of exactly zero
    worst = max(float((sums[n] - value).abs().max()) for n, value in expected.items())
    assert worst <= TOLERANCE * scale


def test_a_samples_clipped_contribution_does_not_depend_on_its_batchmates() -> None:
    """S({a, b}) - S({b}) == S({a, c}) - S({c}): a's clipped gradient is its own."""
    algorithm, template, x, y = _fedncalign(16, batch=1, width=16)
    others = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(9)).double()
    other_y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float64)

    def clipped_sum(xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(template)
        return _bookkeeping_sums(model, _PerSampleCriterion(algorithm), xs, ys)

    a_with_b = clipped_sum(torch.cat([x, others[:1]]), torch.cat([y, other_y[:1]]))
    b_alone = clipped_sum(others[:1], other_y[:1])
    a_with_c = clipped_sum(torch.cat([x, others[1:]]), torch.cat([y, other_y[1:]]))
    c_alone = clipped_sum(others[1:], other_y[1:])
    first = {name: value - b_alone[name] for name, value in a_with_b.items()}
    second = {name: a_with_c[name] - c_alone[name] for name in a_with_b}
    scale = max(float(value.abs().max()) for value in second.values())
    assert scale > 0
    assert max(float((first[n] - second[n]).abs().max()) for n in first) <= TOLERANCE * scale


def test_the_same_noise_gives_mixed_ghost_s_update() -> None:
    """Clipped sum, noise from the same generator seed, scaling and SGD step: one update."""
    algorithm, template, x, y = _fedncalign(16, batch=3, width=16)
    updates = []
    for mode in ("mixed-ghost", "bookkeeping"):
        model = copy.deepcopy(template)
        criterion = _PerSampleCriterion(algorithm)
        bookkeeping = enable_bookkeeping(model) if mode == "bookkeeping" else None
        if bookkeeping is None:
            enable_mixed_ghost(model)
        wrapped, optimizer, loss_wrapper, _ = _make_private(
            model, criterion, x, y, noise=1.0, seed=5
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if bookkeeping is None:
                loss_wrapper(wrapped(x), y).backward()
            else:
                bookkeeping.backward(criterion(wrapped(x), y).mean(), wrapped)
        optimizer.step()
        after = dict(wrapped._module.named_parameters())
        updates.append({n: (after[n] - p).detach() for n, p in template.named_parameters()})
    scale = max(float(value.abs().max()) for value in updates[0].values())
    assert scale > 0
    worst = max(float((updates[1][n] - value).abs().max()) for n, value in updates[0].items())
    assert worst <= 1e-9 * scale


def test_a_dp_round_with_bookkeeping_matches_mixed_ghost_end_to_end(tmp_path: Path) -> None:
    """Through DPSteps (Poisson batches, ledger, AdamW): the same noise, the same update."""
    deltas = []
    for mode in ("mixed-ghost", "bookkeeping"):
        # Opacus' own noise (from the global generator), not the secure one, to fix its seed
        site, algorithm = _site(tmp_path / mode, mode=mode, secure_rng=False)
        state = algorithm.travelling_state(algorithm.build_model(SPEC))
        torch.manual_seed(11)  # Opacus draws the noise from the global generator
        update = site.train_round(state, SETTINGS)
        assert update.steps == 3
        deltas.append(update.delta)
    assert set(deltas[0]) == set(deltas[1])
    # float32, and AdamW divides by each entry's gradient scale, which magnifies rounding where
    # a noised gradient is near zero: equal to 1% of the largest step (exactness is the float64
    # tests' job above; measured here: 2e-3 of it)
    scale = max(float(value.abs().max()) for value in deltas[0].values())
    assert scale > 0
    worst = max(float((deltas[1][n] - value).abs().max()) for n, value in deltas[0].items())
    assert worst <= 1e-2 * scale


def test_a_layer_book_keeping_does_not_cover_is_refused_when_the_engine_is_built() -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ModelError, match=r"0 \(Conv1d\)") as caught:
        enable_bookkeeping(model)
    assert "mixed-ghost" in caught.value.remedy
    assert not hasattr(model[2], "_clinfl_bookkeeping")  # nothing was changed


def test_a_layer_whose_hook_did_not_run_is_an_error_not_a_wrong_gradient() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)  # computed, never reaches the loss
            out: torch.Tensor = self.used(x)
            return out

    x, y = torch.randn(2, 3, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"no record for Linear\.weight"):
        _bookkeeping_sums(TwoHeads().double(), _BCE(), x, y)


def test_the_mode_is_accepted_wherever_modes_are_listed() -> None:
    assert (
        "auto",
        *GRAD_SAMPLE_MODES,
    ) == GRAD_SAMPLE_CHOICES and "bookkeeping" in GRAD_SAMPLE_MODES
    assert opacus_grad_sample_mode("bookkeeping") == "ghost"  # Opacus' module and optimizer
    config = RunConfig(privacy=PrivacyConfig(grad_sample_mode="bookkeeping"))
    validate_run_config(config, known_methods=available_algorithms())


def test_the_benchmark_report_shows_the_mode() -> None:
    from benchmarks.privacy_report import render_privacy

    cell = {"image_size": 64, "step_seconds": 0.3, "peak_rss_mb": 900.0}
    steps = [{**cell, "mode": "none"}, {**cell, "mode": "bookkeeping", "time_ratio": 1.5}]
    phases = {"backward (one pass)": 0.1, "clipping factors + clipped sums": 0.05}
    profile = [{"mode": "bookkeeping", "image_size": 64, "phases": phases}]
    text = "\n".join(render_privacy({"steps": steps, "profile": profile}))
    assert "| 64 | book-keeping (mixed ghost norms, one backward) | 0.30 | 1.50x |" in text
    assert "| 64 | book-keeping (mixed ghost norms, one backward) | backward (one pass) |" in text
