"""A site's DP-SGD settings (from its policy) and the per-sample-gradient modes clinfl supports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only: the run config's validation imports this module
    from clinfl.config.policy import DPPolicy

GRAD_SAMPLE_MODES = ("hooks", "ew", "ghost", "mixed-ghost", "bookkeeping", "functorch")
# Modes that run Opacus' fast-gradient-clipping path ("ghost"): a per-sample loss criterion, two
# backward passes. mixed-ghost adds clinfl's convolution and GroupNorm norm samplers
# (clinfl/privacy/ghost_norms.py) with a per-layer choice of ghost norm or instantiation.
GHOST_CLIPPING_MODES = ("ghost", "mixed-ghost")
# bookkeeping: mixed-ghost's norms on Opacus' ghost-clipping module and optimizer, but one
# backward pass; the clipped sum is formed per layer from what that pass kept
# (clinfl/privacy/bookkeeping.py).
BOOKKEEPING_MODE = "bookkeeping"
# Fastest mode measured for this model on the reference CPU (benchmarks/privacy.py, batch 32,
# 2 threads): bookkeeping at 32, 64 and 128 px (1.56x, 1.43x and 1.79x the non-private step
# on 2026-12-01, docs/benchmarks.md); hooks at 16 px (an earlier measurement; the benchmark
# starts at 32 px); above 128 px, where the ghost-norm modes are not measured, expanded weights
# ("ew"), the fastest there in the design notes' 224 px measurement.
_FASTEST_BY_SIZE = ((129, "ew"), (32, "bookkeeping"), (0, "hooks"))


def default_grad_sample_mode(image_size: int) -> str:
    """Return the fastest correct per-sample-gradient mode measured for this image size."""
    for smallest, mode in _FASTEST_BY_SIZE:
        if image_size >= smallest:
            return mode
    return "hooks"


PER_SAMPLE_GRADIENT_MODES = ("hooks", "ew", "functorch")
"""The modes that form each sample's gradient (``p.grad_sample``), not only its norm: the only
ones augmentation multiplicity can average over a sample's views before clipping."""


def has_per_sample_gradients(mode: str) -> bool:
    """Return whether ``mode`` forms per-sample gradients (not only ghost norms)."""
    return mode in PER_SAMPLE_GRADIENT_MODES


def resolve_grad_sample_mode(mode: str, image_size: int, *, augment_multiplicity: int = 1) -> str:
    """Return the run's ``mode``, or for ``auto`` the fastest one measured at ``image_size``.

    With ``augment_multiplicity`` > 1, ``auto`` is ``hooks`` at every size: the views' gradients
    are averaged per sample before clipping, which needs per-sample gradients (the ghost-norm
    modes only see norms), and hooks handles every backbone (expanded weights does not handle
    the pretrained backbones' depthwise convolutions).
    """
    if mode != "auto":
        return mode
    return "hooks" if augment_multiplicity > 1 else default_grad_sample_mode(image_size)


def opacus_grad_sample_mode(mode: str) -> str:
    """Return the ``grad_sample_mode`` Opacus' ``make_private`` takes for clinfl's ``mode``.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown per-sample-gradient mode {mode!r}")
    return "ghost" if mode in (*GHOST_CLIPPING_MODES, BOOKKEEPING_MODE) else mode


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD as one site runs it."""

    epsilon_budget: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float | None
    target_epsilon_per_round: float | None
    accountant: str
    secure_rng: bool
    grad_sample_mode: str
    planned_rounds: int | None = None

    @classmethod
    def from_policy(cls, policy: DPPolicy, *, grad_sample_mode: str) -> DPSettings:
        """Take the DP terms of a (validated) policy and the run's per-sample-gradient mode.

        Raises:
            ValueError: for an unknown mode.
        """
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"unknown per-sample-gradient mode {grad_sample_mode!r}")
        return cls(
            epsilon_budget=policy.epsilon_budget,
            delta=policy.delta,
            max_grad_norm=policy.max_grad_norm,
            noise_multiplier=policy.noise_multiplier,
            target_epsilon_per_round=policy.target_epsilon_per_round,
            accountant=policy.accountant,
            secure_rng=policy.secure_rng,
            grad_sample_mode=grad_sample_mode,
            planned_rounds=policy.planned_rounds,
        )
