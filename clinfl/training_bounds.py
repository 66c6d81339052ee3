"""Checking a round's settings against the site's policy (SECAGG.md, R7 and "Version 3", R7').

A malicious coordinator chooses every round setting it is allowed to choose. A site trains a
round only if its learning rate, local epochs (or local steps) and batch size lie within its
policy's :class:`~clinfl.config.policy.TrainingBounds`. :func:`check_round_settings` lists every
setting outside them at once, with its value, the bound and the fix.

Which local-training mode a site accepts (:func:`check_training_mode`): a site whose policy lets
sample counts leave (``"counts"`` in ``reporting.metrics``) trains as the run says, by epochs or
by ``federation.local_steps``. A site whose policy keeps counts at the site declines a run that
sets no ``local_steps``: by epochs its steps per round, and so the latency of its
``train_round``, follow its sample count. The refusal depends only on the policy and the run
configuration, both of which the coordinator knows.
"""

from __future__ import annotations

from clinfl.config.policy import SitePolicy, TrainingBounds
from clinfl.errors import PolicyViolation, Violation
from clinfl.federation.messages import RoundSettings

COUNTS_METRIC = "counts"
"""The ``reporting.metrics`` entry that lets a site's sample count leave it."""


def work_may_follow_size(policy: SitePolicy) -> bool:
    """Return whether the site may train by epochs (its policy lets sample counts leave)."""
    return COUNTS_METRIC in policy.reporting.metrics


def training_mode_violation(policy: SitePolicy, local_steps: int | None) -> Violation | None:
    """Return why ``policy`` declines a run with ``local_steps`` (None when it accepts it)."""
    if local_steps is not None or work_may_follow_size(policy):
        return None
    return Violation(
        "federation.local_steps",
        None,
        f"1..{policy.training.max_local_steps} where the site's policy keeps sample counts at "
        "the site (reporting.metrics lists no 'counts'): by local epochs a site's steps per "
        "round, and so the time it takes, follow its sample count",
        "set federation.local_steps in the run configuration (clinfl simulate --local-steps N)",
    )


def check_training_mode(policy: SitePolicy, local_steps: int | None) -> None:
    """Decline a run whose local training would make the site's work follow its size.

    Raises:
        PolicyViolation: if the policy keeps sample counts at the site and the run sets no
            ``local_steps``; the message names ``federation.local_steps`` and the fix.
    """
    violation = training_mode_violation(policy, local_steps)
    if violation is not None:
        raise PolicyViolation(
            violation.describe(),
            remedy="the coordinator must set federation.local_steps so every site takes the "
            "same number of steps per round, whatever its size",
        )


def round_settings_violations(
    settings: RoundSettings, *, bounds: TrainingBounds
) -> list[Violation]:
    """Return every setting of ``settings`` outside ``bounds`` (empty when all fit)."""
    out: list[Violation] = []
    lr_range = f"{bounds.min_lr:g}..{bounds.max_lr:g} (training.min_lr..training.max_lr)"
    if not bounds.min_lr <= settings.lr <= bounds.max_lr:  # False for NaN too
        out.append(Violation("lr", settings.lr, lr_range, "ask for a learning rate in range"))
    if settings.local_steps is not None:  # fixed-step mode: local_epochs is unused
        if not 1 <= settings.local_steps <= bounds.max_local_steps:
            out.append(
                Violation(
                    "local_steps",
                    settings.local_steps,
                    f"1..{bounds.max_local_steps} (training.max_local_steps)",
                    "ask for fewer local steps",
                )
            )
    elif not 1 <= settings.local_epochs <= bounds.max_local_epochs:
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
