"""SIMULATION ONLY: deriving ``federation.local_steps`` for ``clinfl simulate``.

A site whose policy keeps sample counts at the site (``reporting.metrics`` lists no ``counts``)
declines a run that trains by epochs, because its work per round would follow its size
(:func:`clinfl.training_bounds.check_training_mode`; SECAGG.md, "Version 3", R7'). A deployed
coordinator must then set ``federation.local_steps`` itself. The in-process simulation holds
every site's data, so when such a site takes part and the run sets no ``local_steps``,
:func:`simulation_local_steps` derives one from what the run asked: as many steps as the
run's epochs take at a site of the federation's mean training size,

    local_steps = local_epochs * ceil(mean site training size / batch_size).

This reads every site's sample count, which no deployed coordinator may do; it is only ever
called by :func:`clinfl.simulation.run_simulation`, which prints the value and records it in
the run's configuration (``run_config.json`` and ``results.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clinfl.config import FederationConfig
from clinfl.config.policy import SitePolicy
from clinfl.training_bounds import work_may_follow_size


@dataclass(frozen=True)
class DerivedLocalSteps:
    """The steps a simulation derived, and why: the sites that keep counts, the mean size."""

    steps: int
    sites: tuple[str, ...]
    mean_samples: float

    def describe(self, federation: FederationConfig) -> str:
        """Return a line for the operator: the value, the formula, and that it is simulation's."""
        return (
            f"{', '.join(self.sites)} keep sample counts at the site and the run sets no "
            f"federation.local_steps, so this simulation trains every site {self.steps} local "
            f"steps per round ({federation.local_epochs} local epoch(s) x "
            f"ceil(mean site training size {self.mean_samples:.1f} / batch size "
            f"{federation.batch_size})); a deployed run must set --local-steps itself"
        )


def simulation_local_steps(
    federation: FederationConfig,
    site_samples: Sequence[int],
    policies: Mapping[str, SitePolicy],
) -> DerivedLocalSteps | None:
    """SIMULATION ONLY: return the local steps to train with, or None to keep the run's mode.

    None when the run sets ``local_steps`` already or every policy lets counts leave.
    Otherwise ``local_epochs * ceil(mean(site_samples) / batch_size)`` (at least 1).
    """
    if federation.local_steps is not None:
        return None
    keeping = tuple(site for site, policy in policies.items() if not work_may_follow_size(policy))
    if not keeping:
        return None
    mean = sum(site_samples) / max(len(site_samples), 1)
    steps = federation.local_epochs * max(math.ceil(mean / federation.batch_size), 1)
    return DerivedLocalSteps(steps=steps, sites=keeping, mean_samples=mean)
