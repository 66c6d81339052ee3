"""What one DP-SGD round charges, and how many such rounds a budget allows.

One derivation for the site that trains (:class:`site_agent.private_training.DPSteps`), the
plan a privacy officer reads before any training (``clinfl policy plan``) and the audit
report's forecast, so the three cannot drift apart:

- sampling rate ``q = 1 / ceil(N / B)`` for ``N`` training samples and batch size ``B`` (Opacus
  takes it from the batches per epoch of a plain loader);
- steps per epoch ``int(1 / q)``, the batches Opacus' Poisson sampler yields per epoch (for most
  ``ceil(N / B)`` that is ``ceil(N / B)``; for some, 93 for one, floating point makes it one
  fewer, and the site trains and is charged that many);
- steps per round ``local_steps``, or ``local_epochs`` x steps per epoch;
- the noise multiplier the policy gives; with ``dp.target_epsilon_per_round``, the one
  calibrated for one round of those steps by the policy's accountant; with
  ``dp.planned_rounds``, the smallest one with which that many rounds of those steps, after
  what the site has already spent, stay within ``dp.epsilon_budget``.

A budget's rounds are counted exactly as the ledger charges them: the cumulative epsilon of
the whole composed history by :func:`~clinfl.privacy.accounting.charge_epsilon`, and a round
fits while that stays at or under the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from clinfl.privacy.accounting import (
    EpsilonCharge,
    HistoryEntry,
    charge_epsilon,
    noise_for_budget,
    noise_for_round_epsilon,
)

MAX_PLANNED_ROUNDS = 10_000
"""The most rounds a plan or forecast counts; a budget that allows more says "at least" this."""

DEFAULT_TARGET_EPSILON_PER_ROUND = 1.0
"""The per-round target when DP terms set neither a noise multiplier nor a target."""


class DPTerms(Protocol):
    """The DP terms a round's charge depends on (a policy's ``[dp]`` or a site's settings)."""

    @property
    def noise_multiplier(self) -> float | None: ...  # noqa: D102

    @property
    def target_epsilon_per_round(self) -> float | None: ...  # noqa: D102

    @property
    def delta(self) -> float: ...  # noqa: D102

    @property
    def accountant(self) -> str: ...  # noqa: D102

    @property
    def planned_rounds(self) -> int | None: ...  # noqa: D102

    @property
    def epsilon_budget(self) -> float: ...  # noqa: D102


class BudgetSpentError(ValueError):
    """``dp.planned_rounds``: what the site has already spent leaves no budget to plan."""


@dataclass(frozen=True)
class RoundCharge:
    """What one round charges the ledger: ``steps`` steps at ``noise_multiplier`` and rate.

    ``calibrated_for`` is the per-round epsilon target the noise was calibrated for (None
    when the policy sets the noise itself); ``steps_per_epoch`` is what an epoch takes.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    steps_per_epoch: int
    calibrated_for: float | None = None

    @property
    def entry(self) -> HistoryEntry:
        """The round as an accountant history entry: (noise, rate, steps)."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def poisson_sample_rate(samples: int, batch_size: int) -> float:
    """Return the Poisson sampling rate of ``samples`` at ``batch_size``: 1 / ceil(N / B).

    Raises:
        ValueError: if either is below 1.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples ({samples}) and batch size ({batch_size}) must be >= 1")
    return 1.0 / math.ceil(samples / batch_size)


def poisson_steps_per_epoch(sample_rate: float) -> int:
    """Return the batches Opacus' Poisson sampler yields per epoch at ``sample_rate``."""
    return int(1 / sample_rate)


def round_charge(
    dp: DPTerms,
    *,
    samples: int,
    batch_size: int,
    local_epochs: int,
    local_steps: int | None = None,
    spent: Sequence[HistoryEntry] = (),
) -> RoundCharge:
    """Return what one round charges a site of ``samples`` training samples under ``dp``.

    ``spent`` is the site's history so far: with ``dp.planned_rounds`` the noise is set so the
    planned rounds spend what it leaves of the budget.

    Raises:
        BudgetSpentError: if ``spent`` leaves no budget for ``dp.planned_rounds``.
        ValueError: if samples, batch size, epochs or steps are below 1.
    """
    rate = poisson_sample_rate(samples, batch_size)
    per_epoch = poisson_steps_per_epoch(rate)
    steps = local_steps if local_steps is not None else local_epochs * per_epoch
    if steps < 1:
        raise ValueError(
            f"a round must take at least one step: local steps {local_steps}, "
            f"local epochs {local_epochs}"
        )
    if dp.noise_multiplier is not None:  # 0.0 is a setting (no noise), not "unset"
        return RoundCharge(dp.noise_multiplier, rate, steps, per_epoch)
    if dp.planned_rounds is not None:
        try:
            noise = noise_for_budget(
                dp.epsilon_budget,
                history=spent,
                delta=dp.delta,
                sample_rate=rate,
                steps=dp.planned_rounds * steps,
                accountant=dp.accountant,
            )
        except ValueError as error:
            raise BudgetSpentError(f"{dp.planned_rounds} planned rounds: {error}") from None
        return RoundCharge(noise, rate, steps, per_epoch)
    target = dp.target_epsilon_per_round
    target = DEFAULT_TARGET_EPSILON_PER_ROUND if target is None else target
    noise = noise_for_round_epsilon(
        target, delta=dp.delta, sample_rate=rate, steps=steps, accountant=dp.accountant
    )
    return RoundCharge(noise, rate, steps, per_epoch, calibrated_for=target)


def epsilon_after(
    prior: Sequence[HistoryEntry],
    charge: RoundCharge,
    rounds: int,
    *,
    delta: float,
    accountant: str,
) -> EpsilonCharge:
    """Return the cumulative charge of ``prior`` followed by ``rounds`` rounds of ``charge``.

    The rounds enter as one entry of ``rounds`` x steps: the accountant composes by the steps
    run at each (noise, rate), so that is the ledger's figure after as many real rounds.

    Raises:
        ValueError: for an unknown accountant.
    """
    noise, rate, steps = charge.entry
    history = [*prior, (noise, rate, steps * rounds)]
    return charge_epsilon(history, delta=delta, accountant=accountant)


@dataclass(frozen=True)
class RoundsLeft:
    """How many more rounds of one charge fit in a budget (``capped``: at least that many)."""

    rounds: int
    capped: bool


def rounds_within_budget(
    prior: Sequence[HistoryEntry],
    charge: RoundCharge,
    *,
    budget: float,
    delta: float,
    accountant: str,
    cap: int = MAX_PLANNED_ROUNDS,
) -> RoundsLeft:
    """Return how many rounds of ``charge`` after ``prior`` keep the cumulative epsilon in budget.

    Exactly as the ledger refuses: round k fits while the epsilon of the composed history up to
    it is at most ``budget``. The cumulative epsilon grows with every round, so the count is
    found by galloping then bisecting (a few dozen accountant calls, not one per round), up to
    ``cap`` rounds. Under PRV the search starts from RDP's count (RDP is several times cheaper
    and close), and every answer is PRV's own.

    Raises:
        ValueError: for an unknown accountant.
    """

    def fits(rounds: int) -> bool:
        after = epsilon_after(prior, charge, rounds, delta=delta, accountant=accountant)
        return after.epsilon <= budget

    hint = 1
    if accountant == "prv":
        rdp = rounds_within_budget(
            prior, charge, budget=budget, delta=delta, accountant="rdp", cap=cap
        )
        hint = max(rdp.rounds, 1)
    good = _largest_fitting(fits, hint=hint, cap=cap)
    return RoundsLeft(good, capped=good == cap)


def _largest_fitting(fits: Callable[[int], bool], *, hint: int, cap: int) -> int:
    """Return the largest k in 0..cap with ``fits(k)`` (``fits`` true up to it, then false)."""
    # invariant: good == 0 or fits(good); bad == cap + 1 or not fits(bad); good < bad
    if fits(hint):
        good, bad, step = hint, cap + 1, 1
        while good + step <= cap:
            if not fits(good + step):
                bad = good + step
                break
            good, step = good + step, 2 * step
    else:
        good, bad, step = 0, hint, 1
        while bad - step >= 1:
            if fits(bad - step):
                good = bad - step
                break
            bad, step = bad - step, 2 * step
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


class BudgetTerms(DPTerms, Protocol):
    """DP terms with the budget they are spent against."""

    @property
    def epsilon_budget(self) -> float: ...  # noqa: D102


@dataclass(frozen=True)
class PlannedRound:
    """The expected cumulative epsilon after ``round`` rounds, and who charged it."""

    round: int
    epsilon: float
    accountant: str
    within_budget: bool


@dataclass(frozen=True)
class BudgetPlan:
    """A site's privacy budget, planned before any training (``clinfl policy plan``).

    ``round_epsilon`` is one round's charge on its own; ``rounds_allowed`` how many rounds fit
    in the budget; ``rounds`` the expected cumulative epsilon after each listed round.
    """

    charge: RoundCharge
    budget: float
    delta: float
    accountant: str
    round_epsilon: EpsilonCharge
    rounds_allowed: RoundsLeft
    rounds: tuple[PlannedRound, ...]


DEFAULT_LISTED_ROUNDS = 100
"""The most rounds a plan lists unless it is asked for a number."""


def plan_budget(dp: BudgetTerms, charge: RoundCharge, *, rounds: int | None = None) -> BudgetPlan:
    """Plan ``dp``'s budget for rounds of ``charge`` from an empty ledger.

    Lists ``rounds`` rounds (marking those past the budget), or by default the rounds the
    budget allows (at least one, at most :data:`DEFAULT_LISTED_ROUNDS`).

    Raises:
        ValueError: for an unknown accountant or a negative number of rounds.
    """
    if rounds is not None and rounds < 0:
        raise ValueError(f"cannot list {rounds} rounds")
    delta, accountant = dp.delta, dp.accountant
    allowed = rounds_within_budget(
        (), charge, budget=dp.epsilon_budget, delta=delta, accountant=accountant
    )
    listed = rounds if rounds is not None else min(max(allowed.rounds, 1), DEFAULT_LISTED_ROUNDS)
    planned = []
    for number in range(1, listed + 1):
        after = epsilon_after((), charge, number, delta=delta, accountant=accountant)
        within = after.epsilon <= dp.epsilon_budget
        planned.append(PlannedRound(number, after.epsilon, after.accountant, within))
    return BudgetPlan(
        charge=charge,
        budget=dp.epsilon_budget,
        delta=dp.delta,
        accountant=dp.accountant,
        round_epsilon=epsilon_after((), charge, 1, delta=delta, accountant=accountant),
        rounds_allowed=allowed,
        rounds=tuple(planned),
    )
