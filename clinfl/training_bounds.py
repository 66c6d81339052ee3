"""Checking a round's settings against the site policy's ``[training]`` bounds (SECAGG.md, R7).

A malicious coordinator chooses every round setting it is allowed to choose. A site trains a
round only if its learning rate, local epochs and batch size lie within its policy's
:class:`~clinfl.policy.TrainingBounds`. :func:`check_round_settings` lists every setting
outside them at once, with its value, the bound and the fix.
"""

from __future__ import annotations

from clinfl.errors import PolicyViolation, Violation
from clinfl.federation.messages import RoundSettings
from clinfl.policy import TrainingBounds


def round_settings_violations(
    settings: RoundSettings, *, bounds: TrainingBounds
) -> list[Violation]:
    """Return every setting of ``settings`` outside ``bounds`` (empty when all fit)."""
    out: list[Violation] = []
    lr_range = f"{bounds.min_lr:g}..{bounds.max_lr:g} (training.min_lr..training.max_lr)"
    if not bounds.min_lr <= settings.lr <= bounds.max_lr:  # False for NaN too
        out.append(Violation("lr", settings.lr, lr_range, "ask for a learning rate in range"))
    if not 1 <= settings.local_epochs <= bounds.max_local_epochs:
        out.append(
            Violation(
                "local_epochs",
                settings.local_epochs,
                f"1..{bounds.max_local_epochs} (training.max_local_epochs)",
                "ask for fewer local epochs",
            )
        )
    if not bounds.min_batch_size <= settings.batch_size <= bounds.max_batch_size:
        out.append(
            Violation(
                "batch_size",
                settings.batch_size,
                f"{bounds.min_batch_size}..{bounds.max_batch_size} "
                "(training.min_batch_size..training.max_batch_size)",
                "ask for a batch size in range",
            )
        )
    return out


def check_round_settings(settings: RoundSettings, *, bounds: TrainingBounds, site_id: str) -> None:
    """Refuse round settings outside the site's ``[training]`` bounds, before any training step.

    Raises:
        PolicyViolation: listing every setting outside ``bounds`` with its value, bound and fix.
    """
    violations = round_settings_violations(settings, bounds=bounds)
    if violations:
        raise PolicyViolation(
            f"{site_id} refuses round {settings.round}'s settings: "
            + "; ".join(v.describe() for v in violations),
            remedy="the coordinator must ask for settings within the site's [training] bounds, "
            "or the site's privacy officer must widen them in its policy",
        )
