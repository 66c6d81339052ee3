"""Privacy accounting from a history of (noise multiplier, sample rate, steps).

An accountant's whole state is that history, so clinfl stores it (as JSON) in the site's ledger
and rebuilds Opacus' accountant from it: a restarted site continues the same accounting.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

HistoryEntry = tuple[float, float, int]


def make_accountant(kind: str, history: Iterable[HistoryEntry] = ()) -> Any:
    """Return an Opacus accountant (``rdp`` or ``prv``) holding ``history``.

    Raises:
        ValueError: for an unknown accountant.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountants = {"rdp": RDPAccountant, "prv": PRVAccountant}
    if kind not in accountants:
        raise ValueError(f"unknown accountant {kind!r}: use rdp or prv")
    accountant = accountants[kind]()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return accountant


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(noise: float, rate: float) -> np.ndarray:
    """One step's RDP at Opacus' default orders (slow for small rates: cached)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp: np.ndarray = np.asarray(
        compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    )
    rdp.setflags(write=False)
    return rdp


def _rdp_epsilon(entries: list[HistoryEntry], delta: float) -> float:
    """Opacus' RDPAccountant.get_epsilon for ``entries``, from cached per-step RDP vectors.

    ``compute_rdp(q, sigma, steps)`` is its one-step vector times ``steps``, so the sum, and the
    epsilon, are the accountant's own (a unit test compares them).
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(_rdp_per_step(noise, rate) * steps for noise, rate, steps in entries)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


def epsilon_of(history: Iterable[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Return the epsilon spent by ``history`` at ``delta`` (0 for an empty history)."""
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        if steps > 0:  # composition only depends on how many steps ran at each (noise, rate)
            merged[(noise, rate)] = merged.get((noise, rate), 0) + steps
    entries = [(noise, rate, steps) for (noise, rate), steps in merged.items()]
    if not entries:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    with warnings.catch_warnings():
        # RDP's best order at the edge of its range: the bound is valid, only not the tightest
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(make_accountant(accountant, entries).get_epsilon(delta=delta))


def noise_for_round_epsilon(
    target_epsilon: float, *, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Return the noise multiplier that makes one round of ``steps`` cost ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )


def noise_for_budget(
    budget: float,
    *,
    history: Iterable[HistoryEntry],
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    tolerance: float = 1e-3,
) -> float:
    """Return the smallest noise multiplier that keeps ``history`` plus ``steps`` in ``budget``.

    The multiplier is found to ``tolerance``; the steps run at ``sample_rate``, and the epsilon
    is taken at ``delta``.

    The answer errs on the side of more noise: the returned multiplier never overspends.

    Raises:
        ValueError: if ``history`` alone already spends the budget, or no multiplier up to
            10,000 fits.
    """
    past = list(history)
    if epsilon_of(past, delta=delta, accountant=accountant) >= budget:
        raise ValueError(f"the history already spends the budget {budget:g}")

    def spent(noise: float) -> float:
        return epsilon_of([*past, (noise, sample_rate, steps)], delta=delta, accountant=accountant)

    low, high = 0.0, 1.0
    while spent(high) > budget:
        low, high = high, high * 2
        if high > 10_000:
            raise ValueError(f"no noise multiplier up to 10000 keeps {steps} steps in budget")
    while high - low > tolerance:
        middle = (low + high) / 2
        if spent(middle) > budget:
            low = middle
        else:
            high = middle
    return high
