"""Privacy accounting from a history of (noise multiplier, sample rate, steps).

An accountant's whole state is that history, so clinfl stores it (as JSON) in the site's ledger
and rebuilds Opacus' accountant from it: a restarted site continues the same accounting.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

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


def epsilon_of(history: Iterable[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Return the epsilon spent by ``history`` at ``delta`` (0 for an empty history)."""
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        if steps > 0:  # composition only depends on how many steps ran at each (noise, rate)
            merged[(noise, rate)] = merged.get((noise, rate), 0) + steps
    entries = [(noise, rate, steps) for (noise, rate), steps in merged.items()]
    if not entries:
        return 0.0
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
