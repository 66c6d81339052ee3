"""Privacy accounting from a history of (noise multiplier, sample rate, steps).

An accountant's whole state is that history, so clinfl stores it (as JSON) in the site's ledger
and charges every round over it: a restarted site continues the same accounting.
:func:`make_accountant` builds an Opacus accountant that continues a history.

The PRV rule (:func:`charge_epsilon`). A policy may ask for Opacus' PRV accountant (numerical
composition of privacy-loss random variables; tighter than RDP). PRV charges a history only
where it can compute it: every noise multiplier above zero, a discretisation grid of at most
:data:`PRV_MAX_GRID_POINTS` points (Opacus sizes the grid from the history before building it;
past that PRV takes minutes and gigabytes, or dies of memory), no error raised and a finite
result. Otherwise the whole history is charged by RDP, and the charge says so (``rdp``). Both
are valid upper bounds on the same composition, so the fallback never under-counts; PRV's
figure is Opacus' upper bound (estimate plus its error of at most 0.01).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

HistoryEntry = tuple[float, float, int]

PRV_MAX_GRID_POINTS = 4_000_000
"""The largest PRV discretisation grid clinfl lets Opacus build. Measured (Opacus 1.6, 2-core
CPU): a 5e6-point grid took 8.6 s; a 4.4e6-point one returned infinity; 2.8e7 raised "Discrete
mean differs significantly"; 5.5e7 took 70 s; 1.1e8 ran past 120 s; 3.6e8 was killed for
memory. Realistic DP-SGD histories need 2e4 to 8e5 points."""

_PRV_EPS_ERROR = 0.01  # Opacus' PRVAccountant.get_epsilon defaults
_PRV_DELTA_ERROR_SHARE = 1000


@dataclass(frozen=True)
class EpsilonCharge:
    """A history's epsilon at a delta, and the accountant that computed it (``rdp``/``prv``)."""

    epsilon: float
    accountant: str


def make_accountant(kind: str, history: Iterable[HistoryEntry] = ()) -> Any:
    """Return a new Opacus accountant (``rdp`` or ``prv``) that continues ``history``.

    Built by Opacus' own factory (``create_accountant``) and restored through its checkpoint
    API (``load_state_dict``), as Opacus restores a saved engine: no attribute is assigned.

    Raises:
        ValueError: for an unknown accountant.
    """
    from opacus.accountants import create_accountant

    if kind not in ("rdp", "prv"):
        raise ValueError(f"unknown accountant {kind!r}: use rdp or prv")
    accountant = create_accountant(mechanism=kind)
    entries = [(float(s), float(q), int(n)) for s, q, n in history]
    accountant.load_state_dict({"history": entries, "mechanism": accountant.mechanism()})
    return accountant


def _merged(history: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    """Steps summed per (noise, rate): composition only depends on how many ran at each."""
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        if steps > 0:
            merged[(noise, rate)] = merged.get((noise, rate), 0) + steps
    return [(noise, rate, steps) for (noise, rate), steps in merged.items()]


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise: float, rate: float) -> Any:
    """One step's RDP at each of Opacus' default orders (read-only; memoised per noise, rate)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    vector = analysis.compute_rdp(
        q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    vector.setflags(write=False)
    return vector


def _rdp_epsilon(entries: list[HistoryEntry], delta: float) -> float:
    """RDPAccountant.get_epsilon's figure, bit for bit, with each step's RDP computed once.

    Opacus sums ``compute_rdp(q, sigma, steps)`` over the history, which is one step's RDP
    times the steps; the plan and the forecast ask for the same (sigma, q) many times over.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    rdp = sum([_rdp_per_step(noise, rate) * steps for noise, rate, steps in entries])
    with warnings.catch_warnings():
        # RDP's best order at the edge of its range: the bound is valid, only not the tightest
        warnings.filterwarnings("ignore", message="Optimal order is the")
        epsilon, _ = analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
        )
    return float(epsilon)


def _prv_domain(entries: list[HistoryEntry], delta: float) -> tuple[float, float]:
    """Return the half-width and mesh of the grid Opacus' PRV accountant builds for ``entries``.

    ``PRVAccountant._get_domain`` and ``compute_safe_domain_size`` (Opacus 1.6) at the default
    errors, with the RDP figures they need from :func:`_rdp_epsilon` (bit-identical to Opacus'
    RDPAccountant, computed once per (noise, rate)).
    """
    import numpy as np

    delta_error = delta / _PRV_DELTA_ERROR_SHARE
    total = sum(n for _, _, n in entries)
    half_width = _rdp_epsilon(entries, delta_error / 4)
    for noise, rate, _ in entries:
        single = _rdp_epsilon([(noise, rate, 1)], delta_error / (8 * total))
        half_width = max(half_width, single)
    half_width = max(half_width, _PRV_EPS_ERROR) + 3
    mesh = _PRV_EPS_ERROR / np.sqrt(total * np.log(12 / delta_error) / 2)
    return float(half_width), float(mesh)


def prv_grid_points(entries: list[HistoryEntry], delta: float) -> float:
    """Return how many points Opacus' PRV accountant would discretise ``entries`` on."""
    half_width, mesh = _prv_domain(entries, delta)
    return 2 * half_width / mesh


def _prv_epsilon(entries: list[HistoryEntry], delta: float) -> float | None:
    """Return PRV's epsilon, or None where the PRV rule says it cannot compute it.

    ``PRVAccountant.get_epsilon`` (Opacus 1.6, default errors) step by step, so that the grid
    is sized once and refused before it is built when it is too large.
    """
    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        discretize,
    )

    if any(noise <= 0 for noise, _, _ in entries):
        return None
    delta_error = delta / _PRV_DELTA_ERROR_SHARE
    try:
        half_width, mesh = _prv_domain(entries, delta)
        if not 2 * half_width / mesh <= PRV_MAX_GRID_POINTS:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            domain = Domain.create_aligned(-half_width, half_width, mesh)
            discrete = [
                discretize(
                    TruncatedPrivacyRandomVariable(
                        PoissonSubsampledGaussianPRV(rate, noise), domain.t_min, domain.t_max
                    ),
                    domain,
                )
                for noise, rate, _ in entries
            ]
            composed = compose_heterogeneous(
                dprvs=discrete, num_self_compositions=[n for _, _, n in entries]
            )
            _, _, upper = composed.compute_epsilon(delta, delta_error, _PRV_EPS_ERROR)
        epsilon = float(upper)
    except (ArithmeticError, ValueError, RuntimeError, MemoryError):
        return None
    return epsilon if math.isfinite(epsilon) and epsilon >= 0 else None


def charge_epsilon(
    history: Iterable[HistoryEntry], *, delta: float, accountant: str
) -> EpsilonCharge:
    """Return the epsilon ``history`` spends at ``delta`` and the accountant that charged it.

    ``rdp`` charges by RDP; ``prv`` by PRV where it can compute the history, else by RDP
    (the module's PRV rule). An empty history charges 0 by the asked accountant.

    Raises:
        ValueError: for an unknown accountant.
    """
    if accountant not in ("rdp", "prv"):
        raise ValueError(f"unknown accountant {accountant!r}: use rdp or prv")
    entries = _merged(history)
    if not entries:
        return EpsilonCharge(0.0, accountant)
    if accountant == "prv":
        epsilon = _prv_epsilon(entries, delta)
        if epsilon is not None:
            return EpsilonCharge(epsilon, "prv")
    return EpsilonCharge(_rdp_epsilon(entries, delta), "rdp")


def epsilon_of(history: Iterable[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Return the epsilon spent by ``history`` at ``delta`` (0 for an empty history).

    By :func:`charge_epsilon`: a ``prv`` history PRV cannot compute is charged by RDP.

    Raises:
        ValueError: for an unknown accountant.
    """
    return charge_epsilon(history, delta=delta, accountant=accountant).epsilon


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
